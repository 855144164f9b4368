"""Brains with simulated tumour-like lesions and their BraTS-style label masks: demo pairs for mask-conditioned
synthesis (Med-DDPM, Dorjsembe et al. 2024) on real anatomy.

Each pair is a subject of ``common.data.brain_population`` (real anatomy: the ICBM 2009a template, deformed) with
one lesion placed inside the brain, labelled as BraTS labels gliomas (Menze et al., 2015): ``1`` the necrotic core,
``4`` the enhancing rim around it, ``2`` the oedema around both. The lesion is a level set of an ellipsoid with a
smooth random boundary, so the classes are nested (core inside rim inside oedema) and every labelled voxel lies in
the brain. Its look follows a contrast-enhanced T1 image: a dark, fluid-like core, a bright enhancing rim, a
slightly dark and swollen oedema that pushes no tissue away (a simulation, not a growth model). Size, position,
shape, the rim's thickness and the textures vary with the random generator, so a seed gives the same pair
everywhere. These lesions are simulated: no real tumour is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, gaussian_filter

from .brain_population import smooth_field

__all__ = ["BRATS_LABELS", "Lesion", "add_lesion"]

# BraTS label values (the 2012-2020 challenges): what the bundle's brats-like label_mapping reads
BRATS_LABELS = {"necrotic core": 1, "oedema": 2, "enhancing rim": 4}


@dataclass(frozen=True)
class Lesion:
    """Where the lesion went and how big it is, in voxels (what a test or a demo summary reports)."""

    centre: tuple[int, int, int]
    radii: tuple[float, float, float]
    voxels: dict[str, int]


def _lesion_centre(inside: np.ndarray, margin: float, rng: np.random.Generator) -> np.ndarray:
    """A voxel of the brain at least ``margin`` voxels from its edge (the deepest voxels if none is that deep)."""
    depth = distance_transform_edt(inside)
    candidates = np.argwhere(depth >= min(margin, depth.max() * 0.6))
    return candidates[rng.integers(len(candidates))].astype(np.float32)


def add_lesion(
    brain: np.ndarray,
    rng: np.random.Generator,
    radius_range: tuple[float, float] = (4.0, 8.0),
    oedema_range: tuple[float, float] = (1.3, 1.9),
) -> tuple[np.ndarray, np.ndarray, Lesion]:
    """``brain`` (a skull-stripped T1 volume, background 0, tissue about 0 to 1) with one simulated lesion.

    Args:
        brain: the volume (float, background exactly 0).
        rng: the random generator that decides everything about the lesion.
        radius_range: the tumour's (core and rim) mean radius in voxels, drawn uniformly.
        oedema_range: the oedema's extent as a multiple of the tumour's radius.

    Returns:
        the image (float32, background still 0), the labels (uint8, BraTS values 0, 1, 2, 4) and a ``Lesion``.
    """
    if brain.ndim != 3:
        raise ValueError(f"brain must be a 3D volume, got shape {brain.shape}.")
    if not 0 < radius_range[0] <= radius_range[1]:
        raise ValueError(f"radius_range must be increasing positive radii, got {radius_range}.")
    if not 1 < oedema_range[0] <= oedema_range[1]:
        raise ValueError(f"oedema_range must be increasing multiples above 1, got {oedema_range}.")
    inside = binary_erosion(brain > 0, iterations=1)
    if not inside.any():
        raise ValueError("brain has no tissue to place a lesion in.")
    radius = rng.uniform(*radius_range)
    radii = radius * rng.uniform(0.75, 1.25, 3)
    step = 1 / radii.min() + 0.1  # about the most the level below changes from a voxel to its neighbour
    oedema = max(rng.uniform(*oedema_range), 1 + 1.5 * step)  # at least a voxel of oedema around the tumour
    centre = _lesion_centre(inside, radius * 1.6, rng)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in brain.shape], indexing="ij"))
    distance = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    level = distance + 0.18 * smooth_field(rng, brain.shape, 3.0)  # an irregular boundary; 1 is the tumour's edge
    rim_width = max(rng.uniform(0.25, 0.45), 1.5 * step)  # of the radius; at least a voxel, so the classes nest
    labels = np.zeros(brain.shape, np.uint8)
    labels[(level < oedema) & inside] = BRATS_LABELS["oedema"]
    labels[(level < 1.0) & inside] = BRATS_LABELS["enhancing rim"]
    labels[(level < 1.0 - rim_width) & inside] = BRATS_LABELS["necrotic core"]

    tissue = float(np.percentile(brain[inside], 75))  # about white matter
    texture = smooth_field(rng, brain.shape, 1.5)
    image = brain.astype(np.float32).copy()
    oedema_look = brain * rng.uniform(0.75, 0.9) + 0.03 * tissue * texture
    rim_look = tissue * rng.uniform(1.15, 1.35) * (1 + 0.08 * texture)
    core_look = tissue * rng.uniform(0.15, 0.3) * (1 + 0.15 * texture)
    for value, look in ((BRATS_LABELS["oedema"], oedema_look), (BRATS_LABELS["enhancing rim"], rim_look),
                        (BRATS_LABELS["necrotic core"], core_look)):
        image = np.where(labels == value, look, image)
    blend = gaussian_filter((labels > 0).astype(np.float32), 0.7)  # soft edges, as partial volumes give
    image = np.where(brain > 0, blend * image + (1 - blend) * brain, 0.0).astype(np.float32)
    counts = {name: int((labels == value).sum()) for name, value in BRATS_LABELS.items()}
    return image, labels, Lesion(tuple(int(c) for c in centre), tuple(float(r) for r in radii), counts)

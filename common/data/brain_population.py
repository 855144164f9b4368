"""A population of realistic skull-stripped T1 brains made from one real brain, for the demo and the tests.

The real brain is the ICBM 2009a nonlinear symmetric T1 template (an average of 152 young adults' MRI, Fonov et
al., NeuroImage 2011), skull-stripped, as nilearn ships it; ``assets/`` holds it cropped to the brain and
averaged to 2 mm voxels (74 x 92 x 78, 230 KB), with its licence (``assets/ICBM152_2009a_LICENSE.txt``:
redistribution with the copyright notice). Each subject of the population is that brain changed the way real
brains and scans differ, all drawn from one random generator, so a seed gives the same population everywhere:

- shape: a random affine (size 0.92-1.08 per axis, rotation up to 5 degrees about each axis) and a smooth random
  displacement field (12 mm smoothness, about 2.5 mm typical displacement), resampled trilinearly;
- scanner: a smooth multiplicative bias field (about 8% typical), a grey/white contrast change (gamma 0.85-1.15)
  and a global intensity scale; the background stays exactly 0. No noise is added: the template, an average, has
  almost none, and noise that no model can reproduce would only blur the comparison of samples with real volumes.

A second class for class-conditional generation, brains with enlarged ventricles (as in atrophy or
hydrocephalus), is the template with its ventricles grown by a smooth deformation (``enlarge_ventricles``) before
the subject's own changes; ``ventricle_volume`` measures the class on a preprocessed volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_erosion, binary_fill_holes, gaussian_filter, label, map_coordinates, zoom

__all__ = [
    "TEMPLATE",
    "TEMPLATE_LICENSE",
    "VENTRICLE_CLASSES",
    "deform_brain",
    "enlarge_ventricles",
    "load_template",
    "smooth_field",
    "template_ventricles",
    "ventricle_volume",
]

VENTRICLE_CLASSES = ("normal", "enlarged")

TEMPLATE = Path(__file__).resolve().parent / "assets" / "icbm152_2009a_t1_brain_2mm.nii.gz"
TEMPLATE_LICENSE = TEMPLATE.parent / "ICBM152_2009a_LICENSE.txt"
MARGIN = 6  # voxels around the template's brain, room for a larger or rotated subject


def load_template() -> tuple[np.ndarray, np.ndarray]:
    """The real brain (float32 in [0, 1], with a margin of background) and its affine (2 mm voxels, RAS)."""
    image = nib.load(str(TEMPLATE))
    volume = np.pad(np.asanyarray(image.dataobj).astype(np.float32) / 255.0, MARGIN)
    affine = image.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, MARGIN)
    return volume, affine


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field of unit standard deviation, made on a 4x coarser grid (fast) and zoomed up."""
    coarse = tuple(max(2, n // 4) for n in shape)
    field = gaussian_filter(rng.standard_normal(coarse), sigma / 4)
    field = zoom(field, [n / c for n, c in zip(shape, coarse)], order=1)
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _rotation(angles: np.ndarray) -> np.ndarray:
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a] = turn[b, b] = np.cos(angle)
        turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ turn
    return rotation


def deform_brain(template: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """One subject: ``template`` (from ``load_template``) with random shape and scanner changes (module docstring);
    ``strength`` scales the shape changes. Returns float32 of the template's shape, background 0."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}.")
    shape = template.shape
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")).reshape(3, -1)
    size = 1 + strength * rng.uniform(-0.08, 0.08, 3)
    matrix = _rotation(np.deg2rad(strength * rng.uniform(-5, 5, 3))) @ np.diag(1 / size)  # output -> template
    coords = matrix @ (grid - centre[:, None]) + centre[:, None]
    displacement = np.stack([smooth_field(rng, shape, 6.0) for _ in range(3)]) * 1.25 * strength  # voxels of 2 mm
    coords = coords.reshape(3, *shape) + displacement
    warped = map_coordinates(template, coords, order=1, mode="constant", cval=0.0).astype(np.float32)
    inside = warped > 0.02
    gamma = rng.uniform(0.85, 1.15)
    bias = np.exp(0.08 * smooth_field(rng, shape, 10.0))
    brain = np.clip(warped, 0, 1) ** gamma * bias * rng.uniform(0.8, 1.2)
    return np.where(inside, np.clip(brain, 1e-3, None), 0.0).astype(np.float32)


def template_ventricles(template: np.ndarray) -> np.ndarray:
    """The template's lateral and third ventricles: the dark (CSF, below 0.3 of the maximum) connected regions of
    at least 15 voxels in a box around the brain's centre (20 x 44 x 24 voxels of 2 mm), inside the brain."""
    brain = binary_fill_holes(template > 0.02)
    centre = (np.asarray(template.shape) - 1) / 2
    box = np.zeros_like(brain)
    box[tuple(slice(int(c - r), int(c + r)) for c, r in zip(centre, (10, 22, 12)))] = True
    regions, count = label(brain & box & (template < 0.3))
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    sizes[0] = 0  # the rest of the volume
    return np.isin(regions, np.flatnonzero(sizes >= 15))


def enlarge_ventricles(template: np.ndarray, amount: float = 4.0) -> np.ndarray:
    """``template`` (from ``load_template``) with its ventricles grown: every voxel takes the intensity found up to
    ``amount`` voxels (2 mm each) closer to the ventricles, along the gradient of their smoothed mask (3 voxels),
    so the dark ventricles widen smoothly into the tissue around them, about doubling their volume at 4."""
    if amount < 0:
        raise ValueError(f"amount must be >= 0, got {amount}.")
    smoothed = gaussian_filter(template_ventricles(template).astype(np.float32), 3.0)
    gradient = np.stack(np.gradient(smoothed))
    gradient /= np.abs(gradient).max()
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in template.shape], indexing="ij"))
    return map_coordinates(template, grid + amount * gradient, order=1, mode="constant", cval=0.0).astype(np.float32)


def ventricle_volume(volume: np.ndarray, threshold: float = -0.2) -> int:
    """A measure of the ventricles on a brain preprocessed as the bundle does it (intensities in [-1, 1], background
    -1, the brain centred): the voxels darker than ``threshold`` (CSF) in the central box (30% x 50% x 40% of each
    axis) of the brain, its edge of 2 voxels left out. Not a segmentation: a proxy that tells the two demo classes
    apart (at 32^3: about 2 to 45 voxels for normal brains, 60 to 170 for enlarged ones)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected one volume (H, W, D), got shape {volume.shape}.")
    inside = binary_erosion(binary_fill_holes(volume > -0.9), iterations=2)
    shape = np.asarray(volume.shape)
    centre = (shape - 1) / 2
    box = np.zeros_like(inside)
    box[tuple(slice(int(round(c - f * n)), int(round(c + f * n)) + 1) for c, n, f in zip(centre, shape, (0.15, 0.25, 0.2)))] = True
    return int((inside & box & (volume < threshold)).sum())


def write_subject(volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """A subject as int16 NIfTI (0 to 1000), the way scanners store T1 images."""
    nib.save(nib.Nifti1Image(np.round(volume * 1000).astype(np.int16), affine), str(path))

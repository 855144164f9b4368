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
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

__all__ = ["TEMPLATE", "TEMPLATE_LICENSE", "deform_brain", "load_template", "smooth_field"]

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


def write_subject(volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """A subject as int16 NIfTI (0 to 1000), the way scanners store T1 images."""
    nib.save(nib.Nifti1Image(np.round(volume * 1000).astype(np.int16), affine), str(path))

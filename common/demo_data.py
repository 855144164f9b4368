"""Embedded demo data: small synthetic skull-stripped brain volumes, made on the fly.

They let every bundle command run on a fresh machine with no download: an ellipsoidal brain with a folded
cortical rim (grey matter), white matter inside, two lateral ventricles, smooth intensity texture and a zero
background, each subject with its own shape, size and contrast. They are not anatomy; they exercise the real
NIfTI pipeline (bounding-box crop, resize, scaling) end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["brain_demo_datalist", "make_brain_phantom"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def make_brain_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 56, 48)) -> np.ndarray:
    """One synthetic T1-like brain, float32 of ``shape`` (L-R, P-A, I-S), background 0."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radii = rng.uniform(0.72, 0.9, size=3)
    centre = rng.uniform(-0.05, 0.05, size=3)
    r = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2)
    folds = 0.06 * _smooth_noise(rng, shape, 1.5)  # gyri-like folding of the surface and the grey-white border
    brain = r + folds < 1.0
    white = r + folds < rng.uniform(0.74, 0.84)
    ventricles = np.zeros(shape, dtype=bool)
    size = rng.uniform(0.08, 0.16, size=3) * np.array([1.0, 2.5, 1.5])
    for side in (-1, 1):
        offset = np.array([side * rng.uniform(0.1, 0.16), rng.uniform(-0.05, 0.1), rng.uniform(0.0, 0.15)])
        ventricles |= (((x - offset[0]) / size[0]) ** 2 + ((y - offset[1]) / size[1]) ** 2 + ((z - offset[2]) / size[2]) ** 2) < 1
    grey_level, white_level = rng.uniform(0.45, 0.6), rng.uniform(0.8, 0.95)
    volume = np.where(white, white_level, grey_level)
    volume = np.where(ventricles & white, rng.uniform(0.1, 0.2), volume)
    volume = volume * (1 + 0.05 * _smooth_noise(rng, shape, 3.0)) + 0.02 * rng.standard_normal(shape)
    return np.where(brain, np.clip(volume, 0.01, None), 0.0).astype(np.float32)


def brain_demo_datalist(folder: str | os.PathLike, count: int = 16, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo brains in ``folder``, written there first if missing (3 mm voxels, RAS)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    datalist = []
    for index in range(count):
        path = folder / f"demo_brain_{index:03d}.nii.gz"
        volume = make_brain_phantom(rng)  # drawn even when the file exists, so the files do not depend on order
        if not path.exists():
            tmp = folder / f".{path.name}.tmp.nii.gz"
            nib.save(nib.Nifti1Image(volume, affine), tmp)
            os.replace(tmp, path)
        datalist.append({"image": str(path)})
    return datalist

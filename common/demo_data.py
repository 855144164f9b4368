"""Embedded demo data: small synthetic volumes in each dataset's real on-disk format, made on the fly.

They let every bundle command run on a fresh machine with no download. Brains: an ellipsoidal brain with a
folded cortical rim (grey matter), white matter inside, two lateral ventricles, smooth texture and a zero
background, as skull-stripped NIfTI. Knees: sagittal fat-suppressed-T2-like exams in the MRNet layout
(``train/sagittal/NNNN.npy``, uint8, slices x 256 x 256) with femur, tibia, patella, cartilage, joint fluid and
soft tissue. Each subject has its own shape, size and contrast. They are not anatomy; they exercise the real
readers and preprocessing end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["brain_demo_datalist", "knee_demo_datalist", "make_brain_phantom", "make_knee_phantom"]


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


def make_knee_phantom(rng: np.random.Generator, slices: int = 28) -> np.ndarray:
    """One synthetic sagittal knee exam, uint8 of shape (slices, 256, 256) like an MRNet file."""
    y, x = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(-1, 1, 256), indexing="ij")  # y: superior-inferior
    joint = rng.uniform(-0.1, 0.1)  # height of the joint line
    exam = np.empty((slices, 256, 256), dtype=np.float32)
    for index in range(slices):
        lateral = (index - slices / 2) / slices  # medial-lateral position of the slice in [-0.5, 0.5]
        width = np.sqrt(max(1.0 - (2 * lateral) ** 2, 0.05))
        femur = ((x / (0.33 * width)) ** 2 + ((y - joint + 0.32) / 0.3) ** 2 < 1) | ((np.abs(x) < 0.18 * width) & (y < joint - 0.3))
        tibia = (np.abs(x) < 0.34 * width) & (y > joint + 0.06) & (y < joint + 0.9)
        patella = ((x - 0.45) / 0.08) ** 2 + ((y - joint + 0.35) / 0.16) ** 2 < width
        cartilage = ~femur & ~tibia & (((x / (0.36 * width)) ** 2 + ((y - joint + 0.32) / 0.33) ** 2 < 1) | (np.abs(x) < 0.36 * width) & (np.abs(y - joint - 0.03) < 0.04))
        soft = (x / 0.8) ** 2 + (y / 1.2) ** 2 < 1
        slice_ = np.where(soft, 0.35, 0.02)
        slice_ = np.where(cartilage, 0.75, slice_)
        slice_ = np.where(femur | tibia | patella, 0.2, slice_)  # fat-suppressed marrow is dark
        exam[index] = slice_
    near_joint = np.abs(y - joint) < 0.25
    fluid = (_smooth_noise(rng, exam.shape, 4.0) > 1.6) & near_joint[None]  # bright joint-fluid pockets
    exam = np.where(fluid & (exam > 0.3), 0.95, exam)
    exam = exam * (1 + 0.08 * _smooth_noise(rng, exam.shape, 6.0)) + 0.03 * rng.standard_normal(exam.shape)
    return (np.clip(exam, 0, 1) * 255).astype(np.uint8)


def knee_demo_datalist(folder: str | os.PathLike, count: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo knee exams in MRNet layout under ``folder``, written there first if missing."""
    sagittal = Path(folder) / "train" / "sagittal"
    sagittal.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    datalist = []
    for index in range(count):
        path = sagittal / f"{index:04d}.npy"
        exam = make_knee_phantom(rng, slices=int(rng.integers(22, 40)))  # MRNet exams vary in slice count
        if not path.exists():
            tmp = sagittal / f".{path.name}.tmp.npy"
            np.save(tmp, exam)
            os.replace(tmp, path)
        datalist.append({"image": str(path)})
    return datalist

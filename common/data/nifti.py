"""Folders of NIfTI volumes (the brain bundle's ADNI layout, and any skull-stripped T1 folder): find and check."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .checks import (
    DatasetError,
    check_all,
    check_intensities,
    dataset_files,
    require_folder,
)

__all__ = ["NIFTI_SUFFIXES", "check_affine", "check_volume", "find_nifti_files", "nifti_datalist", "nifti_stem"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without its NIfTI suffix ("sub-01_T1w.nii.gz" -> "sub-01_T1w")."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def find_nifti_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Sorted NIfTI files under ``dataset_dir`` (``dataset_files``: recursively, through linked folders, any letter
    case of the suffix, hidden files and folders skipped); errors name the folder and the problem."""
    folder = require_folder(dataset_dir)
    files = [str(p) for p in dataset_files(folder, NIFTI_SUFFIXES)]
    if not files:
        others = len(dataset_files(folder, ("",)))
        what = "is empty" if others == 0 else f"holds {others} files but no NIfTI (.nii or .nii.gz) file"
        raise DatasetError(f"dataset_dir {folder} {what}.")
    return files


def check_affine(path: str | os.PathLike, affine: np.ndarray) -> None:
    """``DatasetError`` naming ``path`` unless its voxel-to-world affine is finite and spans three dimensions."""
    affine = np.asarray(affine, dtype=float)
    if not np.isfinite(affine).all():
        raise DatasetError(f"{path}: its affine (voxel size, orientation, position) holds NaN or infinite values: {affine[:3].tolist()}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(
            f"{path}: its affine is degenerate (a zero voxel size or two axes along one direction): {affine[:3].tolist()}."
        )


def check_volume(path: str | os.PathLike, allow_4d: bool = True) -> None:
    """Raise ``DatasetError`` unless ``path`` is a readable NIfTI volume, 3D or (with ``allow_4d``) 4D holding one
    volume (MONAI's loader makes that dimension the channel), with a usable affine and finite, non-constant, real
    voxels. Bundles that load NIfTI with ``channel_dim="no_channel"`` need ``allow_4d`` False."""
    try:
        image = nib.load(str(path))
        shape = image.shape
        affine = image.affine
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt or truncated files
        raise DatasetError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error}).") from error
    if len(shape) < 3 or len(shape) > (4 if allow_4d else 3) or any(s != 1 for s in shape[3:]) or min(shape[:3]) < 2:
        hint = "; save it without the trailing dimension" if len(shape) > 3 and all(s == 1 for s in shape[3:]) else ""
        raise DatasetError(f"{path}: expected a 3D volume, got shape {tuple(shape)}{hint}.")
    check_affine(path, affine)
    check_intensities(path, data)


def nifti_datalist(
    dataset_dir: str | os.PathLike, key: str = "image", check: bool = True, allow_4d: bool = True
) -> list[dict[str, str]]:
    """MONAI datalist ``[{key: path}, ...]`` of the NIfTI volumes in ``dataset_dir``, each checked first
    (``check_volume``, with ``allow_4d``).

    Raises ``DatasetError`` listing every unusable file (up to 20) if any is found.
    """
    files = find_nifti_files(dataset_dir)
    if check:
        check_all(files, lambda path: check_volume(path, allow_4d), dataset_dir)
    return [{key: path} for path in files]

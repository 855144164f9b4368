"""Finding and checking a dataset folder before training spends hours on it.

Every problem is reported with the path and what is wrong: a missing or empty folder, a folder with no NIfTI
files, and per file a corrupt or truncated image, the wrong number of dimensions, NaN or infinite voxels, or a
constant volume. All bad files of a folder are listed at once, so one pass fixes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["DatasetError", "check_volume", "find_nifti_files", "nifti_datalist"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used, with the path and the problem in the message."""


def find_nifti_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Sorted NIfTI files under ``dataset_dir`` (recursively); errors name the folder and the problem."""
    folder = Path(dataset_dir).expanduser()
    if not folder.exists():
        raise DatasetError(f"dataset_dir {folder} does not exist.")
    if not folder.is_dir():
        raise DatasetError(f"dataset_dir {folder} is not a folder.")
    try:
        files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    except PermissionError as error:
        raise DatasetError(f"dataset_dir {folder} cannot be read: {error}.") from error
    if not files:
        others = sum(1 for p in folder.rglob("*") if p.is_file())
        what = "is empty" if others == 0 else f"holds {others} files but no NIfTI (.nii or .nii.gz) file"
        raise DatasetError(f"dataset_dir {folder} {what}.")
    return files


def check_volume(path: str | os.PathLike) -> None:
    """Raise ``DatasetError`` unless ``path`` is a readable 3D NIfTI volume with finite, non-constant voxels."""
    try:
        image = nib.load(str(path))
        shape = image.shape
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt or truncated files
        raise DatasetError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error}).") from error
    spatial = tuple(s for s in shape[3:] if s != 1)
    if len(shape) < 3 or spatial:
        raise DatasetError(f"{path}: expected a 3D volume, got shape {tuple(shape)}.")
    if min(shape[:3]) < 2:
        raise DatasetError(f"{path}: expected a 3D volume, got shape {tuple(shape)} (a 2D image?).")
    if not np.isfinite(data).all():
        raise DatasetError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite voxels.")
    if data.min() == data.max():
        raise DatasetError(f"{path}: every voxel is {data.min()}; a constant volume cannot be scaled to [-1, 1].")


def nifti_datalist(dataset_dir: str | os.PathLike, key: str = "image", check: bool = True) -> list[dict[str, str]]:
    """MONAI datalist ``[{key: path}, ...]`` of the NIfTI volumes in ``dataset_dir``, each checked first.

    Raises ``DatasetError`` listing every unusable file (up to 20) if any is found.
    """
    files = find_nifti_files(dataset_dir)
    if check:
        problems = []
        for path in files:
            try:
                check_volume(path)
            except DatasetError as error:
                problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DatasetError(f"{len(problems)} of {len(files)} files in {dataset_dir} are unusable:\n  {shown}{more}")
    return [{key: path} for path in files]


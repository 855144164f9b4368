"""Finding and checking a dataset folder before training spends hours on it.

Every problem is reported with the path and what is wrong: a missing or empty folder, a folder without the
expected files, and per file a corrupt or truncated image, the wrong shape, NaN or infinite voxels, or a constant
volume. All bad files of a folder are listed at once, so one pass fixes them.

Readers: a folder of NIfTI volumes (``nifti_datalist``) and the MRNet release (``mrnet_datalist``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "DatasetError",
    "check_mrnet_exam",
    "check_volume",
    "find_nifti_files",
    "mrnet_datalist",
    "nifti_datalist",
    "raise_if_problems",
    "require_folder",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MRNET_PLANES = ("axial", "coronal", "sagittal")
MRNET_SLICE_SHAPE = (256, 256)


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used, with the path and the problem in the message."""


def require_folder(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir`` as a Path; ``DatasetError`` unless it is an existing, readable folder."""
    folder = Path(dataset_dir).expanduser()
    if not folder.exists():
        raise DatasetError(f"dataset_dir {folder} does not exist.")
    if not folder.is_dir():
        raise DatasetError(f"dataset_dir {folder} is not a folder.")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DatasetError(f"dataset_dir {folder} cannot be read (permission denied).")
    return folder


def _check_intensities(path: str | os.PathLike, data: np.ndarray) -> None:
    if not np.isfinite(data).all():
        raise DatasetError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite voxels.")
    if data.min() == data.max():
        raise DatasetError(f"{path}: every voxel is {data.min()}; a constant volume cannot be scaled to [-1, 1].")


def _check_all(files: Sequence[str], check: Callable[[str], None], dataset_dir: str | os.PathLike) -> None:
    problems = []
    for path in files:
        try:
            check(path)
        except DatasetError as error:
            problems.append(str(error))
    raise_if_problems(problems, f"{len(files)} files in {dataset_dir}")


def raise_if_problems(problems: Sequence[str], what: str) -> None:
    """One ``DatasetError`` listing every problem found (the first 20) in ``what``, e.g. "998 files in DIR"."""
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{len(problems)} of {what} are unusable:\n  {shown}{more}")


def find_nifti_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Sorted NIfTI files under ``dataset_dir`` (recursively); errors name the folder and the problem."""
    folder = require_folder(dataset_dir)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
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
    if len(shape) < 3 or any(s != 1 for s in shape[3:]) or min(shape[:3]) < 2:
        raise DatasetError(f"{path}: expected a 3D volume, got shape {tuple(shape)}.")
    _check_intensities(path, data)


def nifti_datalist(dataset_dir: str | os.PathLike, key: str = "image", check: bool = True) -> list[dict[str, str]]:
    """MONAI datalist ``[{key: path}, ...]`` of the NIfTI volumes in ``dataset_dir``, each checked first.

    Raises ``DatasetError`` listing every unusable file (up to 20) if any is found.
    """
    files = find_nifti_files(dataset_dir)
    if check:
        _check_all(files, check_volume, dataset_dir)
    return [{key: path} for path in files]


def check_mrnet_exam(path: str | os.PathLike) -> None:
    """Raise ``DatasetError`` unless ``path`` is an MRNet exam: a (slices, 256, 256) array, finite, not constant."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:  # truncated or foreign files raise ValueError, OSError, EOFError, ...
        raise DatasetError(f"{path}: cannot be read as a NumPy array ({type(error).__name__}: {error}).") from error
    if data.ndim != 3 or data.shape[1:] != MRNET_SLICE_SHAPE or data.shape[0] < 2:
        raise DatasetError(f"{path}: expected an MRNet exam of shape (slices, 256, 256), got {data.shape}.")
    _check_intensities(path, data)


def mrnet_datalist(
    dataset_dir: str | os.PathLike,
    plane: str = "sagittal",
    splits: Sequence[str] = ("train", "valid"),
    key: str = "image",
    check: bool = True,
) -> list[dict[str, str]]:
    """MONAI datalist of the MRNet exams of one plane, as released (``MRNet-v1.0/{train,valid}/<plane>/*.npy``).

    ``dataset_dir`` is the folder holding ``train/`` and ``valid/``. Every exam is checked first (see
    ``check_mrnet_exam``); ``DatasetError`` lists every unusable file.
    """
    if plane not in MRNET_PLANES:
        raise ValueError(f"plane must be one of {MRNET_PLANES}, got {plane!r}.")
    root = require_folder(dataset_dir)
    folders = [root / split / plane for split in splits]
    present = [folder for folder in folders if folder.is_dir()]
    if not present:
        expected = " and/or ".join(str(folder / "*.npy") for folder in folders)
        raise DatasetError(f"dataset_dir {root} is not an MRNet folder: expected {expected} (as in MRNet-v1.0).")
    files = sorted(str(p) for folder in present for p in folder.glob("*.npy"))
    if not files:
        raise DatasetError(f"no .npy exams in {', '.join(str(folder) for folder in present)}.")
    if check:
        _check_all(files, check_mrnet_exam, root)
    return [{key: path} for path in files]

"""The MRNet knee MRI release (``MRNet-v1.0/{train,valid}/<plane>/NNNN.npy``): find and check the exams."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .checks import (
    DatasetError,
    check_all,
    check_intensities,
    is_hidden,
    require_folder,
)

__all__ = ["MRNET_PLANES", "check_mrnet_exam", "mrnet_datalist"]

MRNET_PLANES = ("axial", "coronal", "sagittal")
MRNET_SLICE_SHAPE = (256, 256)


def check_mrnet_exam(path: str | os.PathLike) -> None:
    """Raise ``DatasetError`` unless ``path`` is an MRNet exam: a (slices, 256, 256) array, finite, not constant."""
    try:
        with open(path, "rb") as file:
            start = file.read(8)
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({type(error).__name__}: {error}).") from error
    if not start.startswith((b"\x93NUMPY", b"PK")):  # NumPy would call any other file "pickled (object) data"
        what = "an empty file" if not start else f"a file that starts with {start!r}"
        raise DatasetError(f"{path}: is not a NumPy .npy file ({what}; text or another format under a .npy name?).")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:  # truncated files raise ValueError, OSError, EOFError, ...; object arrays ValueError
        raise DatasetError(f"{path}: cannot be read as a NumPy array ({type(error).__name__}: {error}).") from error
    if not isinstance(data, np.ndarray):  # e.g. an .npz archive saved under a .npy name
        if hasattr(data, "close"):
            data.close()
        raise DatasetError(f"{path}: holds a {type(data).__name__}, not one NumPy array (an .npz archive under a .npy name?).")
    if data.ndim != 3 or data.shape[1:] != MRNET_SLICE_SHAPE or data.shape[0] < 2:
        raise DatasetError(f"{path}: expected an MRNet exam of shape (slices, 256, 256), got {data.shape}.")
    check_intensities(path, data)


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
    files = sorted(
        str(p) for folder in present for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".npy" and not is_hidden(p, folder)
    )
    if not files:
        raise DatasetError(f"no .npy exams in {', '.join(str(folder) for folder in present)}.")
    if check:
        check_all(files, check_mrnet_exam, root)
    return [{key: path} for path in files]

"""DICOM series folders: find them, check their headers, and list the usable ones for MONAI's ``PydicomReader``.

MONAI's ``PydicomReader`` stacks every file of a folder by InstanceNumber and applies each file's rescale slope
and intercept, but it does not notice two series mixed in one folder, missing slices, a lone 2D image or files
without InstanceNumber. These checks read only the headers (fast), before training starts.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import DatasetError, raise_if_problems, require_folder

__all__ = ["DicomSeries", "dicom_series_datalist", "read_series"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomSeries:
    """Header summary of one DICOM series folder."""

    folder: str
    modality: str
    num_slices: int
    rows: int
    columns: int
    spacing: tuple[float, float, float]  # row, column, slice (mm)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")


def read_series(folder: str | os.PathLike) -> DicomSeries:
    """Read and check the headers of the ``.dcm`` files of one folder as a single 3D series.

    Raises ``DatasetError`` naming the folder or file for: unreadable files, several series in the folder, a
    single 2D image, slices of different sizes or orientations, missing InstanceNumber or position, and
    duplicated or missing slices (a gap over 1.5 times the usual slice distance).
    """
    import pydicom

    folder = Path(folder)
    files = _dicom_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no .dcm files.")
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(str(path), stop_before_pixels=True))
        except Exception as error:  # InvalidDicomError, truncated files, ...
            raise DatasetError(f"{path}: cannot be read as DICOM ({type(error).__name__}: {error}).") from error
    series = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise DatasetError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(sorted(series))}); put each series in its own folder."
        )
    if len(headers) < 2:
        raise DatasetError(f"{folder}: a single 2D image ({files[0].name}), not a 3D series.")
    first = headers[0]
    for path, header in zip(files, headers):
        for tag in ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if getattr(header, tag, None) is None:
                raise DatasetError(f"{path}: has no {tag}; cannot place it in a 3D volume.")
        if (header.Rows, header.Columns) != (first.Rows, first.Columns):
            raise DatasetError(
                f"{path}: is {header.Rows}x{header.Columns}, other slices of {folder} are {first.Rows}x{first.Columns}."
            )
        if not np.allclose(np.asarray(header.ImageOrientationPatient, float), np.asarray(first.ImageOrientationPatient, float), atol=1e-3):
            raise DatasetError(f"{path}: its orientation differs from the other slices of {folder}.")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.sort([float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers])
    steps = np.diff(positions)
    typical = float(np.median(steps))
    if typical <= 1e-6 or np.any(steps <= 1e-3 * typical):
        raise DatasetError(f"{folder}: two or more slices share a position; duplicated slices or mixed acquisitions?")
    if np.any(steps > 1.5 * typical):
        at = int(np.argmax(steps))
        raise DatasetError(
            f"{folder}: slices missing between positions {positions[at]:.2f} and {positions[at + 1]:.2f} mm "
            f"(gap {steps[at]:.2f} mm, usual distance {typical:.2f} mm)."
        )
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return DicomSeries(
        folder=str(folder),
        modality=str(getattr(first, "Modality", "")),
        num_slices=len(headers),
        rows=int(first.Rows),
        columns=int(first.Columns),
        spacing=(row_spacing, column_spacing, typical),
    )


def _first_header(folder: Path):
    """Header of the folder's first readable file, or None when none can be read (``read_series`` says why)."""
    import pydicom

    for path in _dicom_files(folder):
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:
            continue
    return None


def dicom_series_datalist(
    dataset_dir: str | os.PathLike, modality: str = "CT", key: str = "image", series_description: str | None = None
) -> list[dict[str, str]]:
    """MONAI datalist ``[{key: series_folder}, ...]`` of the DICOM series of one modality under ``dataset_dir``.

    Every folder holding ``.dcm`` files is one series (as TCIA/NBIA downloads are laid out). Series of another
    modality (e.g. the chest radiographs among LIDC-IDRI's CT series), or whose SeriesDescription does not match
    the regular expression ``series_description`` (case-insensitive ``re.search``; e.g. to keep the T1 series of
    a multi-sequence MRI study), are skipped with a logged warning and a count; a broken series that is wanted
    stops the run with every problem listed.
    """
    wanted_description = re.compile(series_description, re.IGNORECASE) if series_description else None
    root = require_folder(dataset_dir)
    folders: dict[Path, int] = defaultdict(int)
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() == ".dcm":
            folders[path.parent] += 1
    if not folders:
        raise DatasetError(f"dataset_dir {root} holds no DICOM (.dcm) files.")
    usable, problems, skipped = [], [], []
    for folder in sorted(folders):
        header = _first_header(folder)
        if header is not None:
            found = str(getattr(header, "Modality", ""))
            description = str(getattr(header, "SeriesDescription", ""))
            if found.upper() != modality.upper():
                skipped.append(f"{folder} ({found or 'no modality'})")
                continue
            if wanted_description is not None and not wanted_description.search(description):
                skipped.append(f"{folder} ({description or 'no description'})")
                continue
        try:
            read_series(folder)
        except DatasetError as error:
            problems.append(str(error))
            continue
        usable.append({key: str(folder)})
    wanted = f"{modality} series" + (f" whose SeriesDescription matches {series_description!r}" if series_description else "")
    if skipped:
        logger.warning("skipped %d series that are not %s: %s", len(skipped), wanted, "; ".join(skipped[:10]))
    raise_if_problems(problems, f"{len(folders)} DICOM folders in {root}")
    if not usable:
        raise DatasetError(f"dataset_dir {root} holds no {wanted} ({len(skipped)} others skipped).")
    return usable

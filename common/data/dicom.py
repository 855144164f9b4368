"""DICOM series folders: find them, check their headers, and read them in the order of their slice positions.

A series is stacked by each slice's position along the slice normal (the cross product of the row and column
directions of ImageOrientationPatient), whatever its InstanceNumber says: the check (``read_series``) and the
loader (``DicomSeriesReader``, used by the bundles in place of MONAI's ``PydicomReader``, which stacks by
InstanceNumber) order the slices the same way and agree on which files belong to a series (``dicom_files``: every
``.dcm`` file of the folder, whatever the letter case). The check reads only the headers (fast), before training
starts, and refuses what a radiologist would not accept as one volume: two series in a folder, a lone 2D image,
slices of different sizes, orientations or pixel spacings, duplicated or missing slices, uneven slice steps, and
a CT series whose stored values cannot be turned into Hounsfield units (no RescaleSlope/RescaleIntercept). A
series acquired with a gantry tilt (slices sheared along the stack) is warned about with its angle. An enhanced
multi-frame file (one file, every slice a frame; modern CT and MR scanners write them) is a series of its frames.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import PydicomReader
from monai.utils import MetaKeys

from .checks import DatasetError, dataset_files, raise_if_problems, require_folder

__all__ = [
    "DicomSeries",
    "DicomSeriesReader",
    "dicom_files",
    "dicom_series_datalist",
    "frame_count",
    "frames_as_slices",
    "gantry_tilt",
    "read_series",
    "slice_positions",
]

logger = logging.getLogger(__name__)

UNEVEN_STEP = 0.1  # how far (in slice steps) a slice may lie off an even grid of positions
MISSING_STEP = 1.5  # a step this many times the usual one means slices are missing
MAX_TILT = 0.5  # degrees between the slice normal and the stacking direction before a series counts as tilted


@dataclass(frozen=True)
class DicomSeries:
    """Header summary of one DICOM series folder."""

    folder: str
    modality: str
    num_slices: int
    rows: int
    columns: int
    spacing: tuple[float, float, float]  # row, column, slice (mm)


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The files of one series folder: every ``.dcm`` (any letter case, hidden files skipped), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() == ".dcm" and not p.name.startswith("."))


def frame_count(header) -> int:
    """How many frames a DICOM file holds (1 for a classic image)."""
    try:
        return max(1, int(getattr(header, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


# the functional groups of an enhanced multi-frame image that hold what a classic slice has at its top level
_FRAME_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
}


def frames_as_slices(dataset) -> list:
    """The frames of an enhanced multi-frame DICOM image (one file, many frames: what modern CT and MR scanners
    write) as classic single-frame datasets, so the series check and the loader treat them as the slices of a
    classic series. Each frame gets its position, orientation, pixel spacing and rescale from its per-frame
    functional groups (or the shared ones); with pixel data, its own (uncompressed) pixels. A file of one frame is
    returned as it is."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    frames = frame_count(dataset)
    if frames == 1:
        return [dataset]
    per_frame = list(getattr(dataset, "PerFrameFunctionalGroupsSequence", []) or [])
    shared = (getattr(dataset, "SharedFunctionalGroupsSequence", None) or [None])[0]
    pixels = dataset.pixel_array if "PixelData" in dataset else None
    dropped = {"PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "NumberOfFrames"}
    slices = []
    for index in range(frames):
        frame = pydicom.Dataset()
        for element in dataset:
            if element.keyword not in dropped:
                frame.add(element)
        for group, keywords in _FRAME_GROUPS.items():
            for source in (per_frame[index] if index < len(per_frame) else None, shared):
                items = getattr(source, group, None) if source is not None else None
                if items:
                    for keyword in keywords:
                        if keyword in items[0]:
                            setattr(frame, keyword, getattr(items[0], keyword))
                    break
        if pixels is not None:
            frame.PixelData = np.ascontiguousarray(pixels[index]).tobytes()
        frame.file_meta = pydicom.dataset.FileMetaDataset(getattr(dataset, "file_meta", pydicom.Dataset()))
        frame.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        slices.append(frame)
    return slices


def slice_positions(headers: Sequence) -> np.ndarray:
    """Each slice's position (mm) along the normal of the first slice's orientation."""
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return np.array([float(np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float))) for h in headers])


def _check_slices(folder: Path, files: Sequence[Path], headers: Sequence) -> None:
    first = headers[0]
    for path, header in zip(files, headers):
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if getattr(header, tag, None) is None:
                raise DatasetError(f"{path}: has no {tag}; cannot place it in a 3D volume.")
        if (header.Rows, header.Columns) != (first.Rows, first.Columns):
            raise DatasetError(
                f"{path}: is {header.Rows}x{header.Columns}, other slices of {folder} are {first.Rows}x{first.Columns}."
            )
        if not np.allclose(np.asarray(header.ImageOrientationPatient, float), np.asarray(first.ImageOrientationPatient, float), atol=1e-3):
            raise DatasetError(f"{path}: its orientation differs from the other slices of {folder}.")
        if not np.allclose(np.asarray(header.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-3):
            raise DatasetError(
                f"{path}: pixel spacing {[float(v) for v in header.PixelSpacing]} mm differs from the other slices of "
                f"{folder} ({[float(v) for v in first.PixelSpacing]} mm)."
            )
        if str(getattr(header, "Modality", "")).upper() == "CT" and getattr(header, "RescaleIntercept", None) is None:
            raise DatasetError(
                f"{path}: a CT slice without RescaleSlope/RescaleIntercept; its stored values cannot be turned into "
                "Hounsfield units. Export the series with its rescale tags."
            )


def _check_steps(folder: Path, positions: np.ndarray) -> float:
    """The slice spacing of sorted ``positions`` ((last - first) / (slices - 1)); ``DatasetError`` for duplicated or
    missing slices, and for slices off an even grid by more than ``UNEVEN_STEP`` of a step (at least 0.1 mm, the
    rounding of positions stored to one decimal)."""
    steps = np.diff(positions)
    usual = float(np.median(steps))
    if usual <= 1e-6 or np.any(steps <= 1e-3 * usual):
        raise DatasetError(f"{folder}: two or more slices share a position; duplicated slices or mixed acquisitions?")
    if np.any(steps > MISSING_STEP * usual):
        at = int(np.argmax(steps))
        raise DatasetError(
            f"{folder}: slices missing between positions {positions[at]:.2f} and {positions[at + 1]:.2f} mm "
            f"(gap {steps[at]:.2f} mm, usual distance {usual:.2f} mm)."
        )
    spacing = float(positions[-1] - positions[0]) / (len(positions) - 1)
    off_grid = np.abs(positions - (positions[0] + spacing * np.arange(len(positions))))
    if off_grid.max() > max(UNEVEN_STEP * spacing, 0.1):
        raise DatasetError(
            f"{folder}: uneven slice steps, from {steps.min():.3f} to {steps.max():.3f} mm (a slice lies "
            f"{off_grid.max():.2f} mm off an even {spacing:.3f} mm grid); a volume with one slice spacing would distort "
            "it. Resample the series to even steps first."
        )
    return spacing


def gantry_tilt(headers: Sequence) -> float:
    """The angle (degrees) between the slice normal and the line from the first slice's position to the last's, in
    position order: 0 for a straight stack, the gantry tilt for a CT series acquired with a tilted gantry (its
    slices are offset along the column direction, so the voxel grid is sheared)."""
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.asarray(headers[-1].ImagePositionPatient, float) - np.asarray(headers[0].ImagePositionPatient, float)
    cosine = abs(float(np.dot(normal, along))) / max(float(np.linalg.norm(normal) * np.linalg.norm(along)), 1e-12)
    return float(np.degrees(np.arccos(min(cosine, 1.0))))


def _warn_if_tilted(folder: Path, headers: Sequence) -> None:
    tilt = gantry_tilt(headers)
    if tilt > MAX_TILT:
        stated = getattr(headers[0], "GantryDetectorTilt", None)
        logger.warning(
            "%s: the slices are sheared by %.1f degrees (a gantry tilt%s): the bundle trains on the voxel grid as "
            "stored, so the anatomy is slanted by that angle along the slices. Resample the series to an untilted "
            "grid first (a tilt-correcting DICOM converter), or leave it out.", folder, tilt,
            f"; GantryDetectorTilt says {float(stated):g}" if stated not in (None, "") else "",
        )


def read_series(folder: str | os.PathLike) -> DicomSeries:
    """Read and check the headers of the ``.dcm`` files of one folder as a single 3D series.

    Raises ``DatasetError`` naming the folder or file for: unreadable files, several series in the folder, a
    single 2D image, slices of different sizes, orientations or pixel spacings, a missing position, duplicated,
    missing (a gap over 1.5 times the usual slice distance) or unevenly spaced slices, and CT slices without
    rescale tags. Slices are taken in the order of their position along the slice normal.
    """
    import pydicom

    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no .dcm files.")
    headers, names = [], []
    for path in files:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as error:  # InvalidDicomError, truncated files, ...
            raise DatasetError(f"{path}: cannot be read as DICOM ({type(error).__name__}: {error}).") from error
        frames = frames_as_slices(header)  # an enhanced multi-frame file: its frames are the slices
        headers += frames
        names += [path] if len(frames) == 1 else [Path(f"{path} (frame {i + 1})") for i in range(len(frames))]
    series = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise DatasetError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(sorted(series))}); put each series in its own folder."
        )
    if len(headers) < 2:
        raise DatasetError(f"{folder}: a single 2D image ({files[0].name}), not a 3D series.")
    if len(files) > 1 and len(headers) > len(files):
        raise DatasetError(f"{folder}: holds a multi-frame file among {len(files)} files; put each series in its own folder.")
    _check_slices(folder, names, headers)
    positions = slice_positions(headers)
    typical = _check_steps(folder, np.sort(positions))
    _warn_if_tilted(folder, [headers[i] for i in np.argsort(positions, kind="stable")])
    first = headers[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return DicomSeries(
        folder=str(folder),
        modality=str(getattr(first, "Modality", "")),
        num_slices=len(headers),
        rows=int(first.Rows),
        columns=int(first.Columns),
        spacing=(row_spacing, column_spacing, typical),
    )


class DicomSeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` for a folder holding one series, stacked as ``read_series`` checked it.

    ``PydicomReader`` stacks a series by InstanceNumber and keeps the files its ``fname_regex`` matches; this reader
    takes the files ``dicom_files`` lists and stacks them by their position along the slice normal, so the volume
    the bundle trains on is the one the check accepted, even when InstanceNumbers are shuffled or all equal. The
    affine comes from the first and last slice positions (MONAI's), so the slice spacing follows the positions.
    Each file's rescale slope and intercept are applied, as ``PydicomReader`` does.
    """

    def read(self, data, **kwargs):
        """A folder: its series' headers and pixel data, in position order; anything else as ``PydicomReader``."""
        import pydicom

        names = data if isinstance(data, (list, tuple)) else [data]
        if len(names) != 1 or not Path(f"{names[0]}").is_dir():
            return super().read(data, **kwargs)
        files = dicom_files(names[0])
        datasets, sources = [], []
        for path in files:
            frames = frames_as_slices(pydicom.dcmread(str(path), **{**self.kwargs, **kwargs}))
            datasets += frames
            sources += [str(path)] * len(frames)
        if len(datasets) < 2:
            raise DatasetError(f"{names[0]}: not a DICOM series ({len(files)} .dcm file of one frame).")
        order = np.argsort(slice_positions(datasets), kind="stable")
        self.filenames = [[sources[i] for i in order]]
        self.has_series = True
        return [datasets[i] for i in order]

    def _combine_dicom_series(self, data, filenames):
        """Stack slices already in position order (see ``read``); the metadata of the first slice."""
        slices = list(data)
        arrays = [self._get_array_data(ds, name) for ds, name in zip(slices, filenames)]
        metadata = self._get_meta_dict(slices[0])
        positions = slice_positions(slices)
        metadata["spacing"] = np.asarray([*map(float, slices[0].PixelSpacing), float(np.median(np.diff(positions)))])
        metadata["lastImagePositionPatient"] = np.asarray(slices[-1].ImagePositionPatient, dtype=float)
        metadata[MetaKeys.SPATIAL_SHAPE] = arrays[0].shape + (len(arrays),)
        return np.stack(arrays, axis=-1), metadata


def _first_header(folder: Path):
    """Header of the folder's first readable file, or None when none can be read (``read_series`` says why)."""
    import pydicom

    for path in dicom_files(folder):
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
    for path in dataset_files(root, (".dcm",)):
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

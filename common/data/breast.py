"""The Duke Breast Cancer MRI layout: which series to train on, and which breast mask belongs to which series.

Each patient gives two training volumes, the left and the right breast (``CropBreastSided`` cuts them), so the
datalist holds every series twice, with ``side`` "left" and "right".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib

from .checks import DatasetError, dataset_files, raise_if_problems, require_folder
from .dicom import dicom_series_datalist
from .nifti import NIFTI_SUFFIXES, nifti_datalist, nifti_stem

__all__ = ["T1_NON_FAT_SAT", "breast_datalist", "patient_of"]

logger = logging.getLogger(__name__)

# SeriesDescriptions of Duke's non-fat-saturated T1 series ("ax t1", "ax t1 tse", "ax 3d t1 bilateral", ...),
# not the fat-saturated dynamic ones ("ax dyn pre", "ax dyn 1st pass", ...) or subtractions
T1_NON_FAT_SAT = r"^(?!.*(dyn|pass|sub|fat.?sat)).*t1"


def patient_of(image: str | os.PathLike, root: Path) -> str:
    """Patient name of an image: its top folder under ``root`` (DICOM), or its file name without suffix (NIfTI)."""
    path = Path(image)
    if path.is_dir():
        parts = path.relative_to(root).parts
        return parts[0] if parts else path.name
    return nifti_stem(path)


def _check_mask_header(path: Path) -> str | None:
    """A problem with a NIfTI mask's header, or None (other formats are checked when loaded)."""
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return None
    try:
        shape = nib.load(str(path)).shape
    except Exception as error:
        return f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error})."
    if len(shape) != 3:
        return f"{path}: a breast mask must be 3D, got shape {tuple(shape)}."
    return None


def breast_datalist(
    dataset_dir: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    mask_name: str = "{patient}.nii.gz",
    series_description: str | None = T1_NON_FAT_SAT,
) -> list[dict[str, str]]:
    """Datalist ``[{"image", "side", ["mask"]}, ...]`` of breast MRI volumes, each listed for "left" and "right".

    ``dataset_dir`` holds either DICOM series, one patient folder each as TCIA downloads Duke Breast Cancer MRI
    (``Breast_MRI_001/<study>/<series>/*.dcm``; only MR series whose SeriesDescription matches
    ``series_description`` are used, the others are skipped with a warning and a count), or NIfTI volumes, one
    per patient (``Breast_MRI_001.nii.gz``). The breast mask of a patient, when ``mask_dir`` is given, is
    ``mask_dir / mask_name.format(patient=...)`` (NIfTI, or NRRD with ``pynrrd`` installed); patients without
    one are cropped by the documented fallback of ``CropBreastSided`` and counted in a warning.
    """
    root = require_folder(dataset_dir).resolve()
    if dataset_files(root, (".dcm",)):
        images = [d["image"] for d in dicom_series_datalist(root, modality="MR", series_description=series_description)]
    else:
        images = [d["image"] for d in nifti_datalist(root, allow_4d=False)]  # the bundle loads them "no_channel"
    masks: dict[str, str] = {}
    if mask_dir is not None:
        mask_root = require_folder(mask_dir)
        if root in mask_root.resolve().parents or mask_root.resolve() == root.resolve():
            raise DatasetError(
                f"mask_dir {mask_root} is inside dataset_dir {root}, so its masks would be read as images; "
                "keep the images and the masks in separate folders."
            )
        if "{patient}" not in mask_name:
            raise ValueError(f"mask_name must contain '{{patient}}', got {mask_name!r}.")
        problems = []
        for image in images:
            path = mask_root / mask_name.format(patient=patient_of(image, root))
            if path.is_file():
                problem = _check_mask_header(path)
                if problem:
                    problems.append(problem)
                masks[image] = str(path)
        raise_if_problems(problems, f"{len(masks)} breast masks in {mask_root}")
        if not masks:
            example = mask_root / mask_name.format(patient=patient_of(images[0], root))
            raise DatasetError(f"mask_dir {mask_root} holds no mask for any of {len(images)} series (looked for e.g. {example}).")
        if len(masks) < len(images):
            missing = [patient_of(image, root) for image in images if image not in masks]
            logger.warning(
                "%d of %d series have no breast mask in %s and are cropped to the anterior body instead: %s",
                len(missing), len(images), mask_root, ", ".join(missing[:10]),
            )
    datalist = []
    for image in images:
        for side in ("left", "right"):
            item = {"image": image, "side": side}
            if image in masks:
                item["mask"] = masks[image]
            datalist.append(item)
    return datalist

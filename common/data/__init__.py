"""Reading each dataset's real on-disk format, checking it before training, and the embedded demo data.

Readers return MONAI datalists and raise ``DatasetError`` naming every unusable file: ``nifti_datalist`` (a folder
of NIfTI volumes: brain MRI), ``mrnet_datalist`` (the MRNet knee release), ``dicom_series_datalist`` (DICOM series
folders: LIDC-IDRI chest CT), ``breast_datalist`` (the Duke breast MRI layout with breast masks) and
``paired_datalist`` (image/label pairs for Med-DDPM). ``CheckedCacheDataset`` then runs the bundle's deterministic
preprocessing on every file before training and names each one it fails on. ``transforms`` holds the preprocessing MONAI has no single
transform for, and ``demo`` makes small volumes in each of these formats so every bundle runs with no download.
"""

from .breast import T1_NON_FAT_SAT, breast_datalist, patient_of
from .checks import (
    DatasetError,
    check_all,
    check_intensities,
    is_hidden,
    item_name,
    raise_if_problems,
    require_folder,
)
from .class_labels import (
    LABELS_KEY,
    LabelRow,
    check_class_labels,
    class_counts,
    class_names,
    label_indices,
    labels_description,
    labelled_datalist,
    mrnet_labels,
    read_labels_file,
    requested_labels,
    volumes_of_class,
)
from .dataset import CheckedCacheDataset, describe_failure
from .demo import (
    brain_demo_datalist,
    brain_ventricles_demo_datalist,
    brain_demo_heldout_datalist,
    brain_lesion_demo_datalist,
    breast_demo_datalist,
    chest_demo_datalist,
    knee_demo_datalist,
    tumor_demo_datalist,
)
from .dicom import (
    DicomSeries,
    DicomSeriesReader,
    dicom_files,
    dicom_series_datalist,
    read_series,
    slice_positions,
)
from .mrnet import MRNET_PLANES, check_mrnet_exam, mrnet_datalist
from .nifti import (
    NIFTI_SUFFIXES,
    check_volume,
    find_nifti_files,
    nifti_datalist,
    nifti_stem,
)
from .pairs import check_pair, paired_datalist
from .suitability import CheckedScaleIntensityd, WarnFewSlicesd, WarnUnlessSkullStrippedd
from .transforms import CropBreastSided, RemapLabelsd

__all__ = [
    "LABELS_KEY",
    "LabelRow",
    "check_class_labels",
    "class_counts",
    "class_names",
    "label_indices",
    "labels_description",
    "labelled_datalist",
    "mrnet_labels",
    "read_labels_file",
    "requested_labels",
    "volumes_of_class",
    "CheckedCacheDataset",
    "CheckedScaleIntensityd",
    "CropBreastSided",
    "DatasetError",
    "DicomSeries",
    "DicomSeriesReader",
    "MRNET_PLANES",
    "NIFTI_SUFFIXES",
    "RemapLabelsd",
    "T1_NON_FAT_SAT",
    "WarnFewSlicesd",
    "WarnUnlessSkullStrippedd",
    "brain_demo_datalist",
    "brain_ventricles_demo_datalist",
    "brain_demo_heldout_datalist",
    "brain_lesion_demo_datalist",
    "breast_datalist",
    "breast_demo_datalist",
    "check_all",
    "check_intensities",
    "check_mrnet_exam",
    "check_pair",
    "check_volume",
    "chest_demo_datalist",
    "describe_failure",
    "dicom_files",
    "dicom_series_datalist",
    "find_nifti_files",
    "is_hidden",
    "item_name",
    "knee_demo_datalist",
    "mrnet_datalist",
    "nifti_datalist",
    "nifti_stem",
    "paired_datalist",
    "patient_of",
    "raise_if_problems",
    "read_series",
    "require_folder",
    "slice_positions",
    "tumor_demo_datalist",
]

"""breast_datalist on the Duke layout: T1 series chosen, sides listed, masks matched, problems named."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import DatasetError, breast_datalist
from common.data.demo import make_breast_phantom, write_breast_mask, write_dicom_series

SPACING = (2.0, 2.0, 6.0)


@pytest.fixture
def duke_folder(tmp_path: Path) -> Path:
    """Two patients, each with a non-fat-saturated T1 series and a fat-saturated dynamic series; masks for both."""
    rng = np.random.default_rng(0)
    root = tmp_path / "Duke-Breast-Cancer-MRI"
    (tmp_path / "masks").mkdir()
    for patient in ("Breast_MRI_001", "Breast_MRI_002"):
        image, mask = make_breast_phantom(rng, shape=(24, 48, 6))
        study = root / patient / "01-01-1990-MRI BREAST BILATERAL"
        write_dicom_series(image, study / "3.000000-ax t1-58582", spacing=SPACING, intercept=0.0, modality="MR", series_description="ax t1")
        write_dicom_series(image, study / "4.000000-ax dyn pre-41369", spacing=SPACING, intercept=0.0, modality="MR", series_description="ax dyn pre")
        write_breast_mask(mask, tmp_path / "masks" / f"{patient}.nii.gz", SPACING)
    return root


def test_t1_series_are_listed_once_per_side_with_their_masks(duke_folder, caplog):
    with caplog.at_level(logging.WARNING):
        datalist = breast_datalist(duke_folder, duke_folder.parent / "masks")
    assert [(Path(d["image"]).parts[-3], d["side"], Path(d["mask"]).name) for d in datalist] == [
        ("Breast_MRI_001", "left", "Breast_MRI_001.nii.gz"),
        ("Breast_MRI_001", "right", "Breast_MRI_001.nii.gz"),
        ("Breast_MRI_002", "left", "Breast_MRI_002.nii.gz"),
        ("Breast_MRI_002", "right", "Breast_MRI_002.nii.gz"),
    ]
    assert all(d["image"].endswith("ax t1-58582") for d in datalist)
    assert "skipped 2 series that are not MR series whose SeriesDescription matches" in caplog.text and "(ax dyn pre)" in caplog.text


def test_a_missing_mask_is_counted_and_falls_back(duke_folder, caplog):
    (duke_folder.parent / "masks" / "Breast_MRI_002.nii.gz").unlink()
    with caplog.at_level(logging.WARNING):
        datalist = breast_datalist(duke_folder, duke_folder.parent / "masks")
    assert ["mask" in d for d in datalist] == [True, True, False, False]
    assert "1 of 2 series have no breast mask" in caplog.text and "Breast_MRI_002" in caplog.text


def test_mask_problems_are_named(duke_folder, tmp_path):
    masks = duke_folder.parent / "masks"
    with pytest.raises(DatasetError, match=r"holds no mask for any of 2 series \(looked for e\.g\. .*Breast_MRI_001_Breast\.nii\.gz\)"):
        breast_datalist(duke_folder, masks, mask_name="{patient}_Breast.nii.gz")
    with pytest.raises(ValueError, match="mask_name must contain"):
        breast_datalist(duke_folder, masks, mask_name="mask.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.uint8), np.eye(4)), str(masks / "Breast_MRI_002.nii.gz"))
    with pytest.raises(DatasetError, match=r"Breast_MRI_002.nii.gz: a breast mask must be 3D, got shape \(8, 8\)"):
        breast_datalist(duke_folder, masks)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 1), np.uint8), np.eye(4)), str(masks / "Breast_MRI_002.nii.gz"))
    with pytest.raises(DatasetError, match=r"Breast_MRI_002.nii.gz: a breast mask must be 3D, got shape \(8, 8, 8, 1\)"):
        breast_datalist(duke_folder, masks)
    with pytest.raises(DatasetError, match="is inside dataset_dir"):
        breast_datalist(duke_folder, duke_folder / "Breast_MRI_001")


def test_nifti_volumes_are_one_patient_each(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image, mask = make_breast_phantom(rng, shape=(24, 48, 6))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "images" / "case_7.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "masks" / "case_7_mask.nii"))
    datalist = breast_datalist(tmp_path / "images", tmp_path / "masks", mask_name="{patient}_mask.nii")
    assert [(Path(d["image"]).name, d["side"], Path(d["mask"]).name) for d in datalist] == [
        ("case_7.nii.gz", "left", "case_7_mask.nii"),
        ("case_7.nii.gz", "right", "case_7_mask.nii"),
    ]


def test_no_t1_series_at_all(duke_folder):
    with pytest.raises(DatasetError, match="holds no MR series whose SeriesDescription matches 'fl3d'"):
        breast_datalist(duke_folder, series_description="fl3d")


def test_a_4d_nifti_breast_is_named_by_the_check_not_by_the_preprocessing(tmp_path):
    import nibabel as nib

    folder = tmp_path / "nifti"
    folder.mkdir()
    volume = np.random.default_rng(0).uniform(0, 1, (20, 24, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / "Breast_MRI_001.nii.gz"))
    nib.save(nib.Nifti1Image(volume[..., None], np.eye(4)), str(folder / "Breast_MRI_002.nii.gz"))
    with pytest.raises(DatasetError, match=r"Breast_MRI_002.nii.gz: expected a 3D volume, got shape \(20, 24, 8, 1\); save it without the trailing dimension"):
        breast_datalist(folder)

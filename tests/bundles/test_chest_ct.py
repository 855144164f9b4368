"""The chest_ct bundle on DICOM series written with pydicom, and its preprocessing against hand-computed values."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import DatasetError, dicom_series_datalist, read_series
from common.data.demo import make_chest_phantom, write_dicom_series
from common.pipeline import SMALL_IMAGE_SIZE
from tests.bundles.bundle_runs import REPO, SMALL_SHARED, full_size_parser, run_pipeline, train_and_sample_conditional

CONFIGS = REPO / "bundles" / "chest_ct" / "configs"
# small volumes: 4 mm resampling, an 80 mm crop, 32^3 output
SHARED = {"image_size": SMALL_IMAGE_SIZE["chest_ct"], **SMALL_SHARED}
PREPROCESSING = {"resample_spacing": [4.0, 4.0, 4.0], "crop_size": [80, 80, 80]}


def _preprocessing(**overrides):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_autoencoder.json"))
    parser.update(overrides)
    return parser.get_parsed_content("train#preprocessing").transforms


def _apply(transforms, folder):
    data = {"image": str(folder)}
    for transform in transforms:
        data = transform(data)
    return data["image"]


@pytest.fixture
def lidc_folder(tmp_path: Path) -> Path:
    """LIDC-IDRI-like download: per patient a CT series and, for one patient, a 2-image radiograph series."""
    rng = np.random.default_rng(0)
    root = tmp_path / "LIDC-IDRI"
    for index in range(3):
        hu = make_chest_phantom(rng, shape=(48, 48, 12))
        write_dicom_series(hu, root / f"LIDC-IDRI-{index:04d}" / "01-01-2000-CT" / "3000-series", spacing=(2.0, 2.0, 5.0))
    write_dicom_series(rng.normal(size=(32, 32, 2)) * 100, root / "LIDC-IDRI-0000" / "01-01-2000-DX" / "1-dx", modality="DX")
    (root / "LIDC-IDRI-0001" / "01-01-2000-CT" / "3000-series" / "069.xml").write_text("<LidcReadMessage/>")
    return root


def test_hounsfield_units_from_raw_values_with_each_files_slope_and_intercept(tmp_path):
    raw_hu = np.arange(-1000, -1000 + 16 * 16 * 4, dtype=np.float32).reshape(16, 16, 4)
    write_dicom_series(raw_hu, tmp_path / "s", spacing=(1.0, 1.0, 1.0), slope=2.0, intercept=-1024.0)
    stored = np.round((raw_hu + 1024.0) / 2.0)
    loaded = np.asarray(_preprocessing()[0]({"image": str(tmp_path / "s")})["image"])
    # PydicomReader swaps rows and columns into (x, y); compare after undoing that
    assert np.allclose(np.swapaxes(loaded, 0, 1), stored * 2.0 - 1024.0)


def test_resampling_gives_1mm_voxels_over_the_same_extent(tmp_path):
    write_dicom_series(np.zeros((40, 30, 10), np.float32) + 50, tmp_path / "s", spacing=(2.0, 2.5, 5.0))
    resampled = _apply(_preprocessing()[:4], tmp_path / "s")  # load, channel, RAS, 1 mm
    assert np.allclose(np.sqrt((np.asarray(resampled.affine)[:3, :3] ** 2).sum(0)), 1.0)
    extent = np.array([30 * 2.5, 40 * 2.0, 10 * 5.0])  # columns are x after the reader's swap
    assert np.all(np.abs(np.array(resampled.shape[1:]) - extent) <= 5), resampled.shape


def test_crop_keeps_the_centre_and_window_scales_hu(tmp_path):
    hu = np.full((48, 48, 24), -1000.0, np.float32)
    hu[22:26, 22:26, 10:14] = 1000.0  # a bright cube at the centre of the volume
    write_dicom_series(hu, tmp_path / "s", spacing=(1.0, 1.0, 1.0))
    transforms = _preprocessing(crop_size=[16, 16, 32])
    cropped = np.asarray(_apply(transforms[:6], tmp_path / "s"))  # up to the crop (no resize)
    assert cropped.shape == (1, 16, 16, 32)
    assert cropped.min() == -1.0 and cropped.max() == 1.0  # -1000 HU -> -1, 1000 HU -> 1, padding is air
    bright = np.argwhere(cropped[0] > 0.9)
    assert np.allclose(bright.mean(0), np.array([7.5, 7.5, 15.5]), atol=0.6)


def test_series_reader_finds_ct_and_skips_other_modalities(lidc_folder, caplog):
    with caplog.at_level(logging.WARNING):
        datalist = dicom_series_datalist(lidc_folder)
    assert len(datalist) == 3 and all(d["image"].endswith("3000-series") for d in datalist)
    assert "skipped 1 series that are not CT" in caplog.text and "1-dx (DX)" in caplog.text
    series = read_series(datalist[0]["image"])
    assert (series.num_slices, series.rows, series.columns, series.spacing) == (12, 48, 48, (2.0, 2.0, 5.0))


def test_two_series_in_one_folder(lidc_folder):
    folder = lidc_folder / "LIDC-IDRI-0001" / "01-01-2000-CT" / "3000-series"
    write_dicom_series(np.zeros((48, 48, 3)), folder / "other")
    for path in (folder / "other").iterdir():
        shutil.move(str(path), folder / f"x{path.name}")
    with pytest.raises(DatasetError, match="holds 2 DICOM series") as info:
        dicom_series_datalist(lidc_folder)
    assert str(folder) in str(info.value)


def test_missing_slices(lidc_folder):
    folder = lidc_folder / "LIDC-IDRI-0002" / "01-01-2000-CT" / "3000-series"
    (folder / "0006.dcm").unlink()
    with pytest.raises(DatasetError, match="slices missing between positions 20.00 and 30.00 mm"):
        dicom_series_datalist(lidc_folder)


def test_a_lone_2d_ct_image_and_an_empty_folder(tmp_path):
    write_dicom_series(np.zeros((16, 16, 1)), tmp_path / "one")
    with pytest.raises(DatasetError, match="a single 2D image"):
        dicom_series_datalist(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no DICOM"):
        dicom_series_datalist(tmp_path / "empty")


def test_train_autoencoder_then_diffusion_then_inference(lidc_folder, tmp_path):
    run = run_pipeline("chest_ct", lidc_folder, tmp_path, SHARED, preprocessing=PREPROCESSING)
    assert (run["models"] / "autoencoder.pt").is_file()
    assert {"network", "ema_network"} <= set(torch.load(run["models"] / "diffusion.pt", weights_only=True))
    image = nib.load(str(run["samples"] / "sample_0000_seed0.nii.gz"))
    assert image.shape == (32, 32, 32) and np.allclose(image.header.get_zooms(), 2.5)
    # class-conditional, two variables labelled per patient folder of the DICOM download
    labels = tmp_path / "lidc_diagnosis.csv"
    labels.write_text("file,diagnosis,size\nLIDC-IDRI-0000,benign,small\nLIDC-IDRI-0001,malignant,large\nLIDC-IDRI-0002,benign,large\n")
    classes = {"diagnosis": ["benign", "malignant"], "size": ["small", "large"]}
    record, out = train_and_sample_conditional("chest_ct", run, lidc_folder, SHARED, classes, labels, PREPROCESSING)
    assert [nib.load(str(out / f)).header["descrip"].item().decode() for f in record["files"]] == [
        "diagnosis=benign size=small", "diagnosis=malignant size=small", "no label"]


def test_full_size_defaults_match_the_paper():
    parser, latent_shape, _ = full_size_parser("chest_ct", (128, 128, 128))
    assert latent_shape == (1, 8, 32, 32, 32)
    assert parser["batch_size"] == 50 and parser["resample_spacing"] == [1.0, 1.0, 1.0]
    assert parser["crop_size"] == [320, 320, 320] and parser["image_size"] == [128, 128, 128]


def _renumber(folder: Path, numbers, names=None) -> None:
    """Give the slices of a series other InstanceNumbers (and file names), as exports sometimes do."""
    import pydicom

    for index, path in enumerate(sorted(folder.glob("*.dcm"))):
        header = pydicom.dcmread(str(path))
        header.InstanceNumber = int(numbers[index])
        target = folder / (names[index] if names else path.name)
        header.save_as(str(target))
        if target != path:
            path.unlink()


@pytest.mark.parametrize("numbering", ["shuffled", "all_equal_files_named_by_uid", "upper_case_suffix"])
def test_slices_are_stacked_by_position_as_the_check_orders_them(tmp_path, numbering):
    hu = np.zeros((8, 8, 6), np.float32)
    for k in range(6):
        hu[:, :, k] = 100.0 * k  # slice k at position 2.5 * k mm holds 100 * k HU
    folder = tmp_path / "series"
    write_dicom_series(hu, folder, spacing=(1.0, 1.0, 2.5))
    if numbering == "shuffled":
        _renumber(folder, [4, 1, 6, 2, 5, 3])
    elif numbering == "all_equal_files_named_by_uid":
        _renumber(folder, [1] * 6, [f"1.2.840.{n}.dcm" for n in (93, 12, 57, 31, 80, 44)])
    else:
        for path in folder.glob("*.dcm"):
            path.rename(path.with_suffix(".DCM"))
    series = read_series(folder)  # the check
    assert series.num_slices == 6 and series.spacing == (1.0, 1.0, 2.5)
    loaded = _preprocessing()[0]({"image": str(folder)})["image"]  # the bundle's loader
    assert loaded.shape == (8, 8, 6)
    assert np.allclose(np.asarray(loaded)[0, 0, :], 100.0 * np.arange(6))  # in position order
    assert np.allclose(np.sqrt((np.asarray(loaded.affine)[:3, :3] ** 2).sum(0)), [1.0, 1.0, 2.5])


def test_series_a_radiologist_would_not_accept_are_named(tmp_path):
    import pydicom

    def series(name: str, spacing=(1.0, 1.0, 2.0)) -> Path:
        write_dicom_series(np.zeros((8, 8, 6), np.float32), tmp_path / name, spacing=spacing)
        return tmp_path / name

    uneven = series("uneven")
    for index, path in enumerate(sorted(uneven.glob("*.dcm"))):  # 2 mm steps, then 3 mm ones
        header = pydicom.dcmread(str(path))
        header.ImagePositionPatient = [0.0, 0.0, 2.0 * index + max(0, index - 2)]
        header.save_as(str(path))
    with pytest.raises(DatasetError, match=rf"{uneven}: uneven slice steps, from 2.000 to 3.000 mm"):
        read_series(uneven)
    rounded = series("rounded", spacing=(1.0, 1.0, 0.625))  # thin CT slices, positions stored to 0.1 mm: accepted
    for index, path in enumerate(sorted(rounded.glob("*.dcm"))):
        header = pydicom.dcmread(str(path))
        header.ImagePositionPatient = [0.0, 0.0, round(0.625 * index, 1)]
        header.save_as(str(path))
    assert read_series(rounded).spacing == pytest.approx((1.0, 1.0, 0.625), abs=0.01)
    no_rescale = series("no_rescale")
    header = pydicom.dcmread(str(no_rescale / "0003.dcm"))
    del header.RescaleIntercept, header.RescaleSlope
    header.save_as(str(no_rescale / "0003.dcm"))
    with pytest.raises(DatasetError, match=r"0003.dcm: a CT slice without RescaleSlope/RescaleIntercept"):
        read_series(no_rescale)
    spacing = series("spacing")
    header = pydicom.dcmread(str(spacing / "0002.dcm"))
    header.PixelSpacing = [0.8, 0.8]
    header.save_as(str(spacing / "0002.dcm"))
    with pytest.raises(DatasetError, match=r"0002.dcm: pixel spacing \[0.8, 0.8\] mm differs from the other slices"):
        read_series(spacing)


def test_a_series_acquired_with_a_gantry_tilt_is_named_with_its_angle(tmp_path, caplog):
    import pydicom

    tilted = tmp_path / "tilted"
    write_dicom_series(np.random.default_rng(0).normal(size=(8, 8, 6)).astype(np.float32) * 100, tilted, spacing=(1.0, 1.0, 2.0))
    for index, path in enumerate(sorted(tilted.glob("*.dcm"))):  # each slice 2 mm further and offset along y
        header = pydicom.dcmread(str(path))
        header.ImagePositionPatient = [0.0, 2.0 * index * np.tan(np.radians(15.0)), 2.0 * index]
        header.GantryDetectorTilt = 15.0
        header.save_as(str(path))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_autoencoder.json"))
    with caplog.at_level(logging.WARNING, logger="common.data.dicom"):
        assert parser.get_parsed_content("read_datalist")(str(tmp_path)) == [{"image": str(tilted)}]  # the bundle's reader
    assert (f"{tilted}: the slices are sheared by 15.0 degrees (a gantry tilt; GantryDetectorTilt says 15): the bundle "
            "trains on the voxel grid as stored") in caplog.text
    caplog.clear()
    write_dicom_series(np.zeros((8, 8, 6), np.float32), tmp_path / "straight", spacing=(1.0, 1.0, 2.0))
    with caplog.at_level(logging.WARNING, logger="common.data.dicom"):
        read_series(tmp_path / "straight")
    assert "sheared" not in caplog.text


def _enhanced_ct(classic: Path, path: Path) -> None:
    """One enhanced multi-frame CT file holding the slices of a classic series (what a modern scanner writes):
    positions, spacing and rescale in the functional groups, the frames in reverse order of position."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    slices = [pydicom.dcmread(str(p)) for p in sorted(classic.glob("*.dcm"))][::-1]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, meta.MediaStorageSOPInstanceUID
    first = slices[0]
    for keyword in ("Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "SamplesPerPixel",
                    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.NumberOfFrames = len(slices)

    def item(**values) -> Dataset:
        element = Dataset()
        for keyword, value in values.items():
            setattr(element, keyword, value)
        return element

    shared = item(PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=first.ImageOrientationPatient)]),
                  PixelMeasuresSequence=Sequence([item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]),
                  PixelValueTransformationSequence=Sequence([item(RescaleSlope=first.RescaleSlope,
                                                                  RescaleIntercept=first.RescaleIntercept, RescaleType="HU")]))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=s.ImagePositionPatient)])) for s in slices])
    ds.PixelData = b"".join(s.PixelData for s in slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_an_enhanced_multi_frame_file_is_read_as_the_series_of_its_frames(tmp_path):
    hu = make_chest_phantom(np.random.default_rng(0), shape=(24, 24, 8))
    write_dicom_series(hu, tmp_path / "classic" / "series", spacing=(2.0, 2.0, 5.0))
    _enhanced_ct(tmp_path / "classic" / "series", tmp_path / "enhanced" / "series" / "ct.dcm")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_autoencoder.json"))
    datalist = parser.get_parsed_content("read_datalist")(str(tmp_path / "enhanced"))  # the bundle's check
    assert datalist == [{"image": str(tmp_path / "enhanced" / "series")}]
    classic_series = read_series(tmp_path / "classic" / "series")
    assert read_series(tmp_path / "enhanced" / "series") == replace(classic_series, folder=str(tmp_path / "enhanced" / "series"))
    load = _preprocessing()[0]  # the bundle's loader: the same voxels, in position order, and the same affine
    enhanced, classic = load({"image": str(tmp_path / "enhanced" / "series")})["image"], load({"image": str(tmp_path / "classic" / "series")})["image"]
    assert enhanced.shape == classic.shape == (24, 24, 8)
    assert torch.equal(torch.as_tensor(enhanced), torch.as_tensor(classic))
    assert np.allclose(np.asarray(enhanced.affine), np.asarray(classic.affine))

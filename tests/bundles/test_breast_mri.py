"""The breast_mri bundle on Duke-style DICOM series with NIfTI masks, and its preprocessing against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data.demo import make_breast_phantom, write_breast_mask, write_dicom_series
from common.pipeline import SMALL_IMAGE_SIZE
from tests.bundles.bundle_runs import REPO, SMALL_SHARED, full_size_parser, run_pipeline, train_and_sample_conditional

CONFIGS = REPO / "bundles" / "breast_mri" / "configs"
# small volumes: 2 x 2 x 3 mm resampling, 32x32x16 output
SHARED = {"image_size": SMALL_IMAGE_SIZE["breast_mri"], **SMALL_SHARED}
PREPROCESSING = {"resample_spacing": [2.0, 2.0, 3.0]}
ROWS, COLUMNS, SLICES = 20, 40, 4
SPACING = (1.32, 1.32, 6.0)


def _preprocessing(**overrides):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_autoencoder.json"))
    parser.update({"image_reader": "$monai.data.PydicomReader(fname_regex='.*\\\\.dcm$')", **overrides})
    return parser.get_parsed_content("train#preprocessing").transforms


def _apply(transforms, data):
    for transform in transforms:
        data = transform(data)
    return data


@pytest.fixture
def two_sided_series(tmp_path: Path) -> dict:
    """A series whose patient's left breast (high columns: DICOM's x runs to the patient's left) is brighter."""
    image = np.zeros((ROWS, COLUMNS, SLICES), np.float32)
    image[10:] = 200.0  # thorax, posterior
    image[2:10, 4:20] = 100.0  # right breast, anterior
    image[2:10, 20:36] = 300.0  # left breast
    mask = np.zeros(image.shape, np.uint8)
    mask[2:10, 4:36] = 1
    write_dicom_series(image, tmp_path / "series", spacing=SPACING, intercept=0.0, modality="MR")
    write_breast_mask(mask, tmp_path / "mask.nii.gz", SPACING)
    return {"image": str(tmp_path / "series"), "mask": str(tmp_path / "mask.nii.gz")}


def test_resampling_to_the_papers_spacing(two_sided_series):
    data = _apply(_preprocessing()[:6], {**two_sided_series, "side": "left"})  # load x2, channel, match, RAS, spacing
    image, mask = data["image"], data["mask"]
    assert np.allclose(np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(0)), [0.66, 0.66, 3.0])
    # (n - 1) * old / new + 1 voxels per axis; x is the columns after RAS orientation
    assert image.shape[1:] == mask.shape[1:] == ((COLUMNS - 1) * 2 + 1, (ROWS - 1) * 2 + 1, (SLICES - 1) * 2 + 1)


@pytest.mark.parametrize("side, value, columns", [("left", 300.0, (20, 36)), ("right", 100.0, (4, 20))])
def test_each_half_is_one_breast_centred_on_its_half_of_the_mask(two_sided_series, side, value, columns):
    image = _apply(_preprocessing()[:7], {**two_sided_series, "side": side})["image"]  # up to the crop
    assert np.median(np.asarray(image)) == pytest.approx(value)
    centre = np.asarray(image.affine) @ np.array([*((np.array(image.shape[1:]) - 1) / 2), 1.0])
    # hand-computed from the mask's pixels: LPS (column * 1.32, row * 1.32, slice * 6) -> RAS (-x, -y, z)
    expected = [-(columns[0] + columns[1] - 1) / 2 * 1.32, -(2 + 9) / 2 * 1.32, (SLICES - 1) / 2 * 6.0]
    assert np.allclose(centre[:3], expected, atol=1.0), (centre, expected)


def test_training_volumes_are_resized_scaled_and_keep_only_the_image(two_sided_series):
    data = _apply(_preprocessing(image_size=[32, 32, 8])[:-2], {**two_sided_series, "side": "right"})
    assert set(data) == {"image"} and data["image"].shape == (1, 32, 32, 8)
    assert float(data["image"].min()) == -1.0 and float(data["image"].max()) == 1.0


@pytest.fixture
def duke_folder(tmp_path: Path) -> Path:
    """Three patients in the TCIA layout with T1 and dynamic series; masks for two of them."""
    rng = np.random.default_rng(0)
    root = tmp_path / "Duke-Breast-Cancer-MRI"
    (tmp_path / "masks").mkdir()
    for index in range(3):
        patient = f"Breast_MRI_{index + 1:03d}"
        image, mask = make_breast_phantom(rng, shape=(32, 64, 8))
        study = root / patient / "01-01-1990-MRI BREAST BILATERAL"
        write_dicom_series(image, study / "3.000000-ax t1-1", spacing=(3.0, 3.0, 6.0), intercept=0.0, modality="MR", series_description="ax t1")
        write_dicom_series(image / 2, study / "4.000000-ax dyn pre-1", spacing=(3.0, 3.0, 6.0), intercept=0.0, modality="MR", series_description="ax dyn pre")
        if index < 2:
            write_breast_mask(mask, tmp_path / "masks" / f"{patient}.nii.gz", (3.0, 3.0, 6.0))
    return root


def test_train_autoencoder_then_diffusion_then_inference(duke_folder, tmp_path):
    preprocessing = {**PREPROCESSING, "mask_dir": str(duke_folder.parent / "masks")}
    run = run_pipeline("breast_mri", duke_folder, tmp_path, SHARED, preprocessing=preprocessing)
    assert (run["models"] / "autoencoder.pt").is_file()
    assert {"network", "ema_network"} <= set(torch.load(run["models"] / "diffusion.pt", weights_only=True))
    image = nib.load(str(run["samples"] / "sample_0000_seed0.nii.gz"))
    assert image.shape == (32, 32, 16) and np.allclose(image.header.get_zooms(), [0.66, 0.66, 3.0])
    # class-conditional, labels per patient as Duke's clinical table gives them (a patient's folder)
    labels = tmp_path / "duke_er.csv"
    labels.write_text("file,er\nBreast_MRI_001,positive\nBreast_MRI_002,negative\nBreast_MRI_003,positive\n")
    record, out = train_and_sample_conditional("breast_mri", run, duke_folder, SHARED, {"er": ["negative", "positive"]}, labels, preprocessing)
    assert [nib.load(str(out / f)).header["descrip"].item().decode() for f in record["files"]] == ["er=negative", "er=positive", "no label"]


def test_full_size_defaults_match_the_paper():
    parser, latent_shape, _ = full_size_parser("breast_mri", (256, 256, 32))
    assert latent_shape == (1, 8, 64, 64, 8)
    assert parser["batch_size"] == 40 and parser["resample_spacing"] == [0.66, 0.66, 3.0]
    assert parser["image_size"] == [256, 256, 32] and parser["network_def"]["channels"] == [64, 128, 256, 512]

"""The knee_mri bundle on data in MRNet's released layout, and its preprocessing against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import DatasetError, mrnet_datalist
from common.pipeline import SMALL_IMAGE_SIZE
from tests.bundles.bundle_runs import REPO, SMALL_SHARED, full_size_parser, run_pipeline, train_and_sample_conditional

CONFIGS = REPO / "bundles" / "knee_mri" / "configs"
SHARED = {"image_size": SMALL_IMAGE_SIZE["knee_mri"], **SMALL_SHARED}


@pytest.fixture
def mrnet_folder(tmp_path: Path) -> Path:
    """MRNet-v1.0-like release: train/ and valid/ with sagittal (and axial) exams of varying slice counts."""
    rng = np.random.default_rng(0)
    root = tmp_path / "MRNet-v1.0"
    for split, count in (("train", 3), ("valid", 1)):
        for plane in ("sagittal", "axial"):
            folder = root / split / plane
            folder.mkdir(parents=True)
            for index in range(count):
                exam = rng.integers(0, 256, size=(int(rng.integers(20, 44)), 256, 256), dtype=np.uint8)
                np.save(folder / f"{index + (1130 if split == 'valid' else 0):04d}.npy", exam)
    return root


def _preprocessing():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_autoencoder.json"))
    return parser.get_parsed_content("train#preprocessing")


@pytest.mark.parametrize("slices", [40, 24])
def test_preprocessing_centre_crops_and_pads_depth_to_32(tmp_path, slices):
    """Slice s of an exam holds the value s, plus a marker of 1000 at row 100, column 7: the output keeps rows
    and columns in place, takes the middle 32 slices (or pads 4 empty slices on each side of 24) and scales the
    cropped exam's range [min, 1000] to [-1, 1]."""
    exam = np.broadcast_to(np.arange(slices, dtype=np.float32)[:, None, None], (slices, 256, 256)).copy()
    exam[:, 100, 7] = 1000.0
    np.save(tmp_path / "exam.npy", exam)
    data = {"image": str(tmp_path / "exam.npy")}
    transforms = _preprocessing().transforms
    assert [type(t).__name__ for t in transforms[-2:]] == ["RandFlipd", "EnsureTyped"]
    for transform in transforms[:-2]:  # everything but the random flip
        data = transform(data)
    result = np.asarray(data["image"])
    assert result.shape == (1, 256, 256, 32)
    exam_slices = slice(0, 32) if slices == 40 else slice(4, 28)
    assert np.all(result[0, 100, 7, exam_slices] == 1.0)
    slice_values = np.arange(4, 36) if slices == 40 else np.concatenate([np.zeros(4), np.arange(24), np.zeros(4)])
    low = slice_values.min()
    assert np.allclose(result[0, 0, 0, :], 2 * (slice_values - low) / (1000 - low) - 1, atol=1e-5)


def test_mrnet_reader_takes_one_plane_of_both_splits(mrnet_folder):
    datalist = mrnet_datalist(mrnet_folder)
    assert [Path(d["image"]).parent.name for d in datalist] == ["sagittal"] * 4
    exam = mrnet_folder / "train" / "sagittal" / "0001.npy"
    exam.rename(exam.with_suffix(".NPY"))  # the check and NumpyReader agree: the letter case does not matter
    assert len(mrnet_datalist(mrnet_folder)) == 4 and _preprocessing()({"image": str(exam.with_suffix(".NPY"))})["image"].shape[0] == 1
    assert sorted(Path(d["image"]).parts[-3] for d in datalist) == ["train", "train", "train", "valid"]


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros((30, 128, 128), np.uint8) + np.eye(128, dtype=np.uint8), "expected an MRNet exam of shape"),
        (np.arange(256 * 256, dtype=np.float32).reshape(256, 256), "expected an MRNet exam of shape"),
        (np.full((30, 256, 256), 7, np.uint8), "constant volume"),
        (b"not numpy", r"is not a NumPy .npy file \(a file that starts with b'not nump'; text or another format"),
        (b"", r"is not a NumPy .npy file \(an empty file"),
        (b"\x93NUMPY\x01\x00v\x00{'descr'", "cannot be read as a NumPy array"),  # a truncated .npy
        (np.full((30, 256, 256), "x"), "voxels of type <U1, not real intensities"),
        ((np.zeros((30, 256, 256)) + 1j * np.eye(256)).astype(np.complex64), "voxels of type complex64, not real intensities"),
        ("npz", "holds a NpzFile, not one NumPy array"),
    ],
)
def test_bad_exams_are_named(mrnet_folder, content, message):
    bad = mrnet_folder / "train" / "sagittal" / "0999.npy"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif isinstance(content, str):  # an .npz archive saved under a .npy name
        np.savez(mrnet_folder / "exam.npz", image=np.ones((30, 256, 256), np.uint8))
        (mrnet_folder / "exam.npz").rename(bad)
    else:
        np.save(bad, content)
    with pytest.raises(DatasetError, match=message) as info:
        mrnet_datalist(mrnet_folder)
    assert "0999.npy" in str(info.value) and "1 of 5 files" in str(info.value)


def test_a_folder_that_is_not_mrnet(tmp_path):
    (tmp_path / "scans").mkdir()
    with pytest.raises(DatasetError, match="is not an MRNet folder: expected .*train/sagittal/\\*.npy"):
        mrnet_datalist(tmp_path)
    (tmp_path / "train" / "sagittal").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no .npy exams"):
        mrnet_datalist(tmp_path)


def test_train_autoencoder_then_diffusion_then_inference(mrnet_folder, tmp_path):
    run = run_pipeline("knee_mri", mrnet_folder, tmp_path, SHARED)
    assert (run["models"] / "autoencoder.pt").is_file()
    assert {"network", "ema_network"} <= set(torch.load(run["models"] / "diffusion.pt", weights_only=True))
    image = nib.load(str(run["samples"] / "sample_0000_seed0.nii.gz"))
    assert image.shape == (64, 64, 16) and np.allclose(image.header.get_zooms(), (0.6, 0.6, 3.0))
    # class-conditional, on MRNet's label files as released beside train/ and valid/ (no labels file)
    for split, cases in (("train", (0, 1, 2)), ("valid", (1130,))):
        (mrnet_folder / f"{split}-acl.csv").write_text("".join(f"{case},{case % 2}\n" for case in cases))
    record, out = train_and_sample_conditional("knee_mri", run, mrnet_folder, SHARED, {"acl": ["intact", "tear"]})
    assert [nib.load(str(out / f)).header["descrip"].item().decode() for f in record["files"]] == ["acl=intact", "acl=tear", "no label"]


def test_full_size_defaults_match_the_paper():
    parser, latent_shape, _ = full_size_parser("knee_mri", (256, 256, 32))
    assert latent_shape == (1, 8, 64, 64, 8)
    assert parser.get_parsed_content("network_def").channels == (64, 128, 256, 512)
    assert parser["batch_size"] == 40 and parser["image_size"] == [256, 256, 32]
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64, 8]

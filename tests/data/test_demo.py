from __future__ import annotations

import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResampleToMatchd

from common.data import (
    dicom_series_datalist,
    mrnet_datalist,
    nifti_datalist,
    read_series,
)
from common.data.demo import (
    brain_demo_datalist,
    breast_demo_datalist,
    chest_demo_datalist,
    knee_demo_datalist,
    make_breast_phantom,
)


def test_demo_data_passes_each_bundles_own_reader(tmp_path):
    """The demo data are in the datasets' real formats: each bundle's reader and checks accept them."""
    brains = brain_demo_datalist(tmp_path / "brain", count=3)
    assert nifti_datalist(tmp_path / "brain" / "train") == brains
    knees = knee_demo_datalist(tmp_path / "knee", count=3)
    assert mrnet_datalist(tmp_path / "knee") == knees
    chests = chest_demo_datalist(tmp_path / "chest", count=2)
    assert dicom_series_datalist(tmp_path / "chest") == chests
    assert read_series(chests[0]["image"]).num_slices == 48
    breasts = breast_demo_datalist(tmp_path / "breast", count=2)  # read by breast_datalist
    assert [(d["side"], "mask" in d) for d in breasts] == [("left", True), ("right", True), ("left", False), ("right", False)]
    # no temporary files or folders are left behind, and the data are readable by others
    assert not [p for p in tmp_path.rglob(".*")]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in tmp_path.rglob("*"))


def test_demo_data_is_the_same_when_made_again(tmp_path):
    first = knee_demo_datalist(tmp_path / "a", count=2)
    second = knee_demo_datalist(tmp_path / "b", count=2)
    for a, b in zip(first, second):
        assert np.array_equal(np.load(a["image"]), np.load(b["image"]))
    again = knee_demo_datalist(tmp_path / "a", count=2)  # existing files are kept
    assert again == first


def test_demo_breast_mask_lies_on_its_series(tmp_path):
    """The NIfTI mask is written in the series' space: resampled onto the series, it is the phantom's mask."""
    item = breast_demo_datalist(tmp_path, count=1)[0]
    load = Compose([
        LoadImaged("image", reader="PydicomReader", image_only=True), LoadImaged("mask", image_only=True),
        EnsureChannelFirstd(["image", "mask"], channel_dim="no_channel"),
        ResampleToMatchd("mask", key_dst="image", mode="nearest"),
    ])
    data = load(item)
    _, mask = make_breast_phantom(np.random.default_rng(0))  # the demo's first patient
    assert np.array_equal(np.asarray(data["mask"][0]), mask.transpose(1, 0, 2))  # the reader puts columns first
    assert float(data["image"][data["mask"] > 0].mean()) > 300  # fat and glandular tissue, not air

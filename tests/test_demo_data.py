from __future__ import annotations

import numpy as np

from common.data import mrnet_datalist, nifti_datalist
from common.demo_data import brain_demo_datalist, chest_demo_datalist, knee_demo_datalist
from common.dicom import dicom_series_datalist, read_series


def test_demo_data_passes_each_bundles_own_reader(tmp_path):
    """The demo data are in the datasets' real formats: each bundle's reader and checks accept them."""
    brains = brain_demo_datalist(tmp_path / "brain", count=3)
    assert nifti_datalist(tmp_path / "brain") == brains
    knees = knee_demo_datalist(tmp_path / "knee", count=3)
    assert mrnet_datalist(tmp_path / "knee") == knees
    chests = chest_demo_datalist(tmp_path / "chest", count=2)
    assert dicom_series_datalist(tmp_path / "chest") == chests
    assert read_series(chests[0]["image"]).num_slices == 48
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

"""DICOM series checks that need no bundle: unreadable files and slices that do not fit together."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from common.data import DatasetError, dicom_series_datalist, read_series
from common.data.demo import write_dicom_series


def test_a_corrupt_file_is_named(tmp_path):
    write_dicom_series(np.zeros((8, 8, 4)), tmp_path / "s")
    raw = (tmp_path / "s" / "0002.dcm").read_bytes()
    (tmp_path / "s" / "0002.dcm").write_bytes(raw[:100])  # truncated inside the header
    with pytest.raises(DatasetError, match=r"0002.dcm: cannot be read as DICOM"):
        read_series(tmp_path / "s")


def test_slices_of_another_size_or_without_position_are_named(tmp_path):
    write_dicom_series(np.zeros((8, 8, 4)), tmp_path / "s", series_uid="1.2.3")
    write_dicom_series(np.zeros((6, 8, 1)), tmp_path / "odd", series_uid="1.2.3")
    (tmp_path / "odd" / "0001.dcm").rename(tmp_path / "s" / "0009.dcm")
    with pytest.raises(DatasetError, match=r"0009.dcm: is 6x8, other slices of .* are 8x8"):
        read_series(tmp_path / "s")
    (tmp_path / "s" / "0009.dcm").unlink()
    header = pydicom.dcmread(str(tmp_path / "s" / "0003.dcm"))
    del header.ImagePositionPatient
    header.save_as(str(tmp_path / "s" / "0003.dcm"))
    with pytest.raises(DatasetError, match="0003.dcm: has no ImagePositionPatient"):
        dicom_series_datalist(tmp_path)

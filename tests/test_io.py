"""common.io: files written whole or not at all, with the mode the user's umask gives; ranks in one process."""

from __future__ import annotations

import errno
import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.io import (
    atomic_path,
    bundle_dir,
    current_umask,
    gather,
    is_main_process,
    output_mode,
    process_rank,
    save_nifti,
    save_torch,
    write_json,
)


@pytest.fixture
def umask_027():
    """The umask of a site that shares with its group only."""
    before = os.umask(0o027)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_get_the_mode_of_the_umask(tmp_path, umask_027):
    assert current_umask() == 0o027 and output_mode() == 0o640 and output_mode(directory=True) == 0o750
    save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")
    save_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "sample.nii.gz")
    write_json({"a": 1}, tmp_path / "metrics.json")
    with atomic_path(tmp_path / "folder", directory=True) as folder:
        (folder / "inside.txt").write_text("x")
    assert [mode(tmp_path / name) for name in ("model.pt", "sample.nii.gz", "metrics.json")] == [0o640] * 3
    assert mode(tmp_path / "folder") == 0o750 and (tmp_path / "folder" / "inside.txt").read_text() == "x"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json({"run": 1}, target)
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"run": 2, "trunc')
            raise RuntimeError("crash while writing")
    assert target.read_text() == '{\n  "run": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new_folder", directory=True) as folder:
            (folder / "half.txt").write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")

    def save_on_a_full_disk(obj, file):  # part of the file is out, then the file system is full
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(OSError, match=rf"No space left on device: writing {tmp_path / 'model.pt'} failed; nothing "
                                      "was written there"):
        save_torch({"w": torch.zeros(2)}, tmp_path / "model.pt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_temporary_name_keeps_the_suffix_writers_choose_the_format_by(tmp_path):
    path = save_nifti(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "v.nii.gz")
    with open(path, "rb") as raw:
        assert raw.read(2) == b"\x1f\x8b"  # gzip, as the name says
    image = nib.load(path)
    assert np.array_equal(np.asanyarray(image.dataobj), np.arange(8).reshape(2, 2, 2)) and image.header.get_zooms() == (2, 2, 2)
    with atomic_path(tmp_path / "exam.npy") as tmp:
        np.save(tmp, np.ones(3))  # numpy.save appends ".npy" unless the name ends with it
    assert np.array_equal(np.load(tmp_path / "exam.npy"), np.ones(3))
    with gzip.open(path) as unpacked:
        assert len(unpacked.read()) > 348  # a NIfTI header and data


def test_one_process_is_rank_zero_of_one():
    assert process_rank() == (0, 1) and is_main_process() and gather([3, 1]) == [3, 1]


def test_bundle_dir_names_the_known_bundles():
    assert bundle_dir("brain_mri").name == "brain_mri"
    with pytest.raises(ValueError, match=r"no bundle 'brian_mri' in .*known: brain_mri, brain_tumor_semantic"):
        bundle_dir("brian_mri")

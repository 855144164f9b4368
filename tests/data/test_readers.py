from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from common.data import DatasetError, check_volume, find_nifti_files, nifti_datalist


def _save(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_datalist_of_a_good_folder(brain_folder):
    datalist = nifti_datalist(brain_folder)
    assert len(datalist) == 4 and all(d["image"].endswith((".nii", ".nii.gz")) for d in datalist)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        find_nifti_files(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    path = _save(tmp_path / "a.nii", np.random.rand(4, 4, 4))
    with pytest.raises(DatasetError, match="is not a folder"):
        find_nifti_files(path)


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path} is empty"):
        find_nifti_files(tmp_path)


def test_folder_without_nifti(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "scan.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DatasetError, match="holds 2 files but no NIfTI"):
        find_nifti_files(tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"this is not an image"), "cannot be read as NIfTI"),
        (lambda p: _save(p, np.random.rand(8, 8)), "expected a 3D volume"),
        (lambda p: _save(p, np.random.rand(8, 8, 1)), "expected a 3D volume"),
        (lambda p: _save(p, np.random.rand(8, 8, 8, 3)), "expected a 3D volume"),
        (lambda p: _save(p, np.where(np.eye(8)[..., None] > 0, np.nan, 1.0) * np.ones((8, 8, 8))), "NaN or infinite"),
        (lambda p: _save(p, np.full((8, 8, 8), 3.0)), "constant volume"),
    ],
)
def test_bad_files_are_named_with_their_problem(tmp_path, make, message):
    path = tmp_path / "bad.nii"
    make(path)
    with pytest.raises(DatasetError, match=message) as info:
        check_volume(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_caught_before_training(tmp_path):
    good = _save(tmp_path / "full.nii.gz", np.random.rand(16, 16, 16))
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated.nii.gz: cannot be read"):
        check_volume(truncated)


def test_datalist_lists_every_bad_file_at_once(brain_folder):
    (brain_folder / "broken.nii").write_bytes(b"junk")
    _save(brain_folder / "flat.nii.gz", np.zeros((4, 4, 4)))
    with pytest.raises(DatasetError, match="2 of 6 files") as info:
        nifti_datalist(brain_folder)
    assert "broken.nii" in str(info.value) and "flat.nii.gz" in str(info.value)


def test_unreadable_folder(tmp_path, monkeypatch):
    # the tests may run as root, who can read anything: make the permission check fail as for another user
    monkeypatch.setattr("common.data.checks.os.access", lambda path, mode: False)
    with pytest.raises(DatasetError, match=f"dataset_dir {tmp_path} cannot be read \\(permission denied\\)"):
        find_nifti_files(tmp_path)


def test_linked_subject_folders_are_read_and_loops_and_dangling_links_are_named(tmp_path, caplog):
    shared = tmp_path / "shared_storage" / "sub-02"
    shared.mkdir(parents=True)
    _save(shared / "t1.nii.gz", np.random.rand(6, 6, 6))
    dataset = tmp_path / "dataset"
    (dataset / "sub-01").mkdir(parents=True)
    _save(dataset / "sub-01" / "t1.nii.gz", np.random.rand(6, 6, 6))
    (dataset / "sub-02").symlink_to(shared, target_is_directory=True)  # a subject folder on shared storage
    (dataset / "sub-01" / "loop").symlink_to(dataset, target_is_directory=True)
    with caplog.at_level("WARNING"):
        files = find_nifti_files(dataset)
    assert files == [str(dataset / "sub-01" / "t1.nii.gz"), str(dataset / "sub-02" / "t1.nii.gz")]
    assert f"{dataset / 'sub-01' / 'loop'} -> {dataset}" in caplog.text  # read once, and said
    (dataset / "sub-03.nii.gz").symlink_to(tmp_path / "moved" / "sub-03.nii.gz")
    (dataset / "readme.txt").symlink_to(tmp_path / "gone.txt")  # not a volume: not the reader's concern
    with pytest.raises(DatasetError, match=rf"1 of the links in {dataset} are unusable:\n  {dataset / 'sub-03.nii.gz'}: "
                                           rf"a link to {tmp_path / 'moved' / 'sub-03.nii.gz'}, which does not exist"):
        find_nifti_files(dataset)

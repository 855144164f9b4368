"""Preprocessing once (common.data.preprocessed_store, CheckedCacheDataset(cache_dir=...)): stored on disk, keyed
by the preprocessing and the files, read back identical, recomputed when a file or a setting changes; bad files
still named. tests/bundles/test_multi_gpu.py runs it on two ranks through train.json."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, Resized, ScaleIntensityd

from common.data import CheckedCacheDataset, DatasetError
from common.data.preprocessed_store import PreprocessedStore, preprocessing_key
from tests.bundles.bundle_runs import collect_log


def preprocessing(size: int = 8) -> Compose:
    return Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", [size] * 3),
        ScaleIntensityd("image", minv=-1.0, maxv=1.0), RandFlipd("image", prob=0.0, spatial_axis=0),
    ])


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(4):
        path = tmp_path / "data" / f"v{index}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(rng.uniform(0, 100, (12, 12, 12)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
        paths.append({"image": str(path)})
    return paths


def stored(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.pt"))


def test_preprocessed_once_then_read_back_identical(volumes, tmp_path):
    cache = tmp_path / "cache"
    with collect_log("common.data.dataset") as said:
        first = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache, num_workers=2)
    assert len(stored(cache)) == 4 and "preprocessed 4 of 4 volumes" in said[0]
    items = [first[i] for i in range(4)]
    assert all(item["source"] == os.path.basename(v["image"]) or item["source"].endswith(os.path.basename(v["image"]))
               for item, v in zip(items, volumes))
    with collect_log("common.data.dataset") as said:
        second = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache)
    assert "preprocessed 0 of 4 volumes" in said[0]
    again = second[2]
    assert torch.equal(again["image"].as_tensor(), items[2]["image"].as_tensor())
    assert torch.equal(again["image"].affine, items[2]["image"].affine) and tuple(again["image"].shape) == (1, 8, 8, 8)
    memory = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8])[2]  # the in-memory cache agrees
    assert torch.allclose(memory["image"].as_tensor(), again["image"].as_tensor())


def test_a_changed_file_or_setting_is_preprocessed_again(volumes, tmp_path):
    cache = tmp_path / "cache"
    CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache)
    assert preprocessing_key(preprocessing()) == preprocessing_key(preprocessing())  # built twice, the same key
    assert preprocessing_key(preprocessing(6)) != preprocessing_key(preprocessing())
    CheckedCacheDataset(volumes, preprocessing(6), image_size=[6, 6, 6], cache_dir=cache)
    assert len(stored(cache)) == 8 and len(list(cache.iterdir())) == 2  # one folder per preprocessing

    path = volumes[1]["image"]
    nib.save(nib.Nifti1Image(np.full((12, 12, 12), 5.0, np.float32) + np.arange(12.0)[:, None, None], np.eye(4)), path)
    os.utime(path, ns=(1, 1))  # a new modification time, as an edit gives
    with collect_log("common.data.dataset") as said:
        dataset = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache)
    assert "preprocessed 1 of 4 volumes" in said[0]
    assert float(dataset[1]["image"][0, :, 0, 0].std()) > 0.1  # the new content, not the stored old one


def test_bad_files_are_still_named_and_never_stored(volumes, tmp_path):
    broken = tmp_path / "data" / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        CheckedCacheDataset([*volumes, {"image": str(broken)}], preprocessing(), image_size=[8, 8, 8], cache_dir=tmp_path / "cache")
    assert len(stored(tmp_path / "cache")) == 4


def test_only_plain_values_are_kept(tmp_path):
    store = PreprocessedStore(tmp_path, preprocessing())
    with pytest.raises(TypeError, match="cannot be kept on disk"):
        store.write({"image": "x"}, {"image": torch.zeros(1), "what": object()})


def key_of(bundle: str, **overrides) -> str:
    from monai.bundle import ConfigParser

    from tests.bundles.bundle_runs import config_files

    parser = ConfigParser()
    parser.read_config(config_files(bundle, "train_autoencoder"))
    parser.update(overrides)
    return preprocessing_key(parser.get_parsed_content("train#preprocessing"))


@pytest.mark.parametrize(("bundle", "changes"), [
    ("brain_mri", [{"image_size": [64, 64, 48]}, {"intensity_percentiles": [0.5, 99.5]}]),
    ("knee_mri", [{"image_size": [256, 256, 24]}]),
    ("chest_ct", [{"crop_size": [300, 300, 300]}, {"hu_window": [-900, 900]}, {"resample_spacing": [1.5, 1.5, 1.5]}]),
])
def test_every_preprocessing_id_of_the_bundles_changes_the_key(bundle, changes):
    default = key_of(bundle)
    assert key_of(bundle) == default  # the configs built twice: the same key
    keys = [key_of(bundle, **change) for change in changes]
    assert default not in keys and len(set(keys)) == len(keys)


def test_a_lambda_is_keyed_by_what_it_computes():
    from monai.transforms import Lambdad

    def with_threshold(threshold: float) -> Compose:
        return Compose([LoadImaged("image"), Lambdad("image", lambda x: x > threshold)])

    assert preprocessing_key(with_threshold(1.0)) == preprocessing_key(with_threshold(1.0))
    assert preprocessing_key(with_threshold(1.0)) != preprocessing_key(with_threshold(2.0))


def test_a_file_rewritten_inside_a_series_folder_changes_the_item_key(tmp_path):
    from common.data.preprocessed_store import item_key

    series = tmp_path / "series"
    series.mkdir()
    for index in range(3):
        (series / f"{index}.dcm").write_bytes(b"slice")
    before = item_key({"image": str(series)})
    os.utime(series / "1.dcm", ns=(10**18, 10**18))  # rewritten in place: the folder's own time does not change
    assert item_key({"image": str(series)}) != before


def test_a_damaged_entry_is_computed_again_and_stored_again_with_the_file_named(volumes, tmp_path):
    cache = tmp_path / "cache"
    fresh = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache)[1]["image"]
    store = PreprocessedStore(cache, preprocessing())
    store.write(volumes[0], {"image": torch.full((1, 8, 8, 8), float("nan"))})  # stored values a fresh run refuses
    truncated = store.path(volumes[1])
    truncated.write_bytes(truncated.read_bytes()[:100])  # a crash or a full disk while it was written
    dataset = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=cache)
    with collect_log("common.data") as said:
        healed = [dataset[0]["image"], dataset[1]["image"]]
    assert any(f"{store.path(volumes[0])}: the preprocessing cache entry of {volumes[0]['image']} is unusable (after "
               "preprocessing 512 voxels are NaN" in line for line in said), said
    assert any(f"{truncated}: damaged preprocessing cache entry" in line and "preprocessed again" in line for line in said)
    assert torch.isfinite(healed[0]).all() and torch.equal(healed[1].as_tensor(), fresh.as_tensor())
    with collect_log("common.data") as said:  # stored again, whole: read without a word the next time
        assert torch.equal(dataset[1]["image"].as_tensor(), fresh.as_tensor()) and torch.isfinite(dataset[0]["image"]).all()
    assert said == []


def test_a_volume_rewritten_during_training_is_preprocessed_again_and_named_if_unusable(volumes, tmp_path):
    dataset = CheckedCacheDataset(volumes, preprocessing(), image_size=[8, 8, 8], cache_dir=tmp_path / "cache")
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)), volumes[0]["image"])  # its key changes
    with pytest.raises(DatasetError, match=r"v0.nii.gz: after preprocessing every voxel is 0: nothing of the volume is left"):
        dataset[0]

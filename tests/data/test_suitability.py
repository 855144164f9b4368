"""Data that does not fit a bundle's assumptions is named (common.data.suitability): brains that are not
skull-stripped or whose background is not 0, volumes dominated by a few bright outliers (and the optional
scaling by percentiles), knee exams with far fewer slices than the crop. Each check is also run through the
bundle's own preprocessing config."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Randomizable

from common.data import CheckedScaleIntensityd, WarnFewSlicesd, WarnUnlessSkullStrippedd, suitability
from tests.bundles.bundle_runs import collect_log, config_files


@pytest.fixture(autouse=True)
def fresh_warnings():
    suitability._WARNED.clear()
    yield
    suitability._WARNED.clear()


def brain(background: float = 0.0, head: bool = False, seed: int = 0) -> np.ndarray:
    """A 32^3 ellipsoid 'brain' on a background; ``head`` surrounds it with noisy non-zero tissue and air."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij"))
    inside = (grid**2).sum(0) < 0.5
    volume = np.full((32, 32, 32), background, np.float32)
    if head:
        volume = rng.uniform(1, 20, volume.shape).astype(np.float32)  # noisy air, scalp, neck
    volume[inside] = rng.uniform(200, 400, int(inside.sum()))
    return volume


def image_of(volume: np.ndarray, name: str = "/data/sub-01.nii.gz") -> MetaTensor:
    return MetaTensor(torch.as_tensor(volume)[None], meta={"filename_or_obj": name})


def warnings_for(transform, volume: np.ndarray) -> list[str]:
    with collect_log("common.data.suitability") as said:
        transform({"image": image_of(volume)})
    return said


def test_skull_stripped_brains_pass_and_heads_or_a_raised_background_are_named():
    check = WarnUnlessSkullStrippedd("image")
    assert warnings_for(check, brain()) == []
    said = warnings_for(check, brain(head=True))
    assert len(said) == 1 and said[0].startswith("/data/sub-01.nii.gz: only") and "whole head" in said[0]
    suitability._WARNED.clear()
    said = warnings_for(check, brain(background=50.0))
    assert len(said) == 1 and "background level 50" in said[0] and "subtract 50" in said[0]
    assert warnings_for(check, brain(background=50.0)) == []  # once per file
    with pytest.raises(ValueError, match="background_fraction"):
        WarnUnlessSkullStrippedd("image", background_fraction=1.5)


def test_an_outlier_dominated_volume_is_named_and_percentile_scaling_fixes_it():
    volume = brain()
    volume[0, 0, 0] = 40_000.0  # one hot voxel, 100x the brain
    assert warnings_for(CheckedScaleIntensityd("image"), brain()) == []
    said = warnings_for(CheckedScaleIntensityd("image"), volume)
    assert len(said) == 1 and "brightest 0.5% of voxels span 99%" in said[0] and "--intensity_percentiles" in said[0]

    minmax = CheckedScaleIntensityd("image")({"image": image_of(volume)})["image"]
    robust = CheckedScaleIntensityd("image", percentiles=[0.5, 99.5])({"image": image_of(volume)})["image"]
    inside = torch.as_tensor(brain() > 0)[None]
    assert float(minmax[inside].mean()) < -0.97  # the brain squeezed next to the background
    assert float(robust[inside].mean()) > 0.0 and float(robust.max()) == 1.0 and float(robust.min()) == -1.0
    with pytest.raises(ValueError, match="percentiles"):
        CheckedScaleIntensityd("image", percentiles=[99.5, 0.5])


def test_an_exam_with_far_fewer_slices_than_the_crop_is_named():
    check = WarnFewSlicesd("image", min_slices=24, target_slices=32)
    assert warnings_for(check, np.zeros((8, 8, 30), np.float32)) == []
    said = warnings_for(check, np.zeros((8, 8, 12), np.float32))
    assert len(said) == 1 and "12 slices, fewer than 24" in said[0] and "20 of them (62%" in said[0]
    with pytest.raises(ValueError, match="min_slices"):
        WarnFewSlicesd("image", min_slices=40, target_slices=32)


def deterministic_preprocessing(bundle: str, **overrides) -> Compose:
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "train_autoencoder"))
    parser.update(overrides)
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    return Compose([t for t in transforms if not isinstance(t, Randomizable)])


def test_the_brain_bundle_names_a_whole_head_and_scales_by_percentiles_when_asked(tmp_path):
    head = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(brain(head=True), np.eye(4)), str(head))
    with collect_log("common.data.suitability") as said:
        deterministic_preprocessing("brain_mri", image_size=[16, 16, 16])({"image": str(head)})
    assert len(said) == 1 and said[0].startswith(str(head)) and "skull" in said[0]

    hot = tmp_path / "hot.nii.gz"
    volume = brain()
    volume[16, 16, 16] = 40_000.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(hot))
    with collect_log("common.data.suitability") as said:
        dark = deterministic_preprocessing("brain_mri", image_size=[16, 16, 16])({"image": str(hot)})["image"]
    assert len(said) == 1 and said[0].startswith(str(hot)) and "intensity_percentiles" in said[0]
    with collect_log("common.data.suitability") as said:
        robust = deterministic_preprocessing("brain_mri", image_size=[16, 16, 16], intensity_percentiles=[0.5, 99.5])(
            {"image": str(hot)})["image"]
    assert said == []
    assert float(robust.median()) > float(dark.median()) + 0.1


def test_the_knee_bundle_names_an_exam_with_few_slices(tmp_path):
    exam = tmp_path / "train" / "sagittal" / "0001.npy"
    exam.parent.mkdir(parents=True)
    np.save(exam, np.random.default_rng(0).integers(0, 255, (10, 64, 64)).astype(np.uint8))  # 10 slices, MRNet's layout
    with collect_log("common.data.suitability") as said:
        item = deterministic_preprocessing("knee_mri", image_size=[32, 32, 32])({"image": str(exam)})
    assert tuple(item["image"].shape) == (1, 32, 32, 32)
    assert len(said) == 1 and said[0].startswith(str(exam)) and "10 slices, fewer than 24" in said[0]

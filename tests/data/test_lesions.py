"""Simulated lesions in real-anatomy brains (common.data.lesions) and the demo pairs made of them: deterministic per
seed, inside the brain, classes nested as BraTS declares them, a look per class, and pairs the Med-DDPM bundle reads."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy.ndimage import binary_dilation

from common.data import brain_lesion_demo_datalist, paired_datalist
from common.data.brain_population import deform_brain, load_template
from common.data.lesions import BRATS_LABELS, add_lesion
from tests.bundles.bundle_runs import config_files

CORE, OEDEMA, RIM = BRATS_LABELS["necrotic core"], BRATS_LABELS["oedema"], BRATS_LABELS["enhancing rim"]
NEIGHBOURS = np.zeros((3, 3, 3), bool)
NEIGHBOURS[1, 1, :] = NEIGHBOURS[1, :, 1] = NEIGHBOURS[:, 1, 1] = True


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    template, _ = load_template()
    return deform_brain(template, np.random.default_rng(0))


def test_a_seed_gives_the_same_lesion_and_seeds_give_others(brain):
    first, again = add_lesion(brain, np.random.default_rng(5)), add_lesion(brain, np.random.default_rng(5))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    lesions = [add_lesion(brain, np.random.default_rng(seed))[2] for seed in range(6)]
    assert len({lesion.centre for lesion in lesions}) == 6
    sizes = [sum(lesion.voxels.values()) for lesion in lesions]
    assert max(sizes) > 2 * min(sizes)  # sizes vary, not only positions


@pytest.mark.parametrize("seed", range(8))
def test_labels_lie_in_the_brain_and_nest_core_in_rim_in_oedema(brain, seed):
    image, labels, lesion = add_lesion(brain, np.random.default_rng(seed))
    assert set(np.unique(labels)) == {0, CORE, OEDEMA, RIM}
    assert (brain[labels > 0] > 0).all()  # every labelled voxel is brain
    core, rim = labels == CORE, labels == RIM
    assert np.isin(labels[binary_dilation(core, NEIGHBOURS)], [CORE, RIM]).all()  # the rim closes round the core
    assert np.isin(labels[binary_dilation(core | rim, NEIGHBOURS)], [CORE, RIM, OEDEMA]).all()  # the oedema round both
    assert lesion.voxels == {name: int((labels == value).sum()) for name, value in BRATS_LABELS.items()}
    away = ~binary_dilation(labels > 0, np.ones((3, 3, 3), bool), iterations=4)  # beyond the soft edge
    assert np.array_equal(image[away], brain[away])  # the rest of the brain is left as it was
    assert (image[brain == 0] == 0).all()  # the background stays 0: the bundles' foreground crop needs it


def test_each_class_looks_as_in_a_contrast_enhanced_t1(brain):
    for seed in range(4):
        image, labels, _ = add_lesion(brain, np.random.default_rng(seed))
        around = binary_dilation(labels > 0, NEIGHBOURS, iterations=4) & (labels == 0) & (brain > 0)
        tissue = image[around].mean()
        assert image[labels == RIM].mean() > tissue > image[labels == CORE].mean()  # bright rim, dark core
        assert image[labels == OEDEMA].mean() < tissue  # a darker oedema


def test_demo_pairs_are_written_once_held_out_apart_and_read_by_the_bundle(tmp_path):
    train = brain_lesion_demo_datalist(tmp_path, "train", count=2)
    heldout = brain_lesion_demo_datalist(tmp_path, "heldout", count=1)
    assert train == paired_datalist(tmp_path / "train") and len(heldout) == 1
    stamps = [tmp_path.joinpath(p).stat().st_mtime_ns for p in (train[0]["image"], train[0]["label"])]
    assert brain_lesion_demo_datalist(tmp_path, "train", count=2) == train  # not written again
    assert [tmp_path.joinpath(p).stat().st_mtime_ns for p in (train[0]["image"], train[0]["label"])] == stamps
    with pytest.raises(ValueError, match="kind must be 'train' or 'heldout'"):
        brain_lesion_demo_datalist(tmp_path, "test")
    # the same subject with a larger tumour when the radii are given
    larger = brain_lesion_demo_datalist(tmp_path / "larger", "heldout", count=1, radius_range=(10.0, 12.0))
    lesion_voxels = [int((nib.load(str(tmp_path.joinpath(p[0]["label"]))).get_fdata() > 0).sum()) for p in (heldout, larger)]
    assert lesion_voxels[1] > 1.5 * lesion_voxels[0]
    # the bundle's own preprocessing, with the label set of BraTS as its brats config declares it (one channel)
    parser = ConfigParser()
    parser.read_config(config_files("brain_tumor_semantic", "train"))
    parser.update({"num_classes": 4, "label_mapping": {"1": 1, "2": 2, "4": 3}, "foreground_class": 4,
                   "image_size": [32, 32, 32], "crop_size": [80, 96, 80], "source_spacing": [2.0, 2.0, 2.0]})
    pair = parser.get_parsed_content("train#preprocessing")(train[0])
    image, label = torch.as_tensor(pair["image"]), torch.as_tensor(pair["label"])
    assert image.shape == (1, 32, 32, 32) and label.shape == (4, 32, 32, 32)
    assert all(label[c].sum() > 0 for c in range(4))  # core, oedema, rim and the brain as its own class
    assert image[0][label[2] > 0].mean() > image[0][label[0] > 0].mean()  # the rim brighter than the core

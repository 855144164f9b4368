"""Masks edited as a user would draw them, and the per-class contrast that says whether images follow masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import label as connected_components

from common.med_ddpm.evaluation import class_contrast, class_means
from common.med_ddpm.mask_edits import edit_mask

TISSUE = 4


def _mask(lesion_centre=(10, 20, 16)) -> np.ndarray:
    """(32, 40, 32) classes: a brain ellipsoid (4) holding a nested lesion: core 1 in rim 3 in oedema 2."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (32, 40, 32)], indexing="ij")).astype(np.float32)
    brain = np.sqrt((((grid - np.array([16, 20, 16])[:, None, None, None]) / np.array([13, 17, 13])[:, None, None, None]) ** 2).sum(0)) < 1
    distance = np.sqrt(((grid - np.array(lesion_centre)[:, None, None, None]) ** 2).sum(0))
    classes = np.where(brain, TISSUE, 0).astype(np.uint8)
    classes[distance < 4] = 2
    classes[distance < 3] = 3
    classes[distance < 1.5] = 1
    return classes


def _lesion(classes: np.ndarray) -> np.ndarray:
    return (classes > 0) & (classes != TISSUE)


def _nested(classes: np.ndarray) -> bool:
    """Every core voxel's 6 neighbours are core or rim, every rim voxel's are core, rim or oedema."""
    padded = np.pad(classes, 1)
    for value, allowed in ((1, {1, 3}), (3, {1, 2, 3})):
        for axis in range(3):
            for shift in (-1, 1):
                neighbours = np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1][classes == value]
                if not np.isin(neighbours, list(allowed)).all():
                    return False
    return True


def test_a_moved_lesion_keeps_its_size_and_classes_inside_the_brain():
    classes = _mask()
    moved = edit_mask(classes, "moved", TISSUE, seed=3)
    assert [(moved == c).sum() for c in range(4)] == [(classes == c).sum() for c in range(4)]
    assert not (_lesion(moved) & _lesion(classes)).all() and (moved > 0).sum() == (classes > 0).sum()
    assert (moved[classes == 0] == 0).all() and _nested(moved)
    assert (np.abs(np.argwhere(_lesion(moved)).mean(0) - np.argwhere(_lesion(classes)).mean(0)) > 7).any()  # clear of where it was
    assert (edit_mask(classes, "moved", TISSUE, seed=3) == moved).all()  # a seed gives the same edit


def test_a_grown_lesion_is_larger_about_the_same_centre_and_an_added_one_is_a_second_lesion():
    classes = _mask()
    grown = edit_mask(classes, "grown", TISSUE, growth=1.4)
    assert all((grown == c).sum() > (classes == c).sum() for c in (1, 2, 3)) and _nested(grown)
    assert np.allclose(np.argwhere(_lesion(grown)).mean(0), np.argwhere(_lesion(classes)).mean(0), atol=0.6)
    assert (grown[classes == 0] == 0).all()
    added = edit_mask(classes, "added", TISSUE, seed=1)
    assert (added[_lesion(classes)] == classes[_lesion(classes)]).all()  # the first lesion is still there
    assert all((added == c).sum() == 2 * (classes == c).sum() for c in (1, 2, 3))
    assert connected_components(_lesion(added))[1] == 2 and _nested(added)


def test_edits_refuse_what_they_cannot_do():
    classes = _mask()
    with pytest.raises(ValueError, match="edit must be one of"):
        edit_mask(classes, "shrunk", TISSUE)
    with pytest.raises(ValueError, match="no lesion voxels"):
        edit_mask(np.where(_lesion(classes), TISSUE, classes), "moved", TISSUE)
    tiny = np.zeros((12, 12, 12), np.uint8)
    tiny[3:9, 3:9, 3:9] = TISSUE
    tiny[4:8, 4:8, 4:8] = 2
    with pytest.raises(ValueError, match="no place inside the tissue holds the lesion"):
        edit_mask(tiny, "added", TISSUE)


def test_class_contrast_is_one_for_images_that_follow_the_masks_and_zero_for_images_that_ignore_them():
    masks = torch.as_tensor(np.stack([_mask((10, 20, 16)), _mask((20, 18, 14))]).astype(np.int64))[:, None]
    levels = torch.tensor([-1.0, -0.8, 0.2, 0.9, 0.4])  # background, core, oedema, rim, brain
    real = levels[masks]
    names = ["core", "oedema", "rim", "brain"]
    real_means = class_means(real, masks, 4)
    assert real_means == pytest.approx(levels.tolist())
    same = class_contrast(class_means(real * 0.5, masks, 4), real_means, TISSUE, names)
    assert same["against"] == "brain" and set(same["per_class"]) == {"core", "oedema", "rim"}
    assert [v["ratio_to_real"] for v in same["per_class"].values()] == pytest.approx([0.5, 0.5, 0.5])
    ignoring = torch.where(masks > 0, 0.4, -1.0)  # a brain with no lesion drawn
    flat = class_contrast(class_means(ignoring, masks, 4), real_means, TISSUE, names)
    assert [v["ratio_to_real"] for v in flat["per_class"].values()] == pytest.approx([0, 0, 0], abs=1e-6)
    absent = class_contrast(class_means(real, torch.where(masks == 1, TISSUE, masks), 4), real_means, 0, names)
    assert absent["against"] == "background" and absent["per_class"]["core"]["ratio_to_real"] is None

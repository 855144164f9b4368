"""CropBreastSided: the region of interest, its split into the patient's left and right, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.data import CropBreastSided, DatasetError

SHAPE = (30, 40, 10)  # RAS: x from the patient's left to right, y from posterior to anterior


def _volume(array: np.ndarray, name: str) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array[None], dtype=torch.float32), affine=torch.eye(4), meta={"filename_or_obj": name})


def _item(side: str, mask_box=None) -> dict:
    image = np.zeros(SHAPE, np.float32)
    image[5:25, 10:30] = 500.0  # the body
    image[5:15, 20:30] += 100.0  # the patient's left anterior quarter is brighter
    item = {"image": _volume(image, "image.nii.gz"), "side": side}
    if mask_box is not None:
        mask = np.zeros(SHAPE, np.float32)
        mask[mask_box] = 1
        item["mask"] = _volume(mask, "mask.nii.gz")
    return item


@pytest.mark.parametrize("side, start_x, values", [("left", 4, 600.0), ("right", 14, 500.0)])
def test_mask_box_is_split_at_its_left_right_middle(side, start_x, values):
    box = (slice(4, 24), slice(28, 36), slice(2, 8))  # middle of x at (4 + 24) // 2 = 14
    out = CropBreastSided(["image", "mask"])(_item(side, box))
    assert out["image"].shape == out["mask"].shape == (1, 10, 8, 6)
    assert out["mask"].min() == 1  # the crop is inside the mask box
    assert np.allclose(np.asarray(out["image"].affine)[:3, 3], [start_x, 28, 2])  # where the crop starts
    assert torch.all(out["image"][:, 1:-1, :2] == values)  # the left half holds the bright quarter


@pytest.mark.parametrize("side, start_x", [("left", 5), ("right", 15)])
def test_without_a_mask_the_anterior_half_of_the_body_is_used(side, start_x):
    out = CropBreastSided(["image", "mask"], allow_missing_keys=True)(_item(side))
    # body: x 5..24, y 10..29 -> anterior half y 20..29; split at x 15
    assert out["image"].shape == (1, 10, 10, 10)
    assert np.allclose(np.asarray(out["image"].affine)[:3, 3], [start_x, 20, 0])


def test_errors_name_the_file_and_the_problem():
    crop = CropBreastSided(["image", "mask"], allow_missing_keys=True)
    with pytest.raises(DatasetError, match=r"mask.nii.gz: the breast mask is empty"):
        crop(_item("left", (slice(0, 0),)))
    item = _item("left", (slice(4, 24),))
    item["mask"] = item["mask"][:, :, :20]
    with pytest.raises(DatasetError, match=r"mask.nii.gz: breast mask of shape \(30, 20, 10\) does not match its image image.nii.gz"):
        crop(item)
    item = _item("left")
    item["image"] = _volume(np.zeros(SHAPE, np.float32), "black.nii.gz")
    with pytest.raises(DatasetError, match="black.nii.gz: no body found"):
        crop(item)
    with pytest.raises(ValueError, match="'side' must be one of"):
        crop(_item("both"))
    with pytest.raises(ValueError, match="anterior_fraction"):
        CropBreastSided("image", anterior_fraction=0.0)

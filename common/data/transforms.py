"""Dictionary transforms for preprocessing that MONAI has no single transform for."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialCrop
from monai.transforms.utils import generate_spatial_bounding_box

from .checks import DatasetError

__all__ = ["CropBreastSided", "RemapLabelsd"]

SIDES = ("left", "right")


def strided_sample(image: torch.Tensor, size: int = 1_000_000) -> torch.Tensor:
    """About ``size`` voxels of ``image`` (all of a smaller one), evenly strided, as float32: quantiles of any
    volume, quickly (``torch.quantile`` takes at most 16M values)."""
    values = torch.as_tensor(image, dtype=torch.float32).flatten()
    return values[:: max(1, values.numel() // size)]


def foreground_level(image: torch.Tensor, fraction: float) -> torch.Tensor:
    """``fraction`` of the image's 99th percentile (on about a million voxels): the body/foreground cut."""
    return fraction * torch.quantile(strided_sample(image), 0.99)


def _source(image: torch.Tensor) -> str:
    """The file an image was read from, for error messages."""
    if isinstance(image, MetaTensor):
        return str(image.meta.get("filename_or_obj", "image"))
    return "image"


class CropBreastSided(MapTransform):
    """Crop one breast out of a bilateral breast MRI: the region of interest, split at its left-right middle.

    The Medical Diffusion paper crops the Duke breast MRI volumes to the breast mask and trains on the left and
    right halves as separate volumes. The region of interest is the bounding box of the mask (``mask_key``)
    when the item has one. Without a mask (the documented fallback) it is the bounding box of the body, the
    voxels brighter than ``foreground_threshold`` times the image's 99th percentile, cut to its anterior
    ``anterior_fraction`` along the posterior-anterior axis, where the breasts are. The box is split at the
    middle of its left-right extent and the half named by the item's ``side_key`` ("left" or "right", the
    patient's) is kept.

    Expects channel-first volumes in RAS orientation (``Orientationd(axcodes="RAS")``): the first spatial axis
    runs from the patient's left to right, the second from posterior to anterior. The first of ``keys`` is the
    image; every key (the image and, when present, the mask) is cropped with the same box.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        side_key: str = "side",
        foreground_threshold: float = 0.1,
        anterior_fraction: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 < foreground_threshold < 1.0:
            raise ValueError(f"foreground_threshold must be in (0, 1), got {foreground_threshold}.")
        if not 0.0 < anterior_fraction <= 1.0:
            raise ValueError(f"anterior_fraction must be in (0, 1], got {anterior_fraction}.")
        self.mask_key = mask_key
        self.side_key = side_key
        self.foreground_threshold = foreground_threshold
        self.anterior_fraction = anterior_fraction

    def region_of_interest(self, data: Mapping[Hashable, torch.Tensor], image: torch.Tensor) -> tuple[list[int], list[int]]:
        """Start and end (exclusive) of the region of interest on each spatial axis, before the split."""
        mask = data.get(self.mask_key)
        if mask is not None:
            if mask.shape[1:] != image.shape[1:]:
                raise DatasetError(
                    f"{_source(mask)}: breast mask of shape {tuple(mask.shape[1:])} does not match its image "
                    f"{_source(image)} of shape {tuple(image.shape[1:])}; resample it onto the image first."
                )
            start, end = generate_spatial_bounding_box(mask, lambda x: x > 0)
            if any(e <= s for s, e in zip(start, end)):
                raise DatasetError(f"{_source(mask)}: the breast mask is empty (no voxel above 0).")
            return start, end
        values = torch.as_tensor(image, dtype=torch.float32)
        level = foreground_level(values, self.foreground_threshold)
        start, end = generate_spatial_bounding_box(values, lambda x: x > level)
        if any(e <= s for s, e in zip(start, end)):
            raise DatasetError(f"{_source(image)}: no body found (no voxel above {float(level):.4g}).")
        depth = max(1, round(self.anterior_fraction * (end[1] - start[1])))
        start[1] = end[1] - depth
        return start, end

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        side = d.get(self.side_key)
        if side not in SIDES:
            raise ValueError(f"{self.side_key!r} must be one of {SIDES}, got {side!r}.")
        image = d[self.keys[0]]
        start, end = self.region_of_interest(d, image)
        middle = (start[0] + end[0]) // 2
        if middle == start[0]:
            raise DatasetError(f"{_source(image)}: the region of interest is one voxel wide; nothing to split.")
        if side == "left":
            end[0] = middle
        else:
            start[0] = middle
        crop = SpatialCrop(roi_start=start, roi_end=end)
        for key in self.key_iterator(d):
            d[key] = crop(d[key])
        return d


class RemapLabelsd(MapTransform):
    """Map a label volume's values to the classes 0..``num_classes`` a mask-conditioned model is trained on.

    ``mapping`` sends each source label value to a class (values not listed and not 0 are an error naming the
    file, so a mask with an unexpected label set never trains or conditions silently). With ``foreground_class``,
    background voxels of the image brighter than ``foreground_threshold`` times its 99th percentile become that
    class: how Med-DDPM adds the head (or brain area) label to tumour-only annotations.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mapping: Mapping[int | str, int],
        num_classes: int,
        image_key: str = "image",
        foreground_class: int | None = None,
        foreground_threshold: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        targets = set(self.mapping.values()) | ({foreground_class} if foreground_class is not None else set())
        if num_classes < 1 or not targets <= set(range(1, num_classes + 1)):
            raise ValueError(f"mapping and foreground_class must send labels to classes 1..{num_classes}, got {sorted(targets)}.")
        if 0 in self.mapping:
            raise ValueError("label 0 is the background and cannot be mapped.")
        self.num_classes = num_classes
        self.image_key = image_key
        self.foreground_class = foreground_class
        self.foreground_threshold = foreground_threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            label = torch.as_tensor(label)
            values = torch.unique(label)
            unexpected = [float(v) for v in values if float(v) != 0 and (float(v) != int(v) or int(v) not in self.mapping)]
            if unexpected:
                raise DatasetError(
                    f"{_source(label)}: label values {unexpected} are not in the expected label set "
                    f"{sorted(self.mapping)} (and 0 for background); set label_mapping to map them."
                )
            classes = torch.zeros_like(label)
            for source, target in self.mapping.items():
                classes[label == source] = target
            if self.foreground_class is not None:
                image = torch.as_tensor(d[self.image_key], dtype=torch.float32)[:1]
                level = foreground_level(image, self.foreground_threshold)
                classes[(classes == 0) & (image > level)] = self.foreground_class
            d[key] = classes  # a MetaTensor keeps the label's affine and file name
        return d

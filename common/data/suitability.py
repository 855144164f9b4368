"""Does a volume fit the bundle's assumptions? Warnings that name the file and say what to do.

A file can be valid and still the wrong kind of data for a bundle, and training on it then goes on without a word:

- the brain bundle expects skull-stripped T1 with a background of exactly 0 (ADNI's preprocessed volumes, as the
  Medical Diffusion paper, Khader et al. 2023, Sec. 4.1, uses them); ``CropForegroundd`` keeps what is above 0,
  so a whole head, or a background that is not 0, leaves the brain small inside a cube of scalp and neck;
- min-max scaling maps the darkest and the brightest voxel to -1 and 1: one bright outlier makes the whole
  volume dark (``CheckedScaleIntensityd`` names such volumes, and scales by percentiles when asked);
- a knee exam with far fewer slices than the crop is padded with empty slices.

Each warning is logged once per file and process (``common.data.suitability``); training goes on, since the data
may be what the user wants.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensity, ScaleIntensityRangePercentiles

from .transforms import _source, strided_sample

__all__ = ["CheckedScaleIntensityd", "WarnFewSlicesd", "WarnUnlessSkullStrippedd"]

logger = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()


def warn_once(check: str, source: str, message: str) -> None:
    """Log ``message`` for ``source`` the first time ``check`` finds it (the cache and every epoch see a file again)."""
    if (check, source) not in _WARNED:
        _WARNED.add((check, source))
        logger.warning("%s: %s", source, message)


class WarnUnlessSkullStrippedd(MapTransform):
    """Warn when a brain volume does not look skull-stripped with a zero background.

    Skull-stripped volumes are 0 outside the brain, a large part of the field. If fewer than
    ``background_fraction`` of the voxels are exactly 0, the volume has either a background that is not 0 (most
    voxels at one low value: subtract it) or no background at all (a whole head: strip the skull first).

    Args:
        keys: the image key.
        background_fraction: the least fraction of voxels at exactly 0 a skull-stripped volume has.
        allow_missing_keys: as MONAI's.
    """

    def __init__(self, keys: KeysCollection, background_fraction: float = 0.2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < background_fraction < 1:
            raise ValueError(f"background_fraction must be in (0, 1), got {background_fraction}.")
        self.background_fraction = background_fraction

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = strided_sample(d[key])
            zero = float((values == 0).float().mean())
            if zero >= self.background_fraction:
                continue
            low = values.min()
            at_low = float((values <= low + 0.01 * (values.max() - low)).float().mean())
            if at_low >= self.background_fraction:
                message = (f"{at_low:.0%} of the voxels are at the background level {float(low):g}, not 0, so the crop "
                           "to the voxels above 0 keeps the whole field; set the background to 0 (for example subtract "
                           f"{float(low):g}), or the brain ends up small inside the cube.")
            else:
                message = (f"only {zero:.0%} of the voxels are 0: this looks like a whole head, not a skull-stripped brain. "
                           "The bundle expects skull-stripped T1 (as ADNI's); strip the skull first (for example with "
                           "SynthStrip, HD-BET or FSL BET), or the brain ends up small among scalp and neck.")
            warn_once("skull_stripped", _source(d[key]), message)
        return d


class CheckedScaleIntensityd(MapTransform):
    """Scale intensities to [``minv``, ``maxv``]: min-max (the paper's), or between two percentiles, clipped.

    With min-max scaling, a volume whose brightest ``outlier_percent`` of the voxels span more than
    ``outlier_share`` of its range is named in a warning: after scaling, everything else is squeezed into a
    small part of [minv, maxv] and looks dark. ``percentiles`` (for example ``[0.5, 99.5]``) scales robustly
    instead: those percentiles go to minv and maxv, and the voxels outside them are clipped.

    Args:
        keys: the image key.
        minv, maxv: the output range.
        percentiles: None for min-max scaling, or the lower and upper percentile (0 to 100).
        outlier_percent: the share of the brightest voxels (in percent) that the check looks at.
        outlier_share: how much of the intensity range those voxels may span before the warning.
        allow_missing_keys: as MONAI's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        minv: float = -1.0,
        maxv: float = 1.0,
        percentiles: Sequence[float] | None = None,
        outlier_percent: float = 0.5,
        outlier_share: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if percentiles is not None:
            if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
                raise ValueError(f"percentiles must be [lower, upper] with 0 <= lower < upper <= 100, got {list(percentiles)}.")
            self.scale = ScaleIntensityRangePercentiles(percentiles[0], percentiles[1], minv, maxv, clip=True)
        else:
            self.scale = ScaleIntensity(minv=minv, maxv=maxv)
        if not 0 < outlier_percent < 50 or not 0 < outlier_share < 1:
            raise ValueError(f"outlier_percent must be in (0, 50) and outlier_share in (0, 1), got {outlier_percent}, {outlier_share}.")
        self.percentiles = percentiles
        self.outlier_percent = outlier_percent
        self.outlier_share = outlier_share

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.percentiles is None:
                self.check(d[key])
            d[key] = self.scale(d[key])
        return d

    def check(self, image: torch.Tensor) -> None:
        full = torch.as_tensor(image)
        low, high = full.min().float(), full.max().float()  # of every voxel: a single hot one is the case to find
        if high <= low:
            return
        top = torch.quantile(strided_sample(image), 1 - self.outlier_percent / 100)
        share = float((high - top) / (high - low))
        if share > self.outlier_share:
            rest = 1 - share
            warn_once(
                "outliers", _source(image),
                f"its brightest {self.outlier_percent:g}% of voxels span {share:.0%} of the intensity range "
                f"({float(top):g} to {float(high):g}), so min-max scaling squeezes the other voxels into {rest:.0%} of "
                "[-1, 1] and the volume looks dark. Check the file for artefacts, or scale by percentiles: "
                "--intensity_percentiles [0.5,99.5].",
            )


class WarnFewSlicesd(MapTransform):
    """Warn when a volume has fewer than ``min_slices`` along ``axis`` (before the crop or pad to the image size),
    saying how much of the padded volume will be empty.

    Args:
        keys: the image key.
        min_slices: the fewest slices that pass without a warning.
        target_slices: the slices the preprocessing pads or crops to (for the message).
        axis: the slice axis of the channel-first image (-1: the last).
        allow_missing_keys: as MONAI's.
    """

    def __init__(self, keys: KeysCollection, min_slices: int, target_slices: int, axis: int = -1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < int(min_slices) <= int(target_slices):
            raise ValueError(f"min_slices must be in 1..target_slices ({target_slices}), got {min_slices}.")
        self.min_slices, self.target_slices, self.axis = int(min_slices), int(target_slices), axis

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            slices = int(d[key].shape[self.axis])
            if slices < self.min_slices:
                empty = self.target_slices - slices
                warn_once(
                    "few_slices", _source(d[key]),
                    f"{slices} slices, fewer than {self.min_slices}: padding to {self.target_slices} makes {empty} of them "
                    f"({empty / self.target_slices:.0%} of the volume) empty, which the model learns as anatomy. Leave "
                    "such exams out, or lower image_size's last axis.",
                )
        return d

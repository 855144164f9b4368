"""Dictionary transforms the bundles' preprocessing needs beyond MONAI's."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform, SpatialPad

__all__ = ["PadToCubed"]


class PadToCubed(MapTransform):
    """Pad each spatial axis to the longest one, centred, so a later resize keeps the aspect ratio.

    The ADNI preprocessing of the paper crops the brain's bounding box to a cube before resizing to 64^3.
    """

    def __init__(self, keys: KeysCollection, mode: str = "constant", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            spatial = d[key].shape[1:]
            d[key] = SpatialPad(spatial_size=(max(spatial),) * len(spatial), mode=self.mode)(d[key])
        return d

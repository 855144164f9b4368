"""Helpers the tests import: tiny networks and the real T1 crop that ships with nibabel (fixtures are in conftest)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib

from common.networks import VQGAN

# nibabel's real T1 brain crop (33 x 41 x 25 voxels of 2 mm), shipped with the package
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def tiny_vqgan(**kwargs) -> VQGAN:
    """A VQ-GAN small enough for unit tests (compression 2, 64 codes)."""
    settings = dict(downsample_factor=2, base_channels=4, num_embeddings=64, embedding_dim=4)
    settings.update(kwargs)
    return VQGAN(**settings)

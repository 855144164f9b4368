"""Shared fixtures: tiny networks and small NIfTI folders the tests make themselves."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.networks import VQGAN

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_vqgan(**kwargs) -> VQGAN:
    """A VQ-GAN small enough for unit tests (compression 2, 64 codes)."""
    settings = dict(downsample_factor=2, base_channels=4, num_embeddings=64, embedding_dim=4)
    settings.update(kwargs)
    return VQGAN(**settings)


@pytest.fixture
def real_t1() -> np.ndarray:
    """nibabel's real T1 brain crop (33 x 41 x 25 voxels of 2 mm)."""
    return np.asanyarray(nib.load(str(ANATOMICAL)).dataobj).astype(np.float32)


@pytest.fixture
def brain_folder(tmp_path: Path) -> Path:
    """A folder of 4 real-format NIfTI brains: nibabel's T1 crop, zero-padded as after skull stripping,
    with small intensity and shape variations, in nested folders and mixed .nii / .nii.gz."""
    data = np.asanyarray(nib.load(str(ANATOMICAL)).dataobj).astype(np.float32)
    data = np.clip(data, 0, None)
    rng = np.random.default_rng(0)
    folder = tmp_path / "brains"
    for index in range(4):
        volume = np.pad(data * rng.uniform(0.8, 1.2), ((4, 4), (3, 5), (2, 6)))
        volume = np.flip(volume, axis=0).copy() if index % 2 else volume
        sub = folder / f"sub-{index:02d}"
        sub.mkdir(parents=True)
        suffix = ".nii.gz" if index % 2 else ".nii"
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.2, 1.0])), str(sub / f"t1{suffix}"))
    return folder

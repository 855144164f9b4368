"""The brain_mri bundle trained once per test session, at 32^3 on five real-anatomy brains, and evaluated: the
brain tests, the evaluation, packaging and multi-GPU sampling tests all use this one model."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bundles.bundle_runs import (
    SMALL_DENOISER,
    SMALL_SHARED,
    config_files,
    run_bundle,
    run_pipeline,
)
from tests.conftest import ANATOMICAL

# 32^3: the 3D MS-SSIM at 3 scales needs 25 voxels per axis
SIZE_32 = {"image_size": [32, 32, 32], **SMALL_SHARED}
# the same model's overrides, as `python -m common package --overrides` takes them
SIZE_32_OVERRIDES = {**SIZE_32, **SMALL_DENOISER}
EVALUATE = config_files("brain_mri", "train_autoencoder", "inference", "evaluate")


def make_brains(folder: Path, count: int = 5) -> Path:
    """NIfTI brains made from nibabel's real T1 crop: different positions in the field of view and smooth
    intensity bias fields, so no two are the same volume after min-max scaling."""
    data = np.clip(np.asanyarray(nib.load(str(ANATOMICAL)).dataobj).astype(np.float32), 0, None)
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    for index in range(count):
        before = rng.integers(0, 9, size=3)
        volume = np.pad(data, [(int(b), int(8 - b)) for b in before])
        grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape], indexing="ij")
        bias = 1 + 0.3 * sum(rng.uniform(-1, 1) * g for g in grid)
        nib.save(nib.Nifti1Image(volume * bias, np.eye(4)), str(folder / f"brain_{index}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def brain_model(tmp_path_factory) -> dict:
    """Train both stages with train.json and sample, at 32^3 on 5 brains (2 epochs of each training, 2 samples),
    then run evaluate.json
    with 3 samples.

    Returns the folders (``brains``, ``models``, ``logs``, ``samples``, ``evaluated``) and the overrides that
    point evaluate.json at them (``overrides``)."""
    root = tmp_path_factory.mktemp("brain_model")
    brains = make_brains(root / "brains")
    run = run_pipeline("brain_mri", brains, root, SIZE_32, epochs=2, samples=2, one_command=True)  # train.json
    overrides = {
        "dataset_dir": str(brains), "ckpt_dir": str(run["models"]), "log_dir": str(run["logs"]),
        **SIZE_32, **SMALL_DENOISER, "num_workers": 0,
    }
    evaluated = root / "evaluated"
    run_bundle(EVALUATE, **overrides, output_dir=str(evaluated), num_samples=3, num_inference_steps=3)
    return {**run, "brains": brains, "evaluated": evaluated, "overrides": overrides}

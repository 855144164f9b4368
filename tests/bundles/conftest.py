"""Models trained once per test session: the brain_mri bundle at 32^3 on five real-anatomy brains, evaluated (the
brain tests, the evaluation, packaging and multi-GPU sampling tests use it), and the Med-DDPM bundle at 16^3 (its
own tests and the serving integrations use it)."""

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


# the mask-conditioned bundle at 16^3
SIZE = 16
# a small U-Net: two levels, attention at the 8^3 level and in the middle, one head each
SMALL = {
    "image_size": [SIZE] * 3, "crop_size": [SIZE] * 3, "spacing": [1.0] * 3,
    "network_def#channels": [16, 32], "network_def#attention_levels": [False, True],
    "network_def#num_head_channels": [16, 32], "network_def#norm_num_groups": 8,
}
# on the command line every id must be one of the run's configs: crop_size is training's, spacing inference's
TRAINING = {key: value for key, value in SMALL.items() if key != "spacing"}
SAMPLING = {key: value for key, value in SMALL.items() if key != "crop_size"}


def head_labels(tumour_centre: tuple[int, int, int] | None, radius: int = 3) -> np.ndarray:
    """Labels of a 16^3 head: 0 outside a ball, 1 head, 2 a tumour ball."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"))
    labels = (np.sqrt(((grid - 7.5) ** 2).sum(0)) < 7).astype(np.uint8)
    if tumour_centre is not None:
        labels[np.sqrt(((grid - np.reshape(tumour_centre, (3, 1, 1, 1))) ** 2).sum(0)) < radius] = 2
    return labels


def save_labels(path: Path, labels: np.ndarray, origin=(0.0, 0.0, 0.0), zooms=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Write a label volume as NIfTI with a diagonal affine (signed ``zooms`` flip axes); returns the affine."""
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return affine


def write_pairs(folder: Path, count: int, seed: int = 0) -> Path:
    """Image/label pairs where the label decides the intensity: background 0, head 1, tumour 2 (plus noise)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for index in range(count):
        labels = head_labels(tuple(int(v) for v in rng.integers(4, 12, size=3)))
        image = labels.astype(np.float32) + 0.05 * rng.standard_normal(labels.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "images" / f"case_{index}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / "labels" / f"case_{index}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def semantic_model(tmp_path_factory) -> dict:
    """The Med-DDPM bundle (brain_tumor_semantic) trained at 16^3 on 8 pairs whose labels decide the intensity
    (150 epochs): its tests, packaging and the serving integrations use this one model."""
    root = tmp_path_factory.mktemp("semantic")
    data = write_pairs(root / "data", 8)
    models = root / "models"
    run_bundle(
        config_files("brain_tumor_semantic", "train"), dataset_dir=str(data), ckpt_dir=str(models), log_dir=str(root / "logs"), **TRAINING,
        num_workers=0, batch_size=4, lr=0.002, save_interval=0, log_interval=50,
        **{"train#trainer#max_epochs": 150, "ema#start_iteration": 300},
    )
    return {"root": root, "data": data, "models": models}


@pytest.fixture(scope="session")
def brain_package(brain_model, tmp_path_factory) -> Path:
    """The brain model packaged (with its evaluation's metrics): the zip; its folder is next to it."""
    from common.deploy import package_bundle

    metrics = brain_model["evaluated"] / "evaluation" / "metrics.json"
    return package_bundle("brain_mri", brain_model["models"], tmp_path_factory.mktemp("dist"), SIZE_32_OVERRIDES, metrics)


@pytest.fixture(scope="session")
def semantic_package(semantic_model, tmp_path_factory) -> Path:
    """The Med-DDPM model packaged: the package's folder."""
    from common.deploy import package_bundle

    output = tmp_path_factory.mktemp("dist_semantic")
    package_bundle("brain_tumor_semantic", semantic_model["models"], output, SMALL)
    return output / "brain_tumor_semantic"

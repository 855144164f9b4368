"""Shared fixtures: small NIfTI folders the tests make themselves, and models trained once per test session (the
brain_mri bundle at 32^3 on five real-anatomy brains, evaluated and packaged; the Med-DDPM bundle at 16^3, packaged),
which the bundle, deploy and integration tests share. Helpers to import are in ``tests.helpers`` and the bundles'
``tests.bundles.bundle_runs`` and ``tests.bundles.med_ddpm_runs``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles.bundle_runs import (
    EVALUATE,
    SIZE_32,
    SIZE_32_OVERRIDES,
    SMALL_DENOISER,
    VENTRICLES,
    config_files,
    make_brains,
    run_bundle,
    run_pipeline,
)
from tests.bundles.med_ddpm_runs import SMALL, TRAINING, write_pairs
from tests.environments import Background
from tests.helpers import ANATOMICAL

if "PYTEST_XDIST_WORKER" in os.environ:
    # the tests spread over processes (``pytest -n 2``, as .ci/run runs them on 2 cores): one thread each, in this
    # process and the processes its tests start, instead of every process's threads on every core. Each process
    # trains the session's models it needs itself: ``--dist loadgroup`` with ``xdist_group`` marks would keep them
    # in one, but with pytest 9.2 and pytest-xdist 3.8 it does not group at all (pytest-xdist issue #1386)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory) -> Background:
    """The environments the collected tests install from the package index (``tests.environments``), begun in
    threads at the session's first test so that their waits on the index overlap the other tests; with the tests
    spread over processes (``pytest -n``), each begun by the process whose test first needs it."""
    made = Background(request.session.items, tmp_path_factory.mktemp, eager="PYTEST_XDIST_WORKER" not in os.environ)
    yield made
    made.close()


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


@pytest.fixture(scope="session")
def demo_brains(tmp_path_factory):
    """The brain bundle's demo data (20 training and 8 held-out real-anatomy brains, ``common.data``), made once per
    session: returns a function that copies them into a folder (a ``demo_dir``), where the bundle finds them made.
    Making them takes seconds; the making itself is tested in ``tests/data`` and, with two torchrun ranks writing
    them at once, by ``tests/bundles/test_multi_gpu.py``'s one-command run, which makes its own."""
    from common.data import brain_demo_datalist, brain_demo_heldout_datalist

    made = tmp_path_factory.mktemp("demo_brains")
    brain_demo_datalist(made)
    brain_demo_heldout_datalist(made)

    def copy_to(folder: Path) -> Path:
        shutil.copytree(made, folder, dirs_exist_ok=True)
        return folder

    return copy_to


@pytest.fixture(scope="session")
def brain_model(tmp_path_factory) -> dict:
    """Train both stages with train.json and sample, at 32^3 on 5 brains (2 epochs of each training, 2 samples),
    then run evaluate.json with 3 samples. The bundle seeds itself before it builds its networks, so the model is
    the same whichever test asks for it first (``tests/bundles/test_initial_weights.py``): its VQ-GAN's last residual
    unit starts with 2 of its 4 channels alive (measured). The tests that compare samples need a decoder that
    depends on its input, which the fixture checks.

    Returns the folders (``brains``, ``models``, ``logs``, ``samples``, ``evaluated``) and the overrides that
    point evaluate.json at them (``overrides``)."""
    root = tmp_path_factory.mktemp("brain_model")
    brains = make_brains(root / "brains")
    run = run_pipeline("brain_mri", brains, root, SIZE_32, epochs=2, samples=2, one_command=True)  # train.json
    first, second = (np.asanyarray(nib.load(str(path)).dataobj) for path in sorted(run["samples"].glob("*.nii.gz")))
    assert not np.array_equal(first, second), "the test VQ-GAN decodes every latent to one volume (a dead decoder)"
    overrides = {
        "dataset_dir": str(brains), "ckpt_dir": str(run["models"]), "log_dir": str(run["logs"]),
        **SIZE_32, **SMALL_DENOISER, "num_workers": 0,
    }
    evaluated = root / "evaluated"
    run_bundle(EVALUATE, **overrides, output_dir=str(evaluated), num_samples=3, num_inference_steps=3)
    return {**run, "brains": brains, "evaluated": evaluated, "overrides": overrides}


@pytest.fixture(scope="session")
def conditional_brain_model(brain_model, tmp_path_factory) -> dict:
    """brain_mri's diffusion stage trained class-conditional (``class_labels`` VENTRICLES, a labels file of the five
    brains) on the VQ-GAN of ``brain_model``, through the bundle's configs: its ``models`` folder and the overrides
    of its training."""
    root = tmp_path_factory.mktemp("conditional_brain_model")
    models = root / "models"
    models.mkdir()
    shutil.copy2(brain_model["models"] / "autoencoder.pt", models / "autoencoder.pt")  # the VQ-GAN trained once
    labels = root / "labels.csv"
    labels.write_text("file,ventricles\n" + "".join(f"brain_{i}.nii.gz,{'enlarged' if i % 2 else 'normal'}\n" for i in range(5)))
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(root / "logs"), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": 2, "ema#start_iteration": 2}
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, class_labels=VENTRICLES,
               labels_file=str(labels))
    return {"models": models, "training": training}


@pytest.fixture(scope="session")
def conditional_brain_package(conditional_brain_model, tmp_path_factory) -> Path:
    """The class-conditional brain model packaged: the package's folder."""
    from common.deploy import package_bundle

    output = tmp_path_factory.mktemp("dist_conditional")
    package_bundle("brain_mri", conditional_brain_model["models"], output, {**SIZE_32_OVERRIDES, "class_labels": VENTRICLES})
    return output / "brain_mri"


@pytest.fixture(scope="session")
def semantic_model(tmp_path_factory) -> dict:
    """The Med-DDPM bundle (brain_tumor_semantic) trained at 16^3 on 8 pairs whose labels decide the intensity
    (100 epochs at lr 3e-3): its tests, packaging and the serving integrations use this one model. The bundle seeds
    itself before it builds the U-Net (``tests/bundles/test_initial_weights.py``), so the model is the same whichever
    test asks for it first: each tumour is 0.25 and 0.32 brighter in its own mask's samples than in the other's
    (``test_samples_follow_their_masks`` asks for 0.2; 50 epochs gave 0.13)."""
    root = tmp_path_factory.mktemp("semantic")
    data = write_pairs(root / "data", 8)
    models = root / "models"
    run_bundle(
        config_files("brain_tumor_semantic", "train"), dataset_dir=str(data), ckpt_dir=str(models), log_dir=str(root / "logs"), **TRAINING,
        num_workers=0, batch_size=4, lr=0.003, save_interval=0, log_interval=50,
        **{"train#trainer#max_epochs": 100, "ema#start_iteration": 200},
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

"""Running a bundle's configs as a user does, in this process (``monai.bundle.run``, the function behind
``python -m monai.bundle run``) or, where a fresh process is the point, on the command line; the latent bundles'
small settings and the brains the tests train them on."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import monai.utils.misc as monai_misc
import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, create_workflow
from monai.handlers.tensorboard_handlers import TensorBoardHandler

from common.overrides import refuse_unknown_ids
from common.pipeline import SMALL_SETTINGS
from tests.helpers import ANATOMICAL

REPO = Path(__file__).resolve().parents[2]

# the small-model overrides documented in each bundle's docs/README.md (plus an image_size of the bundle's), from
# their one source; the tests log every VQ-GAN iteration
SMALL_SHARED: dict[str, Any] = SMALL_SETTINGS["shared"]
SMALL_AUTOENCODER: dict[str, Any] = {**SMALL_SETTINGS["autoencoder"], "log_interval": 1}
SMALL_DENOISER: dict[str, Any] = SMALL_SETTINGS["denoiser"]


def config_files(bundle: str, *names: str) -> list[str]:
    """Paths of a bundle's config files, as ``--config_file`` takes them."""
    return [str(REPO / "bundles" / bundle / "configs" / f"{name}.json") for name in names]


@contextmanager
def in_repository() -> Iterator[None]:
    """Work from the repository root, where the README's commands are run (``bundle_root`` defaults from it)."""
    before = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def isolated_state() -> Iterator[None]:
    """Give back what a bundle run changes for the whole process: the root logger (a run applies its
    ``logging.conf``), the random generators and MONAI's seed (``set_determinism``), and cuDNN's flags."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    seed = monai_misc._seed
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
        monai_misc._seed = seed


def run_bundle(configs: Sequence[str], **overrides: Any) -> None:
    """``python -m monai.bundle run --config_file <configs> --<id> <value> ...`` (what ``monai.bundle.run`` does:
    initialize, run, finalize), in this process, from the repository root, leaving the process as it was. A run
    that fails still closes the TensorBoard writers it opened."""
    refuse_unknown_ids(list(configs), list(overrides))  # as the configs' initialize does for the command line
    with in_repository(), isolated_state():
        workflow = create_workflow(config_file=list(configs), **overrides)
        try:
            workflow.run()
        except BaseException:
            for made in workflow.parser.ref_resolver.resolved_content.values():
                if isinstance(made, TensorBoardHandler):
                    made.close()
            raise
        workflow.finalize()


def command_line(configs: Sequence[str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The same command typed in a shell, in a fresh process; ``args`` as a user types them."""
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def checkpoints_in(folder: Path) -> list[str]:
    """The files a run left in its checkpoint folder, but for the lock it takes first (``.training.lock``)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".training.lock") if folder.is_dir() else []


def as_arguments(overrides: dict[str, Any]) -> list[str]:
    """Overrides as command-line arguments: ``{"image_size": [16, 16, 16]}`` -> ``--image_size [16, 16, 16]``."""
    return [part for key, value in overrides.items() for part in (f"--{key}", value if isinstance(value, str) else repr(value))]


def error_chain(error: BaseException) -> str:
    """Every message of an exception and its causes: a config expression's error is wrapped by MONAI's parser."""
    messages, seen = [], set()
    while error is not None and id(error) not in seen:  # a re-raised cause can link back to its wrapper
        seen.add(id(error))
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def run_pipeline(
    bundle: str, dataset_dir: Path, workdir: Path, shared: dict[str, Any], epochs: int = 1, samples: int = 1,
    preprocessing: dict[str, Any] | None = None, one_command: bool = False,
) -> dict[str, Any]:
    """A bundle's commands with the small-model overrides (``preprocessing`` ones for the two trainings only):
    train the VQ-GAN, train the diffusion model (with ``one_command``: both by ``train.json``), sample. Returns
    the folders (``models``, ``logs``, ``samples``) and what the VQ-GAN training logged (``autoencoder_log``)."""
    paths = {name: workdir / name for name in ("models", "logs", "samples")}
    common = {"ckpt_dir": str(paths["models"]), **shared}
    training = {"dataset_dir": str(dataset_dir), "log_dir": str(paths["logs"]), **common, **(preprocessing or {})}
    diffusion = {**SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": epochs, "ema#start_iteration": epochs}
    with collect_log("monai.handlers.StatsHandler") as printed:  # the loss lines a user sees
        if one_command:
            declared = set(ConfigParser.load_config_file(config_files(bundle, "train")[0]))
            forwarded = {k: v for k, v in training.items() if k in declared}
            stage_overrides = {"both": {k: v for k, v in training.items() if k not in declared},
                               "autoencoder": SMALL_AUTOENCODER, "diffusion": diffusion}
            run_bundle(config_files(bundle, "train"), **forwarded, stage_overrides=stage_overrides)
        else:
            run_bundle(config_files(bundle, "train_autoencoder"), **training, **SMALL_AUTOENCODER)
    if not one_command:
        run_bundle(config_files(bundle, "train_autoencoder", "train_diffusion"), **training, **diffusion)
    run_bundle(
        config_files(bundle, "inference"), **common, **SMALL_DENOISER, output_dir=str(paths["samples"]),
        num_samples=samples, num_inference_steps=3,
    )
    return {**paths, "autoencoder_log": "\n".join(printed)}


def train_and_sample_conditional(
    bundle: str, run: dict[str, Any], dataset_dir: Path, shared: dict[str, Any], class_labels: dict[str, list[str]],
    labels_file: Path | None = None, preprocessing: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """The diffusion stage trained again class-conditional on the VQ-GAN of ``run`` (``run_pipeline``), through
    the bundle's configs, then a sample asked for each class of the first variable and one unconditional sample
    at guidance scale 2: the samples' ``samples.json`` and their folder."""
    models = run["models"].parent / "conditional_models"
    models.mkdir()
    shutil.copy2(run["models"] / "autoencoder.pt", models / "autoencoder.pt")
    labels = {} if labels_file is None else {"labels_file": str(labels_file)}
    run_bundle(
        config_files(bundle, "train_autoencoder", "train_diffusion"), dataset_dir=str(dataset_dir), ckpt_dir=str(models),
        log_dir=str(run["logs"]), **shared, **(preprocessing or {}), **SMALL_DENOISER, num_workers=0, batch_size=2,
        **{"train#trainer#max_epochs": 1, "ema#start_iteration": 1}, class_labels=class_labels, **labels,
    )
    first = next(iter(class_labels))
    asked = [{**{name: classes[0] for name, classes in class_labels.items()}, first: value} for value in class_labels[first]] + [None]
    out = run["models"].parent / "conditional_samples"
    run_bundle(config_files(bundle, "inference"), ckpt_dir=str(models), **shared, **SMALL_DENOISER, class_labels=class_labels,
               labels=asked, guidance_scale=2.0, output_dir=str(out), num_samples=len(asked), num_inference_steps=3)
    record = json.loads((out / "samples.json").read_text())
    assert record["labels"] == asked and record["class_labels"] == class_labels and record["guidance_scale"] == 2.0
    assert torch.load(models / "diffusion.pt", weights_only=True)["model_settings"]["class_labels"] == class_labels
    return record, out


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collect_log(name: str) -> Iterator[list[str]]:
    """The messages logged to logger ``name`` (INFO and above) during the block. Pytest's ``caplog`` listens on
    the root logger, whose handlers a bundle run replaces with those of its ``logging.conf``."""
    messages: list[str] = []
    handler = _Collect(messages)
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def full_size_parser(bundle: str, image_shape: tuple[int, int, int]) -> tuple[ConfigParser, tuple[int, ...], torch.nn.Module]:
    """The merged training configs of a bundle at their defaults, the latent shape the default VQ-GAN gives for
    one image of ``image_shape``, and that VQ-GAN."""
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "train_autoencoder", "train_diffusion"))
    autoencoder = parser.get_parsed_content("autoencoder_def")
    with torch.no_grad():
        latent = autoencoder.encode(torch.zeros(1, 1, *image_shape))
    return parser, tuple(latent.shape), autoencoder


# 32^3: the 3D MS-SSIM at 3 scales needs 25 voxels per axis
SIZE_32 = {"image_size": [32, 32, 32], **SMALL_SHARED}
# the same model's overrides, as `python -m common package --overrides` takes them
SIZE_32_OVERRIDES = {**SIZE_32, **SMALL_DENOISER}
VENTRICLES = {"ventricles": ["normal", "enlarged"]}  # the class-conditional models' one labelled variable
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

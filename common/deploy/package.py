"""Packaging a trained bundle as the Model Zoo distributes one.

``package_bundle`` writes ``<name>/`` (configs with the training overrides applied, docs, LICENSE, the trained
weights, their TorchScript exports, ``large_files.yml`` with hashes, and a copy of ``common``) and the zip
``<name>_v<version>.zip`` holding it, the layout ``python -m monai.bundle download`` extracts, from a URL or a
GitHub release. The packaged bundle runs ``python -m monai.bundle run --config_file configs/inference.json`` from
its own folder, without this repository.
"""

from __future__ import annotations

import copy
import configparser
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from common.checkpoints import CheckpointError, read_checkpoint
from common.data import check_class_labels
from common.io import REPO_ROOT, atomic_path, bundle_dir, output_mode
from common.networks import NULL_LABEL
from common.pipeline import DEMO_SETTINGS, without_autoguidance

from .export import export_torchscript

__all__ = ["PackagingError", "demo_overrides", "package_bundle"]

logger = logging.getLogger(__name__)

# per kind of bundle: training checkpoint -> (the entry inference reads, the packaged file); the denoiser is
# models/model.pt in a package, the file the Model Zoo requires
# the entries inference reads, by checkpoint: the first is required; the others (the denoiser's latent scale and the
# settings it was trained with) are kept when the checkpoint has them (older ones do not)
INFERENCE_WEIGHTS = {
    "latent": {"autoencoder.pt": (("autoencoder",), "autoencoder.pt"),
               "diffusion.pt": (("ema_network", "latent_scale", "model_settings"), "model.pt")},
    "mask_conditioned": {"diffusion.pt": (("ema_network",), "model.pt")},
}
PACKAGED_CONFIG_IDS = {"inference.json": {"diffusion_path": "$@ckpt_dir + '/model.pt'"}}
VARIANT_CONFIGS = ("brats_multimodal.json",)  # overlays merged by users on top of the others


class PackagingError(RuntimeError):
    """A trained bundle that cannot be packaged: missing weights, unknown overrides."""


def _configs_with_overrides(configs: Path, overrides: Mapping[str, Any]) -> dict[str, dict]:
    """Every JSON config of a bundle with each override applied where its id exists in that file."""
    result, used = {}, set()
    for path in sorted(configs.glob("*.json")):
        parser = ConfigParser(ConfigParser.load_config_file(str(path)))
        if path.name in VARIANT_CONFIGS:  # a variant's own settings are its point: copied as they are
            result[path.name] = parser.get()
            continue
        for key, value in overrides.items():
            if key in parser:
                parser[key] = value
                used.add(key)
        result[path.name] = parser.get()
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise PackagingError(f"overrides {unknown} are not ids of any config in {configs}.")
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _kind(configs: Path) -> str:
    """"latent" (VQ-GAN + latent DDPM, Medical Diffusion) or "mask_conditioned" (pixel-space DDPM, Med-DDPM)."""
    return "latent" if (configs / "train_autoencoder.json").is_file() else "mask_conditioned"


def _inference_weights(ckpt_dir: Path, models: Path, kind: str) -> None:
    """Copy the entries inference reads (VQ-GAN, EMA denoiser, its latent scale and settings) of the final
    checkpoints, without optimizer state."""
    for name, ((key, *optional), packaged) in INFERENCE_WEIGHTS[kind].items():
        try:
            checkpoint = read_checkpoint(ckpt_dir / name)
        except CheckpointError as error:
            raise PackagingError(f"cannot package: {error}") from error
        if key not in checkpoint:
            raise PackagingError(f"cannot package: checkpoint {ckpt_dir / name} has no '{key}' entry.")
        torch.save({k: checkpoint[k] for k in (key, *optional) if k in checkpoint}, models / packaged)


def _guide_weights(ckpt_dir: Path, models: Path, inference: dict) -> None:
    """The autoguidance guide that ``inference`` names (``guide_path``; an ``@ckpt_dir`` in it is the training's
    folder), packaged as ``models/guide.pt`` (without optimizer state) and named so in ``inference``."""
    if inference.get("guide_path") is None:
        return
    parser = ConfigParser({**inference, "ckpt_dir": str(ckpt_dir)})
    path = Path(parser.get_parsed_content("guide_path"))
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as error:
        raise PackagingError(f"cannot package the guide_path the inference config names: {error}") from error
    if "ema_network" not in checkpoint:
        raise PackagingError(f"cannot package: the guide {path} has no 'ema_network' entry.")
    keys = INFERENCE_WEIGHTS["latent"]["diffusion.pt"][0]  # what the packaged denoiser keeps
    torch.save({k: checkpoint[k] for k in keys if k in checkpoint}, models / "guide.pt")
    inference["guide_path"] = "$@ckpt_dir + '/guide.pt'"


def _export_networks(bundle_dir: Path, configs: dict[str, dict]) -> None:
    """TorchScript exports of the packaged VQ-GAN and denoiser, traced at the bundle's sizes, configs embedded."""
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / "inference.json")])
    parser.update({"bundle_root": str(bundle_dir), "device": "$torch.device('cpu')"})
    embedded = {"inference": configs["inference.json"], "metadata": configs["metadata.json"]}
    models = bundle_dir / "models"
    if _kind(bundle_dir / "configs") == "latent":
        autoencoder = parser.get_parsed_content("latent_autoencoder").autoencoder
        if hasattr(autoencoder, "codebook"):  # faiss runs outside torch: a trace would freeze its answers;
            autoencoder.codebook.search_backend = "torch"  # the torch search traces as one addmm + argmin
        image = torch.rand(1, 1, *parser["image_size"]) * 2 - 1
        export_torchscript(autoencoder, (image,), models / "autoencoder.ts", embedded)
        classes = check_class_labels(parser.get_parsed_content("class_labels"))
        if classes is None:
            inputs: tuple[torch.Tensor, ...] | dict[str, torch.Tensor] = (
                torch.randn(1, *parser.get_parsed_content("latent_shape")), torch.tensor([1]))
        else:  # traced with labels: one sample asks for the first classes, one for none
            labels = torch.tensor([[0] * len(classes), [NULL_LABEL] * len(classes)])
            inputs = (torch.randn(2, *parser.get_parsed_content("latent_shape")), torch.tensor([1, 1]), labels)
        if parser.get_parsed_content("self_conditioning", default=False):  # the estimate of the step before is an input too
            names = ("x", "timesteps", "context")[: len(inputs)]
            inputs = {**dict(zip(names, inputs)), "self_condition": torch.randn_like(inputs[0])}
    else:  # the noisy image with the one-hot mask channels
        channels = parser.get_parsed_content("image_channels") + parser.get_parsed_content("num_classes")
        inputs = (torch.randn(1, channels, *parser["image_size"]), torch.tensor([1]))
    export_torchscript(parser.get_parsed_content("network"), inputs, models / "model.ts", embedded)


def _metadata(metadata: dict, inference: Any, metrics_file: Path | None) -> dict:
    """The metadata with its shapes matching the packaged networks and eval_metrics from an evaluation run."""
    parser = ConfigParser(inference)
    image_size = list(parser["image_size"])
    if "autoencoder_data_format" in metadata:  # latent: the denoiser sees the VQ-GAN's latents
        embedding = parser["autoencoder_def"]["embedding_dim"]
        latent_shape = [s // parser["autoencoder_def"]["downsample_factor"] for s in image_size]
        channels = {"inputs": embedding, "outputs": embedding}
        if parser.get_parsed_content("code_classification"):  # the denoiser gives one logit per code
            channels["outputs"] = parser.get_parsed_content("autoencoder_def#num_embeddings")
            meaning = "logit of each VQ-GAN code (code_classification): the sampler's x0 estimate is the softmax-weighted mean code"
            if parser.get_parsed_content("code_likelihood", default=False):
                meaning += (" of these logits plus each code's Gaussian log-likelihood at the noisy voxel (code_likelihood: "
                            "common.networks.code_log_likelihood)")
            metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": meaning}
        for part in ("inputs", "outputs"):
            for entry in metadata["autoencoder_data_format"][part].values():
                entry["spatial_shape"] = image_size
            for entry in metadata["network_data_format"][part].values():
                if entry["spatial_shape"]:
                    entry["spatial_shape"], entry["num_channels"] = latent_shape, channels[part]
        classes = check_class_labels(parser.get_parsed_content("class_labels"))
        if classes is not None:
            metadata["network_data_format"]["inputs"]["context"] = class_labels_input(classes)
        if parser.get_parsed_content("self_conditioning", default=False):  # model.ts takes it after the latent, timesteps (and labels)
            estimate = copy.deepcopy(metadata["network_data_format"]["inputs"]["image"])
            estimate["channel_def"] = {"0": "the clean-latent estimate of the step before (self_conditioning; zeros at the "
                                            "first step): common.sampling.SelfConditionedDenoiser"}
            metadata["network_data_format"]["inputs"]["self_condition"] = estimate
    else:  # mask-conditioned: image + mask channels in, image channels out
        channels = {"inputs": parser.get_parsed_content("image_channels") + parser.get_parsed_content("num_classes"),
                    "outputs": parser.get_parsed_content("image_channels")}
        image_channels = parser.get_parsed_content("image_channels")
        names = {
            "inputs": [f"noisy image {k}" for k in range(image_channels)] + [f"mask class {c} (one-hot)" for c in range(1, channels["inputs"] - image_channels + 1)],
            "outputs": [f"predicted noise {k}" for k in range(image_channels)],
        }
        for part in ("inputs", "outputs"):
            for entry in metadata["network_data_format"][part].values():
                if entry["spatial_shape"]:
                    entry["spatial_shape"], entry["num_channels"] = image_size, channels[part]
                    entry["channel_def"] = {str(k): name for k, name in enumerate(names[part])}
    if metrics_file is not None:
        metadata["eval_metrics"] = _eval_metrics(json.loads(Path(metrics_file).read_text()))
    return metadata


def class_labels_input(class_labels: Mapping[str, Any]) -> dict[str, Any]:
    """``network_data_format`` of a class-conditional denoiser's labels (its ``context``), named per variable as the
    Model Zoo's brain LDM bundle names its conditioning: one class index per variable, ``NULL_LABEL`` for "not
    given" (the unconditional model)."""
    return {
        "type": "tabular",
        "format": "class indices",
        "num_channels": len(class_labels),
        "spatial_shape": [],
        "dtype": "int64",
        "value_range": [NULL_LABEL, max(len(classes) for classes in class_labels.values()) - 1],
        "is_patch_data": False,
        "channel_def": {
            str(k): f"{name}: " + ", ".join(f"{i} {value}" for i, value in enumerate(classes)) + f", {NULL_LABEL} not given"
            for k, (name, classes) in enumerate(class_labels.items())
        },
    }


def _eval_metrics(metrics: dict) -> dict[str, Any]:
    """The headline numbers of an ``evaluate.json`` run for ``eval_metrics``."""
    if "segmentation_utility" in metrics:  # mask-conditioned
        utility = metrics["segmentation_utility"]
        return {
            "masks": metrics["masks"],
            "dice_per_class_trained_on_synthetic": utility["trained_on_synthetic"]["dice_per_class"],
            "dice_per_class_trained_on_real": utility["trained_on_real"]["dice_per_class"],
            "mmd_synthetic_vs_real_same_masks": metrics["mmd"]["synthetic_vs_real_same_masks"],
            "near_copies": len(metrics["memorisation_audit"]["near_copies"]),
        }
    return {
        "samples": metrics["samples"],
        "diversity_ms_ssim_synthetic": metrics["diversity_ms_ssim"]["synthetic"],
        "diversity_ms_ssim_real": metrics["diversity_ms_ssim"]["real"],
        "mmd_synthetic_vs_real": metrics["mmd"]["synthetic_vs_real"],
        "slice_consistency_ssim_synthetic": metrics["slice_consistency_ssim"]["synthetic"],
        "slice_consistency_ssim_real": metrics["slice_consistency_ssim"]["real"],
        "reconstruction_psnr_db": metrics["reconstruction"]["psnr_db"]["mean"],
        "near_copies": len(metrics["memorisation_audit"]["near_copies"]),
    }


def requirements_text() -> str:
    """``requirements.txt`` of a package: this project's install requirements (``setup.cfg``, the one list), as
    ranges, so ``pip install -r requirements.txt`` takes the newest builds for the user's Python (the metadata pins
    one tested set, ``templates/versions.json``, which installs on Python 3.10 to 3.13, for the Model Zoo's CI)."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    listed = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()]
    return "\n".join([
        "# pip install -r requirements.txt  (install torch first if you want a particular CUDA or CPU build)",
        *listed,
        "# optional: a faster codebook search on the CPU",
        "# faiss-cpu",
    ]) + "\n"


def _write_package(folder: Path, source: Path, configs: dict[str, dict], ckpt_dir: Path) -> None:
    """The package's folder: docs, LICENSE, requirements, configs, the code of ``common``, weights, exports, hashes."""
    shutil.copytree(source / "docs", folder / "docs")
    shutil.copy2(source / "LICENSE", folder / "LICENSE")
    (folder / "requirements.txt").write_text(requirements_text())
    (folder / "configs").mkdir()
    shutil.copy2(source / "configs" / "logging.conf", folder / "configs" / "logging.conf")
    (folder / "models").mkdir()
    _inference_weights(ckpt_dir, folder / "models", _kind(source / "configs"))
    _guide_weights(ckpt_dir, folder / "models", configs["inference.json"])  # names the packaged guide in the config
    for name, config in configs.items():
        (folder / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
    shutil.copytree(REPO_ROOT / "common", folder / "common", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _export_networks(folder, configs)
    entries = [
        f'  - path: "models/{p.name}"\n    url: ""\n    hash_val: "{_sha256(p)}"\n    hash_type: "sha256"'
        for p in sorted((folder / "models").iterdir())
    ]
    (folder / "large_files.yml").write_text("large_files:\n" + "\n".join(entries) + "\n")


def _replace(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``; an earlier folder there is moved aside first and removed after."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def demo_overrides(bundle: str, ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The overrides that configure a package of the models a demo wrote into ``ckpt_dir``: the demo's settings
    (``common.pipeline.DEMO_SETTINGS``), without autoguidance when no ``guide.pt`` was kept, and the model-defining
    settings the diffusion checkpoint itself was trained with (its ``model_settings``; those it lacks at the values
    of the checkpoints written before they were stored). The checkpoint's win, so the same command packages the
    conditional demo (v-prediction, class labels), a demo of an earlier release, and today's demo alike."""
    if bundle not in DEMO_SETTINGS:
        raise PackagingError(f"no demo settings for bundle '{bundle}' (have: {', '.join(DEMO_SETTINGS)}).")
    settings = DEMO_SETTINGS[bundle]
    if not (Path(ckpt_dir) / "guide.pt").is_file():  # a demo trained without a guide (the conditional one, or before 0.2.13)
        logger.warning("%s holds no guide.pt: the package samples without autoguidance.", ckpt_dir)
        settings = without_autoguidance(settings)
    checkpoint = Path(ckpt_dir) / "diffusion.pt"
    trained: dict[str, Any] = {}
    if checkpoint.is_file():  # a missing one is reported where the package reads it
        try:
            content = read_checkpoint(checkpoint)
            stored = (content.get("model_settings") if isinstance(content, dict) else None) or {}
        except CheckpointError as error:
            raise PackagingError(str(error)) from None
        before = ConfigParser.load_config_file(str(bundle_dir(bundle) / "configs" / "inference.json"))["model_settings"]
        trained = {**before.get("written_before", {}), **stored}
    return {**settings["shared"], **settings["denoiser"], **trained, **settings["inference"]}


def package_bundle(
    bundle: str,
    ckpt_dir: str | os.PathLike,
    output_dir: str | os.PathLike = "dist",
    overrides: Mapping[str, Any] | None = None,
    metrics_file: str | os.PathLike | None = None,
    demo: bool = False,
) -> Path:
    """Package a trained bundle of this repository; returns the zip's path.

    Args:
        bundle: bundle name under ``bundles/``.
        ckpt_dir: folder with the final ``autoencoder.pt`` (latent bundles) and ``diffusion.pt`` of training.
        output_dir: where ``<bundle>/`` and ``<bundle>_v<version>.zip`` are written (replacing earlier ones).
        overrides: the config overrides the models were trained with (e.g. ``{"image_size": [32, 32, 32]}``),
            written into the packaged configs so their networks fit the weights.
        metrics_file: a ``metrics.json`` of ``evaluate.json`` whose main values go into ``eval_metrics``.
        demo: the models are the demo's (``python -m common demo``): its settings are the overrides (``overrides``
            still win).
    """
    if demo:
        overrides = {**demo_overrides(bundle, ckpt_dir), **dict(overrides or {})}

    source = bundle_dir(bundle)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    configs = _configs_with_overrides(source / "configs", dict(overrides or {}))
    for name, ids in PACKAGED_CONFIG_IDS.items():
        configs[name].update(ids)
    configs["metadata.json"] = _metadata(configs["metadata.json"], configs["inference.json"], metrics_file)
    version = configs["metadata.json"]["version"]
    archive = output / f"{bundle}_v{version}.zip"
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle}.", dir=output))  # built whole before anything is replaced
    try:
        folder = staging / bundle
        _write_package(folder, source, configs, Path(ckpt_dir))
        with zipfile.ZipFile(staging / archive.name, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(folder.rglob("*")):
                zipped.write(path, path.relative_to(staging))
        os.chmod(folder, output_mode(directory=True))
        _replace(folder, output / bundle)
        with atomic_path(archive) as tmp:
            os.replace(staging / archive.name, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return archive

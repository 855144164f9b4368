"""Running a bundle's commands from the repository root, with small-model overrides, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]

# the small-model overrides documented in each bundle's docs/README.md (plus an --image_size of the bundle's)
SMALL_SHARED = [
    "--autoencoder_def#base_channels", "4",
    "--autoencoder_def#num_embeddings", "64",
]
SMALL_AUTOENCODER = [
    "--image_discriminator#channels", "4", "--volume_discriminator#channels", "4",
    "--image_discriminator#num_layers_d", "2", "--volume_discriminator#num_layers_d", "2",
    "--perceptual_weight", "0", "--adversarial_start", "2", "--num_workers", "0",
    "--train#trainer#max_epochs", "2", "--save_interval", "2", "--log_interval", "1",
]
SMALL_DENOISER = [
    "--network_def#channels", "[8,16]", "--network_def#num_heads", "2", "--network_def#head_channels", "4",
    "--network_def#spatial_attention", "[False,True]",
]


def run_bundle(config: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def run_pipeline(bundle: str, dataset_dir: Path, workdir: Path, shared: list[str], epochs: int = 1, samples: int = 1) -> dict:
    """Run a bundle's three commands with the small-model overrides; assert each succeeds.

    Returns the folders (``models``, ``logs``, ``samples``) and the autoencoder run's stdout.
    """
    configs = f"bundles/{bundle}/configs"
    paths = {name: workdir / name for name in ("models", "logs", "samples")}
    common = ["--ckpt_dir", str(paths["models"]), *shared]
    training = ["--dataset_dir", str(dataset_dir), "--log_dir", str(paths["logs"]), *common]
    autoencoder = run_bundle(f"{configs}/train_autoencoder.json", *training, *SMALL_AUTOENCODER)
    assert autoencoder.returncode == 0, autoencoder.stderr[-3000:]
    diffusion = run_bundle(
        f"['{configs}/train_autoencoder.json','{configs}/train_diffusion.json']", *training, *SMALL_DENOISER,
        "--num_workers", "0", "--batch_size", "2", "--train#trainer#max_epochs", str(epochs),
        "--ema#start_iteration", str(epochs),
    )
    assert diffusion.returncode == 0, diffusion.stderr[-3000:]
    inference = run_bundle(
        f"{configs}/inference.json", *common, *SMALL_DENOISER, "--output_dir", str(paths["samples"]),
        "--num_samples", str(samples), "--num_inference_steps", "3",
    )
    assert inference.returncode == 0, inference.stderr[-3000:]
    return {**paths, "autoencoder_stdout": autoencoder.stdout}


def full_size_parser(bundle: str, image_shape: tuple[int, int, int]) -> tuple[ConfigParser, tuple[int, ...], torch.nn.Module]:
    """The merged training configs of a bundle at their defaults, the latent shape the default VQ-GAN gives for
    one image of ``image_shape``, and that VQ-GAN."""
    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train_autoencoder.json"), str(configs / "train_diffusion.json")])
    autoencoder = parser.get_parsed_content("autoencoder_def")
    with torch.no_grad():
        latent = autoencoder.encode(torch.zeros(1, 1, *image_shape))
    return parser, tuple(latent.shape), autoencoder

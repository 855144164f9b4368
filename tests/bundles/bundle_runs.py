"""Running a bundle's commands from the repository root, with small-model overrides, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

"""A real training process killed with SIGKILL resumes from its last checkpoint with ``--resume true``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from common.checkpoints import find_latest_checkpoint, periodic_iteration
from tests.bundles.bundle_runs import (
    REPO,
    SMALL_AUTOENCODER,
    SMALL_SHARED,
    as_arguments,
    collect_log,
    config_files,
    error_chain,
    run_bundle,
)

CONFIG = "bundles/brain_mri/configs/train_autoencoder.json"


def test_a_killed_training_resumes_and_ends_at_the_same_iteration(brain_folder, tmp_path):
    models = tmp_path / "models"
    # 4 volumes, batch 2: 2 iterations per epoch, 60 epochs = 120 iterations, a checkpoint every 4
    overrides = {
        "dataset_dir": str(brain_folder), "ckpt_dir": str(models), "log_dir": str(tmp_path / "logs"),
        "image_size": [16, 16, 16], **SMALL_SHARED, **SMALL_AUTOENCODER, "train#trainer#max_epochs": 60, "save_interval": 4,
    }
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG, *as_arguments(overrides)],
            cwd=REPO, stdout=log, stderr=log,
        )
        while not (models / "autoencoder_iteration=8.pt").exists():  # however slow the machine is
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (models / "autoencoder.pt").exists()  # killed mid-training: no final checkpoint
    last = periodic_iteration(find_latest_checkpoint(models, "autoencoder"), "autoencoder")
    assert 8 <= last < 120

    with collect_log("common.handlers.resume") as logged:
        run_bundle(config_files("brain_mri", "train_autoencoder"), **overrides, resume="true")  # as typed: --resume true
    assert f"resumed from {models}/autoencoder_iteration={last}.pt at iteration {last}, epoch {last // 2}." in logged
    final = torch.load(models / "autoencoder.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 120
    # the generator's Adam state continued from the checkpoint: one step per iteration over both runs
    assert {int(state["step"]) for state in final["optimizer"]["state"].values()} == {120}

    (models / "autoencoder.pt").unlink()  # the ended stage's final file removed: named, not "raise max_epochs"
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "train_autoencoder"), **overrides, resume=True)
    assert (f"the newest 'autoencoder' checkpoint, {models}/autoencoder_iteration=120.pt, is at this run's last "
            f"iteration (120), so the run had ended, but its final checkpoint {models}/autoencoder.pt is missing") in error_chain(info.value)

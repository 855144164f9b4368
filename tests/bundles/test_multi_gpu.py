"""Multi-GPU training configs, run as Model Zoo bundles are: torchrun with 2 processes (gloo on the CPU).

The four latent bundles' multi-GPU configs are rendered from one template each (tests/bundles/test_templates.py),
so running brain_mri's covers them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.bundles.bundle_runs import (
    REPO,
    SIZE_32,
    SMALL_AUTOENCODER,
    SMALL_DENOISER,
    SMALL_SHARED,
    as_arguments,
    checkpoints_in,
    config_files,
    run_bundle,
)

CONFIGS = "bundles/brain_mri/configs"


def torchrun(configs: list[str], *args: str) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{CONFIGS}/{name}.json'" for name in configs) + "]"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", files, *args,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def dump_per_rank(network_id: str, folder: Path) -> list[str]:
    """A finalize list that saves each rank's weights of ``network_id`` to ``folder/rank<r>.pt``; escaped with a
    backslash, so train.json hands the stage's own expressions on instead of resolving them."""
    return [
        f"\\$torch.save(@{network_id}.module.state_dict(), '{folder}/rank' + str(dist.get_rank()) + '.pt')",
        "\\$@tensorboard.close()", "\\$common.io.end_process_group()",
    ]


def assert_same_on_both_ranks(folder: Path) -> dict:
    rank0 = torch.load(folder / "rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    return rank0


@pytest.mark.slow
def test_one_command_trains_both_stages_on_two_processes_with_identical_ranks(tmp_path):
    """train.json with multi_gpu_train.json: both stages under one torchrun and one process group, the preprocessing
    shared on disk (``cache_dir``); the arguments in an ``--args_file``, as MONAI's ``run`` takes them."""
    models, logs = tmp_path / "models", tmp_path / "logs"
    (tmp_path / "ae").mkdir()
    (tmp_path / "dm").mkdir()
    # the adversarial terms balanced at the decoder's last weight (its extra gradients must not upset the ranks' sync)
    autoencoder = {**SMALL_AUTOENCODER, "loss#adaptive_adversarial_weight": True,
                   "finalize": dump_per_rank("autoencoder", tmp_path / "ae")}
    # the learning rate decayed on every rank (were it decayed on rank 0 only, the ranks' weights would part)
    diffusion = {**SMALL_DENOISER, "batch_size": 2, "train#trainer#max_epochs": 2, "ema#start_iteration": 2,
                 "lr_decay#final_ratio": 0.1, "lr_decay#start_iteration": 1, "finalize": dump_per_rank("network", tmp_path / "dm")}
    arguments = {
        "config_file": [f"{CONFIGS}/train.json", f"{CONFIGS}/multi_gpu_train.json"], "demo_dir": str(tmp_path / "demo"),
        "ckpt_dir": str(models), "log_dir": str(logs), "image_size": [16, 16, 16], "num_workers": 0,
        "cache_dir": str(tmp_path / "cache"),
        "stage_overrides": {"both": SMALL_SHARED, "autoencoder": autoencoder, "diffusion": diffusion},
    }
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
               "run", "--args_file", str(tmp_path / "args.json")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    # the demo's 20 brains preprocessed once, 10 by each rank, and read again by the diffusion stage
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 20
    said = [line.split(" - INFO - ")[-1] for line in result.stdout.splitlines() if "volumes into" in line]
    assert [line.split(" into ")[0] for line in said] == ["preprocessed 20 of 20 volumes", "preprocessed 0 of 20 volumes"]

    weights = assert_same_on_both_ranks(tmp_path / "ae")
    assert "quantizer.quantizer.embedding.weight" in weights and "quantizer.quantizer.ema_cluster_size" in weights
    # 20 demo volumes, 2 ranks, batch 2: 5 iterations per epoch, 2 epochs; one set of files, written by rank 0
    assert [n for n in checkpoints_in(models) if n.startswith("autoencoder")] == [
        "autoencoder.pt", "autoencoder_iteration=10.pt", "autoencoder_iteration=8.pt"]
    assert (models / ".training.lock").read_text() == ""  # rank 0 locked the folder, and gave it up at the end
    saved = torch.load(models / "autoencoder.pt", weights_only=True)["autoencoder"]
    assert all(torch.equal(saved[key], weights[key]) for key in weights)  # saved unwrapped, as inference loads it
    # every rank's TensorBoardStatsHandler opens an event file when the config builds it, but only rank 0's
    # handler is attached and writes scalars; rank 0 also measures the demo's held-out brains and writes the
    # latents' statistics, measured on both ranks' shares (an event file each)
    written = []
    for events_file in logs.glob("events.out.tfevents*"):
        events = EventAccumulator(str(events_file))
        events.Reload()
        written.append(sorted({tag.split("/")[0] for tag in events.Tags()["scalars"]}))
    assert sorted(tags[:1] for tags in written) == [[], [], ["adversarial_balance"], ["heldout"], ["latent"], ["learning_rate"]]
    assert ["learning_rate", "train_diffusion_loss"] in written  # the denoiser's loss and its (decayed) rate, by rank 0

    weights = assert_same_on_both_ranks(tmp_path / "dm")
    saved = torch.load(models / "diffusion.pt", weights_only=True)
    assert all(torch.equal(saved["network"][key], weights[key]) for key in weights)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 1e-4)  # the bundle's lr, decayed
    assert sorted(p.name for p in models.iterdir() if p.name.startswith("diffusion")) == ["diffusion.pt"]


@pytest.mark.slow
def test_two_process_sampling_splits_the_samples_and_records_regenerable_seeds(brain_model, tmp_path):
    model = {"ckpt_dir": str(brain_model["models"]), **SIZE_32, **SMALL_DENOISER}  # the session's trained model
    out = tmp_path / "samples"
    result = torchrun(
        ["inference", "multi_gpu_inference"], *as_arguments(model), "--output_dir", str(out), "--num_samples", "5",
        "--seed", "100", "--num_inference_steps", "3",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    names = [f"sample_{i:04d}_seed{100 + i}.nii.gz" for i in range(5)]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names
    record = json.loads((out / "samples.json").read_text())
    assert record["files"] == names and record["seeds"] == list(range(100, 105))
    volumes = [np.asanyarray(nib.load(str(out / name)).dataobj) for name in names]
    assert all(not np.array_equal(volumes[0], other) for other in volumes[1:])

    # sample 3 (written by rank 1) regenerated alone, in one process, from its recorded seed
    again = tmp_path / "again"
    run_bundle(
        config_files("brain_mri", "inference"), **model, output_dir=str(again), num_samples=1, seed=103, num_inference_steps=3
    )
    assert np.array_equal(np.asanyarray(nib.load(str(again / "sample_0000_seed103.nii.gz")).dataobj), volumes[3])

"""The brain_mri bundle's three commands, run as a user runs them, and its defaults against the paper."""

from __future__ import annotations

import json
import stat

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDPMScheduler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.checkpoints import CheckpointError
from common.io import output_mode
from tests.bundles.bundle_runs import (
    REPO,
    SMALL_AUTOENCODER,
    SMALL_SHARED,
    checkpoints_in,
    command_line,
    config_files,
    error_chain,
    full_size_parser,
    run_bundle,
)

CONFIGS = REPO / "bundles" / "brain_mri" / "configs"
SHARED = {"image_size": [16, 16, 16], **SMALL_SHARED}


def test_train_autoencoder_then_diffusion_then_inference(brain_model):
    models, logs, samples = brain_model["models"], brain_model["logs"], brain_model["samples"]
    # 5 brains, batch 2 (the last one dropped), 2 epochs: 4 iterations, a checkpoint every 2
    assert {"autoencoder.pt", "autoencoder_iteration=2.pt", "autoencoder_iteration=4.pt"} <= {p.name for p in models.iterdir()}
    checkpoint = torch.load(models / "autoencoder.pt", weights_only=True)
    assert {"autoencoder", "optimizer", "image_discriminator", "volume_discriminator"} <= set(checkpoint)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"perplexity", "codebook_usage", "codebook_restarts", "l1", "image_gan", "disc_loss"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("codebook_usage")) == 4
    assert "codebook_usage" in brain_model["autoencoder_log"]
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert {"network", "ema_network", "optimizer"} <= set(checkpoint)

    files = sorted(samples.glob("*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000_seed0.nii.gz", "sample_0001_seed1.nii.gz"]
    image = nib.load(str(files[0]))
    assert image.shape == (32, 32, 32) and np.allclose(image.header.get_zooms(), 2.7)
    data = np.asanyarray(image.dataobj)
    assert np.isfinite(data).all() and data.min() >= -1 and data.max() <= 1
    assert (samples / "samples.png").is_file()
    # outputs are meant to be shared: checkpoints and samples get the mode of the user's umask, as other files do
    for path in (models / "autoencoder.pt", models / "diffusion.pt", files[0], samples / "samples.json", samples / "samples.png"):
        assert stat.S_IMODE(path.stat().st_mode) == output_mode(), path


@pytest.mark.parametrize("problem", ["missing", "empty", "no_nifti", "corrupt"])
def test_wrong_dataset_dir_stops_before_training(tmp_path, brain_folder, problem):
    folder = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "no_nifti": tmp_path / "docs"}.get(
        problem, brain_folder
    )
    if problem == "empty":
        folder.mkdir()
    if problem == "no_nifti":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    if problem == "corrupt":
        (folder / "sub-00" / "t1.nii").write_bytes(b"not nifti")
    with pytest.raises(Exception) as info:
        run_bundle(
            config_files("brain_mri", "train_autoencoder"), dataset_dir=str(folder), ckpt_dir=str(tmp_path / "models"),
            log_dir=str(tmp_path / "logs"), **SHARED, **SMALL_AUTOENCODER,
        )
    expected = {"missing": "does not exist", "empty": "is empty", "no_nifti": "no NIfTI", "corrupt": "cannot be read as NIfTI"}
    assert "DatasetError: " in error_chain(info.value) and expected[problem] in error_chain(info.value)
    assert str(folder) in error_chain(info.value)
    assert checkpoints_in(tmp_path / "models") == []  # nothing written but the lock


def test_a_negative_loss_weight_stops_before_training(tmp_path, brain_folder):
    with pytest.raises(Exception) as info:
        run_bundle(
            config_files("brain_mri", "train_autoencoder"), dataset_dir=str(brain_folder), ckpt_dir=str(tmp_path / "models"),
            log_dir=str(tmp_path / "logs"), **SHARED, **SMALL_AUTOENCODER, **{"loss#feature_matching_weight": -16.0},
        )
    assert "feature_matching_weight must be >= 0, got -16.0" in error_chain(info.value)
    assert checkpoints_in(tmp_path / "models") == []


def test_a_mistake_on_the_command_line_exits_with_the_reason(tmp_path):
    """The one command a user types, in a fresh process: a non-zero exit and the file named on stderr."""
    result = command_line(
        config_files("brain_mri", "train_autoencoder"), "--dataset_dir", str(tmp_path / "missing"),
        "--ckpt_dir", str(tmp_path / "models"),
    )
    assert result.returncode != 0
    assert f"DatasetError: dataset_dir {tmp_path / 'missing'} does not exist." in result.stderr
    assert checkpoints_in(tmp_path / "models") == []  # nothing written but the lock


def test_missing_autoencoder_weights_are_reported(tmp_path):
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "inference"), ckpt_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    assert isinstance(info.value, CheckpointError) or "CheckpointError" in error_chain(info.value)
    assert f"checkpoint {tmp_path / 'autoencoder.pt'} does not exist" in error_chain(info.value)


def test_full_size_defaults_build_and_match_the_paper():
    parser, latent_shape, autoencoder = full_size_parser("brain_mri", (64, 64, 64))
    assert latent_shape == (1, 8, 32, 32, 32)
    assert autoencoder.codebook.embedding.weight.shape == (16384, 8)
    network = parser.get_parsed_content("network_def")
    assert network.channels == (32, 64, 128, 256)
    assert parser.get_parsed_content("num_train_timesteps") == 300
    scheduler = parser.get_parsed_content("noise_scheduler")
    assert scheduler.num_train_timesteps == 300 and scheduler.clip_sample
    assert torch.allclose(scheduler.betas, DDPMScheduler(num_train_timesteps=300, schedule="cosine").betas)
    # EMA every 10 optimizer steps from step 2000, counted in iterations of 2 accumulated batches
    ema = parser.get_parsed_content("ema")
    assert parser.get_parsed_content("accumulation_steps") == 2 and (ema.every, ema.start_iteration) == (20, 4000)
    assert parser["lr"] == 1e-4 and parser["batch_size"] == 10 and ema.decay == 0.995
    parser_ae = ConfigParser()
    parser_ae.read_config(str(CONFIGS / "train_autoencoder.json"))
    assert parser_ae["lr"] == 3e-4 and parser_ae["batch_size"] == 2 and parser_ae["adversarial_start"] == 10000
    assert parser_ae["scale_equivariance_weight"] == 0.0  # the paper's objective


@pytest.mark.parametrize(
    "bundle, latent, image",
    [("brain_mri", [32, 32, 32], [64, 64, 64]), ("knee_mri", [64, 64, 8], [256, 256, 32]),
     ("breast_mri", [64, 64, 8], [256, 256, 32]), ("chest_ct", [32, 32, 32], [128, 128, 128])],
)
def test_metadata_has_the_model_zoo_keys(bundle, latent, image):
    configs = REPO / "bundles" / bundle / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "name", "task", "description", "authors", "copyright", "data_source", "data_type", "image_classes",
                "intended_use", "references", "network_data_format", "autoencoder_data_format"):
        assert meta.get(key), key
    assert "eval_metrics" in meta and "optional_packages_version" not in meta  # MONAI renames that one over the required
    assert meta["version"] in meta["changelog"]
    denoiser, autoencoder = meta["network_data_format"], meta["autoencoder_data_format"]
    assert set(denoiser["inputs"]) == {"image", "timesteps"} and set(denoiser["outputs"]) == {"pred"}
    assert denoiser["inputs"]["image"]["num_channels"] == 8 and denoiser["inputs"]["image"]["spatial_shape"] == latent
    assert denoiser["outputs"]["pred"]["spatial_shape"] == latent
    assert autoencoder["inputs"]["image"]["spatial_shape"] == autoencoder["outputs"]["pred"]["spatial_shape"] == image
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    assert parser["image_size"] == image and parser.get_parsed_content("latent_shape") == [8, *latent]


def test_demo_settings_name_existing_config_ids():
    from common.pipeline import DEMO_SETTINGS

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train_autoencoder.json"), str(CONFIGS / "train_diffusion.json")])
    inference = ConfigParser()
    inference.read_config(str(CONFIGS / "inference.json"))
    stages = DEMO_SETTINGS["brain_mri"]
    for stage, ids in stages.items():
        targets = {"inference": [inference], "denoiser": [inference, parser]}.get(stage, [parser])
        for config_id, target in ((i, t) for i in ids for t in targets):
            if stage == "autoencoder" and config_id.startswith("train#trainer"):
                continue  # replaced by train_diffusion.json in the merged parser; checked below
            assert config_id in target, f"{stage}: {config_id}"
    autoencoder_only = ConfigParser()
    autoencoder_only.read_config(str(CONFIGS / "train_autoencoder.json"))
    for config_id in list(stages["shared"]) + list(stages["autoencoder"]):
        assert config_id in autoencoder_only, config_id

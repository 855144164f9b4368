"""configs/train.json of the latent bundles: both stages in one command, continued in the stage a killed run was
in, and ids of either stage checked before anything runs. The brain_mri session model (tests/conftest.py)
is trained with it; tests/bundles/test_multi_gpu.py runs it under torchrun."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser

from common.overrides import refuse_unknown_ids
from tests.bundles.bundle_runs import (
    SMALL_AUTOENCODER,
    SMALL_DENOISER,
    SMALL_SHARED,
    checkpoints_in,
    collect_log,
    config_files,
    error_chain,
    make_brains,
    run_bundle,
)

LATENT = ["brain_mri", "knee_mri", "breast_mri", "chest_ct"]


@pytest.mark.parametrize("bundle", LATENT)
@pytest.mark.parametrize("multi_gpu", [False, True])
def test_composed_train_config_of_every_latent_bundle(bundle, multi_gpu):
    names = ["train", "multi_gpu_train"] if multi_gpu else ["train"]
    parser = ConfigParser()
    parser.read_config(config_files(bundle, *names))
    assert parser["run"][0].startswith("$common.pipeline.train_stages(")
    forwarded = {**parser["forwarded"], **parser["forwarded_by_bundle"]}
    assert {"dataset_dir", "ckpt_dir", "device", "image_size"} <= set(forwarded)
    stages = parser["stage_configs"]
    assert list(stages) == ["autoencoder", "diffusion"]
    for stage, files in stages.items():
        paths = config_files(bundle, *[name.removesuffix(".json") for name in files])
        assert (stage == "diffusion") == any("train_diffusion" in f for f in paths)
        assert any(("multi_gpu" in f) for f in paths) == multi_gpu
        stage_parser = ConfigParser()
        stage_parser.read_config(paths)
        # every forwarded id is an id of the stage, with the same default as train.json's
        refuse_unknown_ids(paths, list(forwarded))
        for config_id, reference in forwarded.items():
            assert reference == f"@{config_id}"
            assert stage_parser[config_id] == parser[config_id], (stage, config_id)
    # the diffusion stage's own ids (the recipe, timestep sampling) reach it from train.json, with the same defaults
    diffusion = ConfigParser()
    diffusion.read_config(config_files(bundle, *[name.removesuffix(".json") for name in stages["diffusion"]]))
    passed = parser["stage_overrides"]["diffusion"]
    assert {"prediction_type", "latent_scaling", "latent_target_std", "volume_norm", "timestep_sampling", "snr_gamma", "lr_decay#final_ratio",
            "lr_decay#start_iteration", "lr_decay#end_iteration", "guide_iteration"} <= set(passed)
    for config_id, reference in passed.items():
        assert reference == f"@{config_id}" and diffusion[config_id] == parser[config_id], config_id


@pytest.fixture(scope="module")
def four_brains(tmp_path_factory):
    return make_brains(tmp_path_factory.mktemp("train_json") / "brains", count=4)


def train(four_brains, models, **extra):
    """train.json at 16^3 on four brains: 2 iterations per epoch, a VQ-GAN checkpoint every 2 iterations."""
    overrides = {
        "both": SMALL_SHARED,
        "autoencoder": {**SMALL_AUTOENCODER, "save_interval": 2},
        "diffusion": {**SMALL_DENOISER, "batch_size": 2, "train#trainer#max_epochs": 1, "ema#start_iteration": 1},
    }
    run_bundle(config_files("brain_mri", "train"), dataset_dir=str(four_brains), ckpt_dir=str(models),
               log_dir=str(models.parent / "logs"), num_workers=0, stage_overrides=overrides,
               **{"image_size": [16, 16, 16], **extra})


def iteration_of(path) -> int:
    return torch.load(path, weights_only=True)["trainer"]["iteration"]


def test_a_killed_run_continues_in_the_stage_it_was_in(four_brains, tmp_path):
    models = tmp_path / "models"
    train(four_brains, models)
    assert checkpoints_in(models) == ["autoencoder.pt", "autoencoder_iteration=2.pt", "autoencoder_iteration=4.pt", "diffusion.pt"]
    assert iteration_of(models / "autoencoder.pt") == 4 and iteration_of(models / "diffusion.pt") == 2

    # killed in the diffusion stage (no diffusion checkpoint yet): the VQ-GAN is left alone, the denoiser trained
    vqgan = (models / "autoencoder.pt").read_bytes()
    (models / "diffusion.pt").unlink()
    with collect_log("common.pipeline") as said:
        train(four_brains, models, resume=True)
    assert (models / "autoencoder.pt").read_bytes() == vqgan
    assert iteration_of(models / "diffusion.pt") == 2
    assert any("the VQ-GAN stage had ended" in line and "starting the diffusion stage" in line for line in said)
    assert not any("stage 'autoencoder' starting" in line for line in said)

    # killed in the VQ-GAN stage after its checkpoint at iteration 2: it continues from there, then the diffusion stage
    for name in ("autoencoder.pt", "autoencoder_iteration=4.pt", "diffusion.pt"):
        (models / name).unlink()
    with collect_log("common.handlers.resume") as resumed:
        train(four_brains, models, resume=True)
    assert any("at iteration 2" in line for line in resumed)
    assert iteration_of(models / "autoencoder.pt") == 4 and iteration_of(models / "diffusion.pt") == 2

    # a diffusion checkpoint older than the VQ-GAN belongs to another VQ-GAN: the diffusion stage starts again
    later = (models / "diffusion.pt").stat().st_mtime_ns + 10**9
    os.utime(models / "autoencoder.pt", ns=(later, later))
    with collect_log("common.pipeline") as said:
        train(four_brains, models, resume=True)
    assert any("starting the diffusion stage" in line for line in said)
    assert (models / "diffusion.pt").stat().st_mtime_ns > later - 10**9

    # a fresh run (no resume) moves both stages' files away first, so nothing of them is ever resumed
    train(four_brains, models)
    moved = sorted(p.name.split("_")[0] for p in (models / "earlier_runs").iterdir())
    assert moved.count("autoencoder") >= 1 and moved.count("diffusion") >= 1


def test_stage_overrides_are_checked_before_anything_runs(tmp_path):
    models = tmp_path / "models"

    def refused(stage_overrides, **extra) -> str:
        with pytest.raises(Exception) as raised:
            run_bundle(config_files("brain_mri", "train"), ckpt_dir=str(models), stage_overrides=stage_overrides, **extra)
        assert not models.exists() or checkpoints_in(models) == []
        return error_chain(raised.value)

    text = refused({"both": {}, "autoencoder": {"batch_sise": 2}, "diffusion": {}})
    assert "--batch_sise (did you mean --batch_size" in text and "for the autoencoder stage" in text
    # a VQ-GAN id is not one of the diffusion stage's own ids... but the diffusion stage reads train_autoencoder.json
    # too, so only ids of neither stage are refused
    text = refused({"both": {"network_def#channels": [8, 16]}, "autoencoder": {}, "diffusion": {}})
    assert "--network_def#channels" in text and "for the autoencoder stage" in text
    assert "not 'vqgan'" in refused({"vqgan": {}}).replace("['vqgan']", "'vqgan'")
    assert "set --resume" in refused({"both": {"resume": True}, "autoencoder": {}, "diffusion": {}})


def test_a_bad_lr_decay_given_to_train_json_stops_it_before_the_vqgan_trains(tmp_path):
    # train.json passes lr_decay to its diffusion stage (the stage_overrides dict keeps its forwarding), whose
    # arguments are checked before any data are read (the dataset folder does not exist) and nothing is trained
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "train"), dataset_dir=str(tmp_path / "no_data"), ckpt_dir=str(tmp_path / "models"),
                   log_dir=str(tmp_path / "logs"), image_size=[16, 16, 16], **{"stage_overrides#both": SMALL_SHARED,
                                                                               "lr_decay#final_ratio": 1.5})
    assert "final_ratio must be in [0, 1] (1 keeps the learning rate constant), got 1.5." in error_chain(info.value)
    assert not (tmp_path / "models").exists()
    with pytest.raises(Exception) as info:  # and a guide snapshot that could never be written
        run_bundle(config_files("brain_mri", "train"), dataset_dir=str(tmp_path / "no_data"), ckpt_dir=str(tmp_path / "models"),
                   log_dir=str(tmp_path / "logs"), image_size=[16, 16, 16], **{"stage_overrides#both": SMALL_SHARED,
                                                                               "guide_iteration": 0})
    assert "the snapshot iteration must be a positive integer or None, got 0." in error_chain(info.value)
    assert not (tmp_path / "models").exists()


def test_an_image_size_the_denoiser_cannot_take_stops_train_json_before_the_vqgan_trains(tmp_path):
    # the small VQ-GAN (compression 2) takes 18^3; its 9^3 latents cannot pass the small denoiser's 2 levels. The
    # dataset folder does not exist: the size is checked before any data are read, and nothing is trained
    with pytest.raises(Exception) as info:
        train(tmp_path / "no_data", tmp_path / "models", image_size=[18, 16, 16])
    assert ("image_size [18, 16, 16] cannot be taken by the networks: each axis must be a multiple of [4, 4, 2] "
            "(VQGAN divides H, W, D by [2, 2, 2]; DepthAttentionUNet divides H, W, D by [2, 2, 1]). Nearest valid "
            "image_size: [16, 16, 16], or [20, 16, 16] not to lose voxels.") in error_chain(info.value)
    assert not (tmp_path / "models").exists()

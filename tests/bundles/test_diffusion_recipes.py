"""The diffusion recipes of the latent bundles through their own configs: the paper's (codebook-range latents,
epsilon prediction) by default, and latents scaled to unit variance with v-prediction (and GroupNorm over the whole
volume, timesteps drawn by their min-SNR weight or variance-shifted) by overrides; the scale computed from the training data and
stored with the checkpoint; every setting that defines the trained model read from one id by training and
inference, and a sampling run that disagrees with its checkpoint refused."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, create_workflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.handlers import measure_latents
from common.sampling import AutoGuidedDenoiser
from tests.bundles.bundle_runs import (
    REPO, SIZE_32, SMALL_DENOISER, config_files, error_chain, in_repository, isolated_state, run_bundle,
)

LATENT_BUNDLES = ["brain_mri", "knee_mri", "breast_mri", "chest_ct"]
MODEL_DEFINING = ("num_train_timesteps", "noise_schedule", "prediction_type", "latent_scaling", "class_labels", "volume_norm",
                  "code_classification", "self_conditioning", "code_likelihood")
# every non-default recipe setting at once: scaled latents, v-prediction, and the paper's volume-wide GroupNorm
RECIPE = {"latent_scaling": "unit_variance", "prediction_type": "v_prediction", "volume_norm": True}


def with_the_vqgan(brain_model, tmp_path):
    """A fresh ``models`` folder holding the brain bundle's VQ-GAN (trained once for the module), and a ``logs``
    path: where a diffusion training of its own writes."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy2(brain_model["models"] / "autoencoder.pt", models / "autoencoder.pt")
    return models, tmp_path / "logs"


@pytest.mark.parametrize("bundle", LATENT_BUNDLES)
def test_training_and_inference_read_the_model_defining_settings_from_one_source(bundle):
    training, inference, one_command = ConfigParser(), ConfigParser(), ConfigParser()
    training.read_config(config_files(bundle, "train_autoencoder", "train_diffusion"))
    inference.read_config(config_files(bundle, "inference"))
    one_command.read_config(config_files(bundle, "train"))
    shared = json.loads((REPO / "templates" / "latent" / "shared_ids.json").read_text())
    for key in MODEL_DEFINING:
        assert training[key] == inference[key] == shared[key], key
    assert training["model_settings"] == inference["model_settings"] == shared["model_settings"]
    assert {k: f"@{k}" for k in MODEL_DEFINING} == {k: v for k, v in shared["model_settings"].items() if k not in ("_target_", "written_before")}
    # a checkpoint written before the settings were stored was trained with the paper's recipe, the only one then
    assert shared["model_settings"]["written_before"] == {"noise_schedule": "cosine", "prediction_type": "epsilon",
                                                          "latent_scaling": "codebook_range", "class_labels": None,
                                                          "volume_norm": False, "code_classification": False,
                                                          "self_conditioning": False, "code_likelihood": False}
    assert training["noise_scheduler"]["schedule"] == "@noise_schedule"
    assert training["noise_scheduler"]["prediction_type"] == "@prediction_type"
    assert training["train#trainer"]["prepare_batch"]["scheduler"] == "@noise_scheduler"  # the target follows it
    assert "@noise_schedule, @prediction_type, @ddim_eta" in inference["noise_scheduler"]
    for key in MODEL_DEFINING[1:]:  # train.json passes them to the diffusion stage
        assert one_command["stage_overrides"]["diffusion"][key] == f"@{key}"
    assert inference["sampler"]["clip_sample_range"] == "@clip_sample_range"
    # the paper's recipe is the default, unconditional
    assert (shared["noise_schedule"], shared["prediction_type"], shared["latent_scaling"]) == ("cosine", "epsilon", "codebook_range")
    assert shared["class_labels"] is None and shared["network_def"]["class_counts"] == "$common.data.class_counts(@class_labels)"
    assert shared["volume_norm"] is False and shared["network_def"]["volume_norm"] == "@volume_norm"
    assert shared["code_classification"] is False and "@code_classification" in shared["network_def"]["out_channels"]
    assert training["train#trainer"]["prepare_batch"]["code_classification"] == "@code_classification"
    assert training["train#trainer"]["prepare_batch"]["code_voxels"] == "@code_voxels" == one_command["stage_overrides"]["diffusion"]["code_voxels"]
    assert training["inferer"]["_target_"] == "common.engines.SampledVoxelsInferer"  # hands the sampled voxels on
    assert inference["sampler"]["code_classification"] == "@code_classification"
    assert shared["self_conditioning"] is False and shared["network_def"]["self_conditioning"] == "@self_conditioning"
    assert training["inferer"]["self_conditioning"] == inference["sampler"]["self_conditioning"] == "@self_conditioning"
    assert shared["code_likelihood"] is False
    assert training["inferer"]["code_likelihood"] == inference["sampler"]["code_likelihood"] == "@code_likelihood"


def test_the_default_checkpoint_holds_the_papers_scale_and_settings(brain_model):
    checkpoint = torch.load(brain_model["models"] / "diffusion.pt", weights_only=True)
    assert set(checkpoint["latent_scale"]) == {"value"} and float(checkpoint["latent_scale"]["value"]) == 1.0
    assert checkpoint["model_settings"] == {"num_train_timesteps": 300, "noise_schedule": "cosine",
                                            "prediction_type": "epsilon", "latent_scaling": "codebook_range", "class_labels": None,
                                            "volume_norm": False, "code_classification": False, "self_conditioning": False,
                                            "code_likelihood": False}
    record = json.loads((brain_model["samples"] / "samples.json").read_text())
    assert record["prediction_type"] == "epsilon" and record["latent_scale"] == 1.0


def test_ddim_eta_adds_noise_at_every_step_through_the_bundle_config_and_is_refused_with_ddpm(brain_model, tmp_path):
    sampling = {"ckpt_dir": str(brain_model["models"]), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3}
    volumes = {}
    for eta in (0.0, 1.0):
        out = tmp_path / f"eta_{eta}"
        run_bundle(config_files("brain_mri", "inference"), **sampling, ddim_eta=eta, output_dir=str(out))
        assert json.loads((out / "samples.json").read_text())["eta"] == eta
        volumes[eta] = np.asanyarray(nib.load(str(out / "sample_0000_seed0.nii.gz")).dataobj)
    assert not np.array_equal(volumes[0.0], volumes[1.0])  # the same seed, other draws along the way
    with pytest.raises(Exception) as ddpm:
        run_bundle(config_files("brain_mri", "inference"), **{**sampling, "num_inference_steps": 300}, ddim_eta=0.5,
                   output_dir=str(tmp_path / "wrong"))
    assert "eta 0.5 is for DDIM" in error_chain(ddpm.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_particle_guidance_pushes_a_batch_apart_through_the_bundle_config_and_needs_a_batch(brain_model, tmp_path):
    sampling = {"ckpt_dir": str(brain_model["models"]), **SIZE_32, **SMALL_DENOISER, "num_samples": 2, "batch_size": 2,
                "num_inference_steps": 3}
    apart = {}
    for scale in (0.0, 2.0):
        out = tmp_path / f"scale_{scale}"
        run_bundle(config_files("brain_mri", "inference"), **sampling, particle_guidance_scale=scale, output_dir=str(out))
        assert json.loads((out / "samples.json").read_text()).get("particle_guidance", {"scale": 0.0}) == (
            {"scale": scale, "pool": 1} if scale else {"scale": 0.0})
        first, second = (np.asanyarray(nib.load(str(out / name)).dataobj) for name in ("sample_0000_seed0.nii.gz", "sample_0001_seed1.nii.gz"))
        apart[scale] = float(np.abs(first - second).mean())
    assert apart[2.0] > apart[0.0]  # the same seeds, drawn further apart
    with pytest.raises(Exception) as alone:
        run_bundle(config_files("brain_mri", "inference"), **{**sampling, "batch_size": 1}, particle_guidance_scale=1.0,
                   output_dir=str(tmp_path / "alone"))
    assert "set batch_size to 2 or more" in error_chain(alone.value)
    assert not list((tmp_path / "alone").glob("*.nii.gz"))
    with pytest.raises(Exception) as pooled:
        run_bundle(config_files("brain_mri", "inference"), **sampling, particle_guidance_scale=1.0, particle_guidance_pool=0,
                   output_dir=str(tmp_path / "pooled"))
    assert "particle_guidance_pool must be a whole number >= 1" in error_chain(pooled.value)
    assert not list((tmp_path / "pooled").glob("*.nii.gz"))


def test_unit_variance_v_prediction_and_volume_norm_train_and_sample_through_the_bundle_configs(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": 2, "ema#start_iteration": 2}
    # with timesteps drawn by their min-SNR weight (training only: sampling below does not name it)
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, **RECIPE, timestep_sampling="min_snr")

    trained = (models / "diffusion.pt").read_bytes()
    with pytest.raises(Exception) as mistyped:  # a mistyped choice stops the bundle's own training, by name
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, **RECIPE,
                   timestep_sampling="minsnr")
    assert "timestep_sampling must be one of ('uniform', 'min_snr', 'variance_shifted', 'logit_normal'), got 'minsnr'" in error_chain(mistyped.value)
    assert (models / "diffusion.pt").read_bytes() == trained  # and leaves the trained checkpoint as it was

    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["prediction_type"] == "v_prediction"
    assert checkpoint["model_settings"]["latent_scaling"] == "unit_variance"
    assert checkpoint["model_settings"]["volume_norm"] is True
    parser = ConfigParser()
    parser.read_config(config_files("brain_mri", "train_autoencoder", "train_diffusion"))
    parser.update({**training, "bundle_root": str(REPO / "bundles" / "brain_mri")})
    loader = parser.get_parsed_content("train#dataloader")
    measured = measure_latents(parser.get_parsed_content("latent_autoencoder"), loader, 32)
    # the scale is 1 / the training latents' standard deviation (measured again here on the same volumes, other flips)
    assert float(checkpoint["latent_scale"]["value"]) == pytest.approx(1 / measured["std"], rel=0.05)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert events.Scalars("latent/given_std")[0].value == pytest.approx(1.0, rel=1e-3)

    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3}
    run_bundle(config_files("brain_mri", "inference"), **sampling, **RECIPE, output_dir=str(tmp_path / "samples"))
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["prediction_type"] == "v_prediction"
    assert record["latent_scale"] == pytest.approx(float(checkpoint["latent_scale"]["value"]))

    # sampling with the paper's settings from this checkpoint would give wrong volumes silently: refused, with the id
    with pytest.raises(Exception) as mismatch:
        run_bundle(config_files("brain_mri", "inference"), **sampling, latent_scaling="unit_variance", volume_norm=True,
                   output_dir=str(tmp_path / "wrong"))
    assert "trained with prediction_type 'v_prediction' (configured: 'epsilon'); set --prediction_type" in error_chain(mismatch.value)
    with pytest.raises(Exception) as mismatch:
        run_bundle(config_files("brain_mri", "inference"), **sampling, prediction_type="v_prediction", volume_norm=True,
                   output_dir=str(tmp_path / "wrong"))
    assert "trained with latent_scaling 'unit_variance' (configured: 'codebook_range'); set --latent_scaling" in error_chain(mismatch.value)
    with pytest.raises(Exception) as mismatch:  # same weights either way, so only the stored setting can tell
        run_bundle(config_files("brain_mri", "inference"), **sampling, **{**RECIPE, "volume_norm": False},
                   output_dir=str(tmp_path / "wrong"))
    assert "trained with volume_norm True (configured: False); set --volume_norm" in error_chain(mismatch.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_a_target_standard_deviation_scales_the_latents_through_the_bundle_configs_and_sampling_needs_none(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": 1,
                "latent_scaling": "unit_variance", "prediction_type": "v_prediction"}
    diffusion = config_files("brain_mri", "train_autoencoder", "train_diffusion")
    with pytest.raises(Exception) as wrong:  # refused by name before anything is written
        run_bundle(diffusion, **training, latent_target_std=0)
    assert "target standard deviation must be a positive number, got 0" in error_chain(wrong.value)
    with pytest.raises(Exception) as ignored:  # the paper's scaling would ignore it: refused instead
        run_bundle(diffusion, **{**training, "latent_scaling": "codebook_range"}, latent_target_std=0.5)
    assert "scales latents only with latent_scaling 'unit_variance'" in error_chain(ignored.value)
    assert not (models / "diffusion.pt").exists()

    run_bundle(diffusion, **training, latent_target_std=0.5)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert events.Scalars("latent/given_std")[0].value == pytest.approx(0.5, rel=1e-3)
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert float(checkpoint["latent_scale"]["value"]) == pytest.approx(0.5 / events.Scalars("latent/std")[0].value, rel=1e-3)

    # inference reads the factor from the checkpoint: it is not told the target
    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3,
                "latent_scaling": "unit_variance", "prediction_type": "v_prediction"}
    run_bundle(config_files("brain_mri", "inference"), **sampling, output_dir=str(tmp_path / "samples"))
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["latent_scale"] == pytest.approx(float(checkpoint["latent_scale"]["value"]))
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()


def test_rectified_flow_trains_and_samples_through_the_bundle_configs_and_refuses_what_it_cannot_use(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": 1, "ema#start_iteration": 1,
                "noise_schedule": "rectified_flow", "latent_scaling": "unit_variance"}
    diffusion = config_files("brain_mri", "train_autoencoder", "train_diffusion")
    with pytest.raises(Exception) as epsilon:  # the paper's epsilon target has no stable clean latent near pure noise
        run_bundle(diffusion, **training)
    assert "rectified flow learns the velocity ('v_prediction') or the clean latent ('sample'), not 'epsilon'" in error_chain(epsilon.value)
    with pytest.raises(Exception) as min_snr:  # its density reads a DDPM schedule's noise levels
        run_bundle(diffusion, **training, prediction_type="v_prediction", timestep_sampling="min_snr")
    assert "with noise_schedule 'rectified_flow' choose one of ('uniform', 'logit_normal')" in error_chain(min_snr.value)
    with pytest.raises(Exception) as ddpm:  # and the logit-normal density is rectified flow's only
        run_bundle(diffusion, **{**training, "noise_schedule": "cosine"}, prediction_type="v_prediction", timestep_sampling="logit_normal")
    assert "timestep_sampling 'logit_normal' is for noise_schedule 'rectified_flow'" in error_chain(ddpm.value)
    assert not (models / "diffusion.pt").exists()

    flow = {"noise_schedule": "rectified_flow", "prediction_type": "v_prediction", "latent_scaling": "unit_variance"}
    run_bundle(diffusion, **{**training, **flow}, timestep_sampling="logit_normal")
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["noise_schedule"] == "rectified_flow"
    assert checkpoint["model_settings"]["prediction_type"] == "v_prediction"

    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 4}
    run_bundle(config_files("brain_mri", "inference"), **sampling, **flow, output_dir=str(tmp_path / "samples"))
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["num_inference_steps"] == 4 and record["eta"] == 0.0 and record["prediction_type"] == "v_prediction"

    with pytest.raises(Exception) as mismatch:  # sampled as a DDPM model: refused by the stored schedule
        run_bundle(config_files("brain_mri", "inference"), **sampling, **{**flow, "noise_schedule": "cosine"},
                   output_dir=str(tmp_path / "wrong"))
    assert "trained with noise_schedule 'rectified_flow' (configured: 'cosine'); set --noise_schedule" in error_chain(mismatch.value)
    with pytest.raises(Exception) as eta:  # Euler steps add no noise: a stochastic eta is refused, not ignored
        run_bundle(config_files("brain_mri", "inference"), **sampling, **flow, ddim_eta=0.5, output_dir=str(tmp_path / "wrong"))
    assert "rectified flow samples deterministically (eta 0)" in error_chain(eta.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_a_patched_denoiser_with_depth_convolutions_and_position_channels_trains_samples_and_refuses_other_networks(
    brain_model, tmp_path
):
    # the three network options that add or reshape weights, trained once together through the bundle's configs to
    # keep the suite short, with the variance_shifted timestep density (training only; here it is only run, its draws
    # are checked in tests/engines/test_timestep_sampling.py)
    models, logs = with_the_vqgan(brain_model, tmp_path)
    # the 16^3 latent of 32^3 brains as 64 channels at 8^3, and a convolution along 3 slices in every residual block
    # and every voxel's coordinates as three more input channels
    patched = {**SMALL_DENOISER, "network_def#patch_size": 2, "network_def#depth_kernel_size": 3,
               "network_def#position_channels": True}
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), dataset_dir=str(brain_model["brains"]),
               ckpt_dir=str(models), log_dir=str(logs), **SIZE_32, **patched, num_workers=0, batch_size=2,
               timestep_sampling="variance_shifted", **{"train#trainer#max_epochs": 1, "ema#start_iteration": 1})
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    weights = checkpoint["ema_network"]
    assert weights["init_conv.weight"].shape[1] == 8 * 8 + 3 and weights["final_conv.weight"].shape[0] == 8 * 8
    depth_taps = {k: w for k, w in weights.items() if k.endswith("depth_conv.proj.weight")}
    assert depth_taps and all(w.shape[0] == 3 * w.shape[1] for w in depth_taps.values())
    # the trained network's (the EMA takes a step only every 10 iterations) left their zero start
    assert all(checkpoint["network"][k].abs().sum() > 0 for k in depth_taps)

    sampling = {"ckpt_dir": str(models), **SIZE_32, "num_samples": 1, "num_inference_steps": 3}
    run_bundle(config_files("brain_mri", "inference"), **sampling, **patched, output_dir=str(tmp_path / "samples"))
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()
    with pytest.raises(Exception) as mismatch:  # the paper's unpatched network cannot hold these weights: refused by name
        run_bundle(config_files("brain_mri", "inference"), **sampling, **SMALL_DENOISER, output_dir=str(tmp_path / "wrong"))
    assert "does not fit DepthAttentionUNet" in error_chain(mismatch.value) and "init_conv.weight" in error_chain(mismatch.value)
    with pytest.raises(Exception) as mismatch:  # nor can one without the depth convolutions
        run_bundle(config_files("brain_mri", "inference"), **sampling, **{**patched, "network_def#depth_kernel_size": 1},
                   output_dir=str(tmp_path / "wrong"))
    assert "does not fit DepthAttentionUNet" in error_chain(mismatch.value) and "depth_conv.proj.weight" in error_chain(mismatch.value)
    with pytest.raises(Exception) as mismatch:  # nor one without the position channels
        run_bundle(config_files("brain_mri", "inference"), **sampling, **{**patched, "network_def#position_channels": False},
                   output_dir=str(tmp_path / "wrong"))
    assert "does not fit DepthAttentionUNet" in error_chain(mismatch.value) and "init_conv.weight" in error_chain(mismatch.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_a_code_classifying_denoiser_trains_with_cross_entropy_and_samples_through_the_bundle_configs(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "lr": 1e-3, "train#trainer#max_epochs": 2,
                "ema#start_iteration": 1, "ema#every": 1, "log_interval": 1}
    with pytest.raises(Exception) as regressing:  # the classifier's estimate is the clean latent: refused otherwise
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, code_classification=True)
    assert "code_classification true) estimates the clean latent: set prediction_type 'sample', not 'epsilon'" in error_chain(regressing.value)
    assert not (models / "diffusion.pt").exists()

    codes = {"code_classification": True, "prediction_type": "sample"}
    with pytest.raises(Exception) as too_many:  # the config hands code_voxels to the batches
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, **codes, code_voxels=5000)
    assert "code_voxels is 5000 but a latent of (16, 16, 16) has 4096 voxels" in error_chain(too_many.value)
    # the cross entropy at 100 random voxels of each 16^3 latent (the default 4096 would be all of them)
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, **codes, code_voxels=100)
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["code_classification"] is True and checkpoint["model_settings"]["prediction_type"] == "sample"
    count = SIZE_32["autoencoder_def#num_embeddings"]
    assert checkpoint["ema_network"]["final_conv.weight"].shape[0] == count  # one logit per code of the codebook
    events = EventAccumulator(str(logs))
    events.Reload()
    losses = [event.value for event in events.Scalars("train_diffusion_loss")]
    assert len(losses) == 4 and losses[0] == pytest.approx(np.log(count), rel=0.2)  # the cross entropy of K codes, not an L1

    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3}
    run_bundle(config_files("brain_mri", "inference"), **sampling, **codes, code_temperature=0.25, output_dir=str(tmp_path / "samples"))
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["prediction_type"] == "sample" and record["code_classification"] == {"temperature": 0.25, "likelihood": False}

    with pytest.raises(Exception) as mismatch:  # the classifier sampled as a regressing denoiser: refused by the setting
        run_bundle(config_files("brain_mri", "inference"), **sampling, prediction_type="sample", output_dir=str(tmp_path / "wrong"))
    assert "trained with code_classification True (configured: False); set --code_classification" in error_chain(mismatch.value)
    with pytest.raises(Exception) as cold:
        run_bundle(config_files("brain_mri", "inference"), **sampling, **codes, code_temperature=-1, output_dir=str(tmp_path / "wrong"))
    assert "code_temperature must be a number >= 0" in error_chain(cold.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_a_code_classifier_with_the_codes_likelihood_trains_and_samples_with_it_through_the_bundle_configs(
        brain_model, tmp_path, monkeypatch):
    from common.engines import sampled_voxels
    from common.sampling import code_expectation

    calls = []  # (where, the shape of the likelihood's logits) of every likelihood computed

    def spy(module, where):
        original = module.code_log_likelihood

        def recording(noisy, codes, signal, noise):
            logits = original(noisy, codes, signal, noise)
            calls.append((where, tuple(logits.shape)))
            return logits
        monkeypatch.setattr(module, "code_log_likelihood", recording)

    spy(sampled_voxels, "training")
    spy(code_expectation, "sampling")
    models, logs = with_the_vqgan(brain_model, tmp_path)
    codes = {"code_classification": True, "prediction_type": "sample"}
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "lr": 1e-3, "train#trainer#max_epochs": 2,
                "ema#start_iteration": 1, "ema#every": 1, "log_interval": 1, **codes, "code_voxels": 100}
    with pytest.raises(Exception) as regressing:
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"),
                   **{**training, "code_classification": False, "prediction_type": "v_prediction"}, code_likelihood=True)
    assert "code_likelihood adds every code's likelihood to a code classifier's logits: it needs code_classification true" \
        in error_chain(regressing.value)
    assert not (models / "diffusion.pt").exists() and not calls

    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, code_likelihood=True)
    count = SIZE_32["autoencoder_def#num_embeddings"]
    # every one of the 4 iterations: each of its 2 latents' likelihood at its 100 sampled voxels
    assert calls == [("training", (2, count, 100))] * 4
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["code_likelihood"] is True

    calls.clear()
    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3, **codes}
    run_bundle(config_files("brain_mri", "inference"), **sampling, code_likelihood=True, output_dir=str(tmp_path / "samples"))
    assert calls == [("sampling", (1, count, 16, 16, 16))] * 3  # at every step, at every voxel of the latent
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["code_classification"] == {"temperature": 0.5, "likelihood": True}
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()

    with pytest.raises(Exception) as mismatch:  # sampled without it: refused by the stored setting, nothing written
        run_bundle(config_files("brain_mri", "inference"), **sampling, output_dir=str(tmp_path / "wrong"))
    assert "trained with code_likelihood True (configured: False); set --code_likelihood" in error_chain(mismatch.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


@pytest.mark.parametrize("recipe", [{"code_classification": True, "prediction_type": "sample", "code_voxels": 100},
                                    {"prediction_type": "v_prediction"}], ids=["code_classifier", "v_prediction"])
def test_a_self_conditioned_denoiser_trains_on_its_own_estimate_and_samples_from_its_last_one_through_the_bundle_configs(
        brain_model, tmp_path, recipe, monkeypatch):
    from common.networks import DepthAttentionUNet

    given = []  # what every call of the denoiser was handed as its estimate: None, or its largest magnitude
    forward = DepthAttentionUNet.forward

    def recording(self, x, timesteps, context=None, voxels=None, self_condition=None):
        given.append(None if self_condition is None else float(self_condition.abs().max()))
        return forward(self, x, timesteps, context, voxels, self_condition)

    monkeypatch.setattr(DepthAttentionUNet, "forward", recording)
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "lr": 1e-3, "train#trainer#max_epochs": 4,
                "ema#start_iteration": 1, "ema#every": 1, "log_interval": 1, **recipe}
    torch.manual_seed(0)
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, self_conditioning=True)
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["self_conditioning"] is True
    assert checkpoint["ema_network"]["init_conv.weight"].shape[1] == 2 * 8  # the 8 latent channels and their estimate
    # 8 iterations, each with one call given no estimate; some (by the seed) then trained on that call's estimate
    estimated = [value for value in given if value is not None]
    assert given.count(None) == 8 and estimated and all(value > 0 for value in estimated)

    given.clear()
    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 2, "num_inference_steps": 3,
                **{k: v for k, v in recipe.items() if k != "code_voxels"}}
    run_bundle(config_files("brain_mri", "inference"), **sampling, self_conditioning=True, output_dir=str(tmp_path / "samples"))
    # each sample's first step has no estimate, its later ones the estimate of the step before
    assert [value is None for value in given] == [True, False, False] * 2
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["self_conditioning"] is True
    volume = np.asanyarray(nib.load(str(tmp_path / "samples" / "sample_0001_seed1.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()

    with pytest.raises(Exception) as mismatch:  # sampled without it: refused by the stored setting, nothing written
        run_bundle(config_files("brain_mri", "inference"), **sampling, output_dir=str(tmp_path / "wrong"))
    assert "trained with self_conditioning True (configured: False); set --self_conditioning" in error_chain(mismatch.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_training_writes_a_guide_that_autoguides_sampling_through_the_bundle_configs(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    # 5 brains at batch 2: 2 iterations an epoch, 4 in all; the EMA steps every iteration from the first
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "lr": 1e-3, "train#trainer#max_epochs": 2,
                "ema#start_iteration": 1, "ema#every": 1}
    with pytest.raises(Exception) as late:  # a guide that would never be written: refused before any iteration
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, guide_iteration=5)
    assert "the guide snapshot is asked for at iteration 5, but this training ends at iteration 4" in error_chain(late.value)
    assert not (models / "diffusion.pt").exists()
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, guide_iteration=2)
    guide, final = (torch.load(models / name, weights_only=True) for name in ("guide.pt", "diffusion.pt"))
    assert guide["trainer"]["iteration"] == 2 and final["trainer"]["iteration"] == 4
    assert set(guide) == {"ema_network", "latent_scale", "model_settings", "trainer"}
    assert any(not torch.equal(guide["ema_network"][k], w) for k, w in final["ema_network"].items())

    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 1, "num_inference_steps": 3}
    guided = {"guide_path": str(models / "guide.pt"), "autoguidance_scale": 2.0}
    # the network the sampler is given: the EMA denoiser, extrapolated away from the guide's weights
    parser = ConfigParser()
    parser.read_config(config_files("brain_mri", "inference"))
    parser.update({**sampling, **guided, "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("sampling_network")
    assert isinstance(network, AutoGuidedDenoiser) and network.scale == 2.0 and network.interval is None
    assert all(torch.equal(w, guide["ema_network"][k]) for k, w in network.guide.state_dict().items())
    assert all(torch.equal(w, final["ema_network"][k]) for k, w in network.network.state_dict().items())
    x, t = torch.randn(1, 8, 16, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.allclose(network(x, t), 2 * network.network(x, t) - network.guide(x, t), atol=1e-5)
    # and the sampling run with it, guided in a band of noise levels only (its volumes pass through the nearest
    # codes, which can hide a small change)
    parser.update({"autoguidance_interval": [0.2, 0.8]})
    banded = parser.get_parsed_content("sampling_network", lazy=False)
    assert banded.interval == (0.2, 0.8) and banded.num_train_timesteps == parser["num_train_timesteps"] == 300
    run_bundle(config_files("brain_mri", "inference"), **sampling, **guided, autoguidance_interval=[0.2, 0.8],
               output_dir=str(tmp_path / "guided"))
    volume = np.asanyarray(nib.load(str(tmp_path / "guided" / "sample_0000_seed0.nii.gz")).dataobj)
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all()
    record = json.loads((tmp_path / "guided" / "samples.json").read_text())
    assert record["autoguidance"] == {"scale": 2.0, "guide": str(models / "guide.pt"), "interval": [0.2, 0.8]}
    for wrong, message in (({"autoguidance_scale": 2.0}, "autoguidance_scale is 2.0 but no guide_path is set"),
                           ({"guide_path": str(models / "diffusion.pt"), "autoguidance_scale": 2.0}, "the guide must be an earlier one"),
                           ({"guide_path": str(models / "guide.pt"), "autoguidance_scale": 0.5}, "autoguidance_scale must be a number >= 1"),
                           ({**guided, "autoguidance_interval": [0.8, 0.2]}, "autoguidance_interval must be null"),
                           ({**guided, "autoguidance_interval": [0.6, 0.7]}, "autoguidance_interval [0.6, 0.7] holds none of the 3 sampling steps")):
        with pytest.raises(Exception) as refused:
            run_bundle(config_files("brain_mri", "inference"), **sampling, **wrong, output_dir=str(tmp_path / "wrong"))
        assert message in error_chain(refused.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))


def test_the_learning_rate_decays_through_the_bundle_config_and_a_decay_after_the_end_is_refused(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "lr": 1e-3, "ema#start_iteration": 1,
                "train#trainer#max_epochs": 2, "lr_decay#final_ratio": 0.1, "lr_decay#start_iteration": 1}
    run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training)
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] > 1  # SupervisedTrainer ran the decay to its last iteration
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    # the rate each epoch ended at, in TensorBoard beside the loss and numbered by iteration as it is: 2 iterations an
    # epoch, the decay from iteration 1 to 4, so 0.1 + 0.9 * (1 + cos(pi / 3)) / 2 = 0.775 of lr at iteration 2, 0.1 at 4
    events = EventAccumulator(str(logs))
    events.Reload()
    logged = [(event.step, event.value) for event in events.Scalars("learning_rate")]
    assert [step for step, _ in logged] == [2, 4] and [value for _, value in logged] == pytest.approx([7.75e-4, 1e-4])

    trained = (models / "diffusion.pt").read_bytes()
    with pytest.raises(Exception) as late:  # a decay that would never start: stopped when the trainer is built, by name
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **{**training, "lr_decay#start_iteration": 99})
    assert ("lr_decay: the learning rate would decay from iteration 99, but training ends at iteration 4; lower "
            "lr_decay#start_iteration or raise train#trainer#max_epochs") in error_chain(late.value)  # 5 brains, batch 2
    assert (models / "diffusion.pt").read_bytes() == trained  # the trained checkpoint is where and as it was


def test_the_latent_cache_encodes_each_training_volume_once_through_the_bundle_config(brain_model, tmp_path):
    models, logs = with_the_vqgan(brain_model, tmp_path)
    training = {"dataset_dir": str(brain_model["brains"]), "ckpt_dir": str(models), "log_dir": str(logs), **SIZE_32,
                **SMALL_DENOISER, "num_workers": 0, "batch_size": 2, "ema#start_iteration": 1, "train#trainer#max_epochs": 4}
    configs = config_files("brain_mri", "train_autoencoder", "train_diffusion")
    with in_repository(), isolated_state():  # run_bundle's steps, keeping the workflow to look into its trainer
        workflow = create_workflow(config_file=configs, **training)
        workflow.run()
        workflow.finalize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
    cache = trainer.prepare_batch.latent_cache
    assert cache.max_bytes == 1024 * 2**20  # the bundle's default
    seen = trainer.state.iteration * 2
    # every volume the SupervisedTrainer prepared went through the cache; each brain and its flip was encoded at most
    # once (5 brains), the rest read from the cache
    assert cache.hits + cache.misses == seen and len(cache.latents) == cache.misses <= 10 and cache.hits >= seen - 10 > 0

    with pytest.raises(Exception) as refused:
        run_bundle(configs, **{**training, "latent_cache_mb": -1})
    assert "latent_cache_mb must be a finite number of MiB >= 0 (0: encode every batch), got -1" in error_chain(refused.value)

"""Whole pipelines of a latent bundle: train the VQ-GAN, train the diffusion model, sample, evaluate.

Each stage is the bundle's own config run by ``monai.bundle.run``, exactly as a user would run it, with
overrides; this module only chains the stages (``train_stages`` is what a bundle's ``configs/train.json`` runs)
and chooses small settings for the demo.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle

from common.checkpoints import checkpoint_iteration, find_latest_checkpoint
from common.handlers import CheckpointDirLock, CheckpointResumer, IterationSnapshot, LearningRateDecay
from common.io import bundle_dir, is_main_process
from common.networks import check_image_size
from common.overrides import as_bool, refuse_unknown_ids

__all__ = [
    "AUTOGUIDANCE_IDS", "DEMO_SETTINGS", "SMALL_IMAGE_SIZE", "SMALL_SETTINGS", "STAGES", "TRAINING_STAGES", "V_PREDICTION_DENOISER",
    "demo", "pipeline", "run_stages", "summary", "train_stages", "without_autoguidance",
]

logger = logging.getLogger(__name__)

TRAINING_STAGES = ("autoencoder", "diffusion")

STAGES = ("autoencoder", "diffusion", "inference", "evaluation")

# The small models of every latent bundle, by stage as DEMO_SETTINGS: each network a few channels wide, trained
# for a few iterations, seconds on a CPU. One source for the "Small models on a CPU" commands of each bundle's
# docs/README.md (rendered from here by templates/render.py), the test suite and benchmarks/gpu_check.py.
SMALL_SETTINGS: dict[str, dict[str, Any]] = {
    "shared": {"autoencoder_def#base_channels": 4, "autoencoder_def#num_embeddings": 64},
    "autoencoder": {
        "image_discriminator#channels": 4,
        "volume_discriminator#channels": 4,
        "image_discriminator#num_layers_d": 2,
        "volume_discriminator#num_layers_d": 2,
        "perceptual_weight": 0,
        "adversarial_start": 2,
        "num_workers": 0,
        "train#trainer#max_epochs": 2,
        "save_interval": 2,
    },
    "denoiser": {
        "network_def#channels": [8, 16],
        "network_def#spatial_attention": [False, True],
        "network_def#num_heads": 2,
        "network_def#head_channels": 4,
    },
    "diffusion": {"num_workers": 0, "batch_size": 2, "train#trainer#max_epochs": 2, "ema#start_iteration": 2},
    "inference": {"num_samples": 2, "num_inference_steps": 5},
}
# the volume size of each latent bundle's small models (each axis divisible by its compression and, in-plane, by
# the denoiser's down-sampling)
SMALL_IMAGE_SIZE: dict[str, list[int]] = {
    "brain_mri": [16, 16, 16], "knee_mri": [64, 64, 16], "breast_mri": [32, 32, 16], "chest_ct": [32, 32, 32],
}

# Small models that train in 15 to 30 minutes on 2 CPU cores (23 measured on this project's machine, 0.2.28), on the
# real-anatomy demo brains (20 to train on, 8 held out). At 32^3 the VQ-GAN keeps the paper's brain compression of 2
# (a 16^3 latent): compression 4 leaves too few codes for a held-out PSNR above 27 dB. Its adversarial phase keeps
# the paper's start (iteration 10,000), which the demo's 2,000 iterations never reach: from iteration 500 it
# collapses the reconstructions into stripes (benchmarks/sharpness.md, measured while MONAI's tanh hinge froze the
# discriminators: benchmarks/gan_hinge.md; the tests exercise that phase). By stage:
# "shared" goes to every stage, "denoiser" to the diffusion training and inference (the network must match its
# checkpoint). The ids are the bundle's documented ones; what departs from the paper is said where it is set.
DEMO_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "brain_mri": {
        "shared": {
            "image_size": [32, 32, 32],
            "autoencoder_def#base_channels": 16,
            "autoencoder_def#num_embeddings": 512,
            "autoencoder_def#downsample_factor": 2,
            # codes used early and then abandoned keep stretching the codebook range for about
            # ln(count) / (1 - decay) steps; in the demo's first 1,000 iterations the paper's 0.99 left them in place
            "autoencoder_def#decay": 0.9,
            # not the paper's (a linear output): a tanh output puts the background at -1 instead of around it, which
            # after minutes of training brings the samples' intensity histogram to the real one's
            "autoencoder_def#output_act": "TANH",
        },
        "autoencoder": {
            "perceptual_weight": 0.0,
            "lr": 0.001,
            "num_workers": 0,
            # 2,000 iterations, twice the first demo's 1,000: held-out reconstructions about 2 dB better (33.4 and
            # 32.8 dB in two trainings against 29.9 to 31.2), for about 2 more minutes; their sharpness moves between
            # trainings more than it moved with the length (benchmarks/sharpness_vqgan.md)
            "train#trainer#max_epochs": 200,
            "save_interval": 0,
            "log_interval": 50,
            "heldout_interval": 500,
        },
        "denoiser": {
            "network_def#channels": [32, 64],
            "network_def#spatial_attention": [False, True],
            "network_def#num_heads": 4,
            "network_def#head_channels": 16,
            # not the paper's epsilon: at the same 1,800 iterations v-prediction comes closer to real
            # (benchmarks/convergence_demo_length.md: histograms 0.87x / 0.15x real against 1.21x / 0.60x); at 900
            # its numbers match the paper's at 1,800, but the pictures show less inner anatomy, so the length stays.
            # Rectified flow on unit-variance latents (`--noise_schedule rectified_flow --latent_scaling
            # unit_variance`), the demo's recipe at 900 iterations for a while, was further from real beside this one
            # on one VQ-GAN and four seed sets, at 900 iterations and more so at 1,800
            # (benchmarks/demo_side_by_side.md). `--prediction_type epsilon` is the paper's.
            # Not the paper's either: the denoiser names each latent voxel's code (a classifier over the codebook,
            # sampled through its expected code) and adds every code's exact likelihood at the noisy voxel to its
            # logits. Beside v-prediction at the same 1,800 iterations on one VQ-GAN and three seed sets, guided
            # alike: histograms JS 1.81x / W 0.95x real against 7.51x / 1.43x, sharpness 0.94x against 0.87x, a
            # little more alike (diversity 1.05x against 1.01x), in 1.6 times the training time
            # (benchmarks/demo_side_by_side_codes_likelihood_1800.md). `--prediction_type v_prediction
            # --code_classification false --code_likelihood false` in training and inference gives v-prediction.
            "prediction_type": "sample",
            "code_classification": True,
            "code_likelihood": True,
        },
        "diffusion": {
            "batch_size": 4,
            # ten times the paper's 1e-4: minutes, not days (0.4 times this was far from real at 600 iterations at
            # 64^3: benchmarks/convergence_64.md)
            "lr": 0.001,
            "num_workers": 0,
            # 1,800 iterations
            "train#trainer#max_epochs": 360,
            "accumulation_steps": 1,
            "ema#start_iteration": 900,
            "ema#every": 1,
            "ema#decay": 0.995,
            "save_interval": 0,
            "log_interval": 100,
            # the denoiser at a quarter of its training, kept as the guide of autoguidance (below)
            "guide_iteration": 450,
        },
        "inference": {
            "num_samples": 8,
            # 25 DDIM steps: as close to real as 100 on four seed sets, in a quarter of the time
            # (benchmarks/demo_side_by_side.md)
            "num_inference_steps": 25,
            "clip_sample_range": 1.25,  # the x0 estimates clipped a little beyond the codebook range
            # not the paper's: autoguidance by the denoiser's snapshot at a quarter of its training (Karras et al.,
            # 2024); from two seed sets, sharpness 0.95x / 0.93x real against 0.73x / 0.72x without, histogram JS
            # 1.31x / 2.51x against 1.82x / 3.55x, at twice the time per sample (benchmarks/autoguidance.md)
            "guide_path": "$@ckpt_dir + '/guide.pt'",
            "autoguidance_scale": 2.0,
            "spacing": [5.6, 5.6, 5.6],
        },
    }
}


# The demo's denoiser until latent bundles 0.2.28, by its "denoiser" ids: v-prediction, regressing the latent. The
# conditional demo keeps it (measured with it), and so do the benchmarks that compare denoiser recipes on top of the
# demo's settings, so that their recorded recipes keep their meaning.
V_PREDICTION_DENOISER: dict[str, Any] = {"prediction_type": "v_prediction", "code_classification": False, "code_likelihood": False}


# the ids of DEMO_SETTINGS that make the demo sample with autoguidance, by stage
AUTOGUIDANCE_IDS: dict[str, tuple[str, ...]] = {
    "diffusion": ("guide_iteration",), "inference": ("guide_path", "autoguidance_scale", "autoguidance_interval"),
}


def without_autoguidance(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy of settings by stage (as ``DEMO_SETTINGS``) without the autoguidance ids: the denoiser sampled alone,
    no guide written (the benchmarks that measure the denoiser itself, the conditional demo, a demo package whose
    training kept no guide)."""
    stripped = copy.deepcopy(settings)
    for stage, ids in AUTOGUIDANCE_IDS.items():
        for config_id in ids:
            stripped.get(stage, {}).pop(config_id, None)
    return stripped


def pipeline(
    bundle: str = "brain_mri",
    output_dir: str = "pipeline_output",
    dataset_dir: str | None = None,
    stages: str = "autoencoder,diffusion,inference",
    **overrides: Any,
) -> str:
    """Train the VQ-GAN, train the diffusion model, sample, and (stage ``evaluation``) evaluate the samples.

    Args:
        bundle: bundle name under ``bundles/``.
        output_dir: folder for models (``models/``), logs (``logs/``), demo data and samples (``samples/``).
        dataset_dir: the dataset; ``None`` uses the bundle's embedded demo data.
        stages: comma-separated subset of ``autoencoder,diffusion,inference,evaluation`` to run; ``evaluation``
            evaluates the samples of ``inference`` against the training data into ``samples/evaluation/``.
        overrides: further config overrides for every stage, e.g. ``--num_samples 8``.

    Returns the samples folder.
    """
    return run_stages(bundle, output_dir, dataset_dir, stages, {}, overrides)


def demo(output_dir: str = "demo_output", bundle: str = "brain_mri") -> str:
    """Train small models on the embedded demo data, sample, write NIfTI volumes plus ``samples.png``, evaluate the
    samples (``samples/evaluation/metrics.json`` and pictures), and print what the evaluation found. The Med-DDPM
    bundle ``brain_tumor_semantic`` has its own demo (``common.med_ddpm.demo``: mask-conditioned pairs)."""
    if bundle == "brain_tumor_semantic":
        from common.med_ddpm.demo import demo as mask_conditioned_demo

        return mask_conditioned_demo(output_dir)
    if bundle not in DEMO_SETTINGS:
        raise ValueError(f"no demo settings for bundle '{bundle}' (have: {', '.join([*DEMO_SETTINGS, 'brain_tumor_semantic'])}).")
    samples = run_stages(bundle, output_dir, None, "autoencoder,diffusion,inference,evaluation", DEMO_SETTINGS[bundle], {})
    evaluation = Path(samples) / "evaluation"
    print(summary(json.loads((evaluation / "metrics.json").read_text()), evaluation, f"[{bundle}] "), flush=True)
    return samples


def summary(metrics: dict[str, Any], evaluation_dir: Path, prefix: str = "") -> str:
    """A few lines of an evaluation's ``metrics.json`` for the terminal: reconstruction, the ratios to real, copies."""
    recon, ratios = metrics["reconstruction"], metrics["ratios_to_real"]

    def ratio(name: str) -> str:
        return "n/a" if ratios.get(name) is None else f"{ratios[name]:.2f}x"

    where = "held-out" if recon["volumes"].startswith("held-out") else "training (no held-out volumes)"
    return "\n".join([
        f"{prefix}VQ-GAN reconstruction of {recon['count']} {where} volumes: PSNR {recon['psnr_db']['mean']:.1f} dB",
        f"{prefix}samples against real, about 1x is real-like: diversity {ratio('diversity_ms_ssim')} (against "
        f"{ratios['diversity_compared_with']}), MMD {ratio('mmd')}, histogram {ratio('histogram_wasserstein')} "
        f"(Wasserstein) {ratio('histogram_jensen_shannon')} (Jensen-Shannon), slice consistency "
        f"{ratio('slice_consistency_ssim')}, sharpness {ratio('sharpness')} (reconstructions: "
        f"{ratio('reconstruction_sharpness')} of their inputs)",
        f"{prefix}near copies of a training volume: {len(metrics['memorisation_audit']['near_copies'])} of {metrics['samples']}",
        f"{prefix}look at {evaluation_dir}/samples_and_real.png and reconstructions.png; docs/evaluation.md says how to read them",
    ])


def config_files_of(configs: Path) -> dict[str, list[str]]:
    """The config files each stage runs, from a latent bundle's ``configs`` folder: the training stages' as the
    bundle's ``train.json`` names them (its ``stage_configs``, the one source), then sampling and evaluation."""
    training = json.loads((configs / "train.json").read_text())["stage_configs"]
    return {
        **{stage: [str(configs / name) for name in training[stage]] for stage in TRAINING_STAGES},
        "inference": [str(configs / "inference.json")],
        "evaluation": [str(configs / name) for name in ("train_autoencoder.json", "inference.json", "evaluate.json")],
    }


def run_stages(
    bundle: str,
    output_dir: str,
    dataset_dir: str | None,
    stages: str,
    settings: dict[str, dict[str, Any]],
    overrides: dict[str, Any],
) -> str:
    """Run the chosen ``stages`` of a latent bundle into ``output_dir``; returns the samples folder.

    ``settings`` holds overrides by stage, as ``DEMO_SETTINGS`` does ("shared" for every stage, "denoiser" for the
    diffusion training and inference, "autoencoder", "diffusion", "inference" for their own); ``overrides`` go to
    every stage and win. Each stage is the bundle's own config run by ``monai.bundle.run``.
    """
    configs = bundle_dir(bundle) / "configs"
    if not (configs / "train_autoencoder.json").is_file():
        raise ValueError(
            f"'{bundle}' is not a latent-diffusion bundle (no train_autoencoder.json); run its own configs with "
            f"python -m monai.bundle run, as its docs/README.md shows."
        )
    chosen = [s.strip() for s in stages.split(",") if s.strip()] if isinstance(stages, str) else list(stages)
    unknown = set(chosen) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}.")
    files = sorted({f for files in config_files_of(configs).values() for f in files})
    refuse_unknown_ids(files, list(overrides), "to the pipeline", tracking=overrides.get("tracking"))
    out = Path(output_dir).resolve()
    paths = {
        "bundle_root": str(bundle_dir(bundle)),
        "ckpt_dir": str(out / "models"),
    }
    training = {"log_dir": str(out / "logs"), "demo_dir": str(out / "demo_data"), "dataset_dir": dataset_dir}
    config_files = config_files_of(configs)
    for stage in STAGES:
        if stage not in chosen:
            continue
        denoiser = settings.get("denoiser", {}) if stage != "autoencoder" else {}
        # evaluation reads the samples of inference, so it takes inference's settings and does not sample again
        own = {**settings.get("inference", {}), "run": ["$@evaluator.run()"]} if stage == "evaluation" else settings.get(stage, {})
        stage_overrides = {**paths, **settings.get("shared", {}), **denoiser, **own, **overrides}
        if stage in ("inference", "evaluation"):
            stage_overrides["output_dir"] = str(out / "samples")
        if stage != "inference":
            stage_overrides.update(training)
        start = time.time()
        print(f"[{bundle}] stage '{stage}' starting", flush=True)
        run_bundle(
            config_file=config_files[stage],
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            **stage_overrides,
        )
        print(f"[{bundle}] stage '{stage}' done in {time.time() - start:.0f} s", flush=True)
    samples = out / "samples"
    evaluated = f"; evaluation: {samples / 'evaluation' / 'metrics.json'}" if "evaluation" in chosen else ""
    print(f"[{bundle}] models: {out / 'models'}; samples and samples.png: {samples}{evaluated}", flush=True)
    return str(samples)


def _plan_by_rank_0(ckpt_dir: Path, resume: bool) -> dict[str, bool]:
    """Which stages to run, each with its ``resume``: decided by rank 0 from the checkpoint folder and sent to
    every rank (on a shared file system ranks could see it at different moments).

    Without ``resume``: both, from scratch. With it, the VQ-GAN stage has ended only if no checkpoint of it is
    newer (by iteration) than its final ``autoencoder.pt``; the diffusion stage then continues only from a checkpoint written after that
    file (an older one belongs to another VQ-GAN), else it starts again.
    """
    plan: dict[str, bool] = {"autoencoder": False, "diffusion": False}
    if resume and is_main_process():
        final = ckpt_dir / "autoencoder.pt"
        latest = find_latest_checkpoint(ckpt_dir, "autoencoder")
        if final.is_file() and checkpoint_iteration(final, "autoencoder") >= checkpoint_iteration(latest, "autoencoder"):
            latest = find_latest_checkpoint(ckpt_dir, "diffusion")
            newer = latest is not None and latest.stat().st_mtime_ns > final.stat().st_mtime_ns
            plan = {"diffusion": newer}
            logger.info("the VQ-GAN stage had ended (%s); %s the diffusion stage.", final,
                        f"continuing from {latest.name} in" if newer else "starting")
        else:
            plan = {"autoencoder": True, "diffusion": False}
    if dist.is_available() and dist.is_initialized():
        shared = [plan]
        dist.broadcast_object_list(shared, src=0)
        plan = shared[0]
    return plan


def _check_diffusion_stage(files: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """What the diffusion stage can be checked for without its data, before the VQ-GAN stage trains, not when the
    second stage fails on it: its networks (the VQ-GAN and the denoiser on its latents) take ``image_size``, and
    its ``lr_decay`` arguments are valid (without building the optimizer, which would put the denoiser on the
    device), and so is its ``guide_iteration``."""
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    check_image_size(parser.get_parsed_content("image_size"), *parser.get_parsed_content("size_checked_networks"))
    decay = ("final_ratio", "start_iteration", "end_iteration")
    LearningRateDecay.check_arguments(*(parser.get_parsed_content(f"lr_decay#{key}") for key in decay))
    IterationSnapshot.check_iteration(parser.get_parsed_content("guide_iteration"))


def _unescaped(value: Any) -> Any:
    """``stage_overrides`` values as the stage should read them: train.json's parser resolves ``$`` and ``@`` in
    them in its own namespace, so a stage's own expression or reference is written with a backslash first
    (``"\\$@autoencoder.parameters()"``), which is removed here."""
    if isinstance(value, str):
        return value[1:] if value.startswith(("\\$", "\\@")) else value
    if isinstance(value, list):
        return [_unescaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescaped(v) for k, v in value.items()}
    return value


def _forwardable(value: Any) -> Any:
    """A resolved config value as an override another config resolves to the same thing."""
    return f"$torch.device('{value}')" if isinstance(value, torch.device) else value


def train_stages(
    bundle_root: str,
    stage_configs: Mapping[str, Sequence[str]],
    forwarded: Mapping[str, Any],
    stage_overrides: Mapping[str, Mapping[str, Any]],
    resume: bool | str = False,
) -> None:
    """Train the VQ-GAN, then the diffusion model on its latents (Khader et al., 2023, Sec. 3): the ``run`` of a
    latent bundle's ``configs/train.json``, so one command trains both stages.

    Each stage is its own config files (``stage_configs``, names in ``<bundle_root>/configs``) run by
    ``monai.bundle.run``, with ``forwarded`` (the ids ``train.json`` declares for both stages: paths, device,
    image size, ...) and ``stage_overrides["both"]`` and ``stage_overrides[<stage>]`` (any id of that stage's
    configs; they win; a stage's own ``$`` expression or ``@`` reference is written ``\\$...``/``\\@...``, since
    train.json resolves unescaped ones). Every id is checked against the stage's configs before anything runs. The checkpoint
    folder stays locked from the first stage to the end of the second.

    With ``resume`` the run continues in the stage it was in: the VQ-GAN stage from its newest checkpoint, or, if
    it had ended (its newest checkpoint is the final ``autoencoder.pt``), the diffusion stage from a checkpoint
    newer than that file (or from its start). Without it, both stages' earlier files are moved to
    ``earlier_runs/`` first, so a run killed between the stages is never resumed from another run's files.
    """
    resume = as_bool(resume, "resume")
    configs = Path(bundle_root) / "configs"
    if sorted(stage_configs) != sorted(TRAINING_STAGES):
        raise ValueError(f"stage_configs must name the config files of {list(TRAINING_STAGES)}, got {sorted(stage_configs)}.")
    unknown = sorted(set(stage_overrides) - {"both", *TRAINING_STAGES})
    if unknown:
        raise ValueError(f"stage_overrides takes 'both', 'autoencoder' and 'diffusion', not {unknown}.")
    plan = {}
    for stage in TRAINING_STAGES:
        files = [str(configs / name) for name in stage_configs[stage]]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"the {stage} stage's config files {missing} do not exist (bundle_root {bundle_root}).")
        chosen = _unescaped({**dict(stage_overrides.get("both", {})), **dict(stage_overrides.get(stage, {}))})
        if "resume" in chosen or "ckpt_dir" in chosen:
            raise ValueError("resume and ckpt_dir go to both stages together: set --resume and --ckpt_dir, not in stage_overrides.")
        refuse_unknown_ids(files, list(chosen), f"in stage_overrides for the {stage} stage")
        plan[stage] = (files, {**{k: _forwardable(v) for k, v in forwarded.items()}, **chosen})
    _check_diffusion_stage(*plan["diffusion"])
    ckpt_dir = Path(forwarded["ckpt_dir"])
    with CheckpointDirLock(ckpt_dir).held_across_runs():
        resumes = _plan_by_rank_0(ckpt_dir, resume)
        if "autoencoder" not in resumes:
            del plan["autoencoder"]
            if stage_overrides.get("autoencoder"):
                logger.warning("the VQ-GAN stage had ended, so stage_overrides['autoencoder'] (%s) is not used; to "
                               "train it longer, run train_autoencoder.json with --resume true and a larger "
                               "train#trainer#max_epochs.", ", ".join(stage_overrides["autoencoder"]))
        if not resume and is_main_process():  # a fresh run: no earlier file of either stage can be taken for its own
            for name in ("autoencoder", "diffusion"):
                CheckpointResumer(ckpt_dir, name, {}).move_earlier_run()
        for stage, (files, overrides) in plan.items():
            start = time.time()
            logger.info("stage '%s' starting: %s", stage, ", ".join(Path(f).name for f in files))
            run_bundle(config_file=files, meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
                       **overrides, resume=resumes[stage])
            logger.info("stage '%s' done in %.0f s", stage, time.time() - start)

"""Which diffusion recipe learns brains in the fewest iterations? Denoiser recipes trained side by side on the
latents of one VQ-GAN, sampled with fixed seeds every few hundred iterations and evaluated against held-out brains.

    python benchmarks/convergence.py                                   # the demo's size (32^3), about 35 minutes here
    python benchmarks/convergence.py --size 64 --iterations 1500       # the paper's brain size, quality.py's widths
    python benchmarks/convergence.py --size 64 --device cuda --paper-widths --iterations 20000 --every 2000

The recipes are the bundles' config ids (``latent_scaling``, ``prediction_type``, and ``clip_sample_range`` for
sampling), so each one is a ``python -m monai.bundle run`` override; every stage runs the brain_mri bundle's own
configs (``common.pipeline.run_stages``). The VQ-GAN is trained once (kept in ``--workdir``), the data are the
real-anatomy population (``common.data.brain_population``) with held-out subjects, and each recipe's denoiser
trains in chunks of ``--every`` iterations (``--resume``), each followed by DDIM sampling of the same seeds and the
evaluation (ratios to real: histogram distances, diversity, slice consistency, sharpness). After the curves, the
best recipe's last checkpoint is sampled with fewer steps (``--sweep-steps``). Writes ``convergence.md``,
``convergence/curves.png`` and each recipe's last samples beside real brains.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "brain_mri"

# training ids (they define the model) and sampling ids of each recipe, every one given, whatever the stage settings
# say; the paper's clips x0 to the codebook range, the others to 1.25 times it (clip_sample_range is in codebook-range
# units: it is scaled with the latents)
PAPER = {"latent_scaling": "codebook_range", "prediction_type": "epsilon"}
RECIPES: dict[str, dict[str, dict]] = {
    "paper": {"train": PAPER, "sample": {"clip_sample_range": 1.0}},
    "v_prediction": {"train": {**PAPER, "prediction_type": "v_prediction"}, "sample": {"clip_sample_range": 1.25}},
    "unit_variance": {"train": {**PAPER, "latent_scaling": "unit_variance"}, "sample": {"clip_sample_range": 1.25}},
    "unit_variance_v": {"train": {"latent_scaling": "unit_variance", "prediction_type": "v_prediction"},
                        "sample": {"clip_sample_range": 1.25}},
    "sample_prediction": {"train": {**PAPER, "prediction_type": "sample"}, "sample": {"clip_sample_range": 1.25}},
    # the paper's four levels and width multipliers (1, 2, 4, 8) at half its base width, attention in the two
    # smallest levels, instead of quality.py's two levels: context across the whole slice at a lower cost per
    # iteration on a CPU (the first level, where the volume is largest, is half as wide)
    "v_prediction_4_levels": {"train": {**PAPER, "prediction_type": "v_prediction", "network_def#channels": [16, 32, 64, 128],
                                        "network_def#spatial_attention": [False, False, True, True]},
                              "sample": {"clip_sample_range": 1.25}},
    "unit_variance_v_4_levels": {"train": {"latent_scaling": "unit_variance", "prediction_type": "v_prediction",
                                           "network_def#channels": [16, 32, 64, 128],
                                           "network_def#spatial_attention": [False, False, True, True]},
                                 "sample": {"clip_sample_range": 1.25}},
    # GroupNorm statistics over the whole volume (the paper's code) instead of each slice: how bright or full a
    # slice is relative to its neighbours is kept, not left to the depth attention to restore
    "v_prediction_volume_norm": {"train": {**PAPER, "prediction_type": "v_prediction", "volume_norm": True},
                                 "sample": {"clip_sample_range": 1.25}},
    # the latent folded into 2x2x2 patches (64 channels at 16^3 for the 64^3 brain) before the U-Net and unfolded
    # after it, so the U-Net runs at the demo's latent size; its first level as wide as the 64 patch channels (a
    # narrower one cannot predict the noise of all of them: 32 left the samples full of noise at 900 iterations)
    "v_prediction_patch_2": {"train": {**PAPER, "prediction_type": "v_prediction", "network_def#patch_size": 2,
                                       "network_def#channels": [64, 128, 128],
                                       "network_def#spatial_attention": [False, True, True]},
                             "sample": {"clip_sample_range": 1.25}},
}
# variants of the four-level recipes: GroupNorm over the volume; timesteps drawn by their min-SNR-gamma weight at the
# latents' own variance (training only)
for _base, _variant, _ids in (("v_prediction_4_levels", "volume_norm", {"volume_norm": True}),
                              ("v_prediction_4_levels", "min_snr", {"timestep_sampling": "min_snr"}),
                              ("unit_variance_v_4_levels", "min_snr", {"timestep_sampling": "min_snr"})):
    RECIPES[f"{_base}_{_variant}"] = {"train": {**RECIPES[_base]["train"], **_ids}, "sample": RECIPES[_base]["sample"]}
# the volume_norm four-level recipe twice as wide at every level (32, 64, 128, 256: the bundles' default widths; its
# first level as wide as the demo's), attention and heads unchanged: is the 64^3 plateau the denoiser's width?
RECIPES["v_prediction_4_levels_volume_norm_wide"] = {
    "train": {**RECIPES["v_prediction_4_levels_volume_norm"]["train"], "network_def#channels": [32, 64, 128, 256]},
    "sample": RECIPES["v_prediction_4_levels_volume_norm"]["sample"]}
# other learning rates than the stage settings' 1e-3 (the demo's and quality.py's; the paper's is 1e-4), EMA as in
# every recipe: how much does a short budget gain from larger steps, or lose from smaller ones?
for _base, _lr in (("v_prediction_4_levels", "4e-4"), ("v_prediction_4_levels", "2e-3"), ("v_prediction", "2e-3"),
                   ("v_prediction_4_levels_volume_norm", "2e-3"), ("v_prediction_4_levels_min_snr", "2e-3"),
                   ("unit_variance_v_4_levels_min_snr", "2e-3"), ("v_prediction_4_levels_volume_norm_wide", "2e-3")):
    RECIPES[f"{_base}_lr_{_lr}"] = {"train": {**RECIPES[_base]["train"], "lr": float(_lr)}, "sample": RECIPES[_base]["sample"]}
# the best four-level recipe with its learning rate decayed along a half cosine to 0 over the last 40% of the run
# (lr_decay#start_iteration and #end_iteration follow each run's length; training only: sampling is not given
# them): does a run that stalls at a constant rate settle into finer anatomy?
RECIPES["v_prediction_4_levels_volume_norm_lr_2e-3_decay"] = {**RECIPES["v_prediction_4_levels_volume_norm_lr_2e-3"],
                                                              "lr_decay": {"final_ratio": 0.0, "from": 0.6}}
# the best four-level recipe with a convolution along depth of 3 slices in every residual block (the (2+1)D layers of
# video models; the paper's slices mix only by attention, which starts out averaging all slices alike): do local
# cross-slice features bring the inner anatomy that the 64^3 runs plateau without, and the early banding?
RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3"] = {
    "train": {**RECIPES["v_prediction_4_levels_volume_norm_lr_2e-3"]["train"], "network_def#depth_kernel_size": 3},
    "sample": RECIPES["v_prediction_4_levels_volume_norm_lr_2e-3"]["sample"]}
# the same with the latents scaled to unit variance, whose samples were banded across slices at 64^3 without it
RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3"] = {
    "train": {**RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3"]["train"], "latent_scaling": "unit_variance"},
    "sample": RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3"]["sample"]}
# the best 64^3 recipe with two levers aimed at the fine grey/white pattern that every 64^3 run lacks
# (`latent_detail.md`: its detail is decided only at the least noisy timesteps, and the samples put detail "in the
# wrong place"): the voxels' coordinates as three more input channels, so the denoiser knows where in the volume
# it is; and timesteps drawn half uniformly, half as unit-variance latents would see them (more of the low-noise steps)
_DEPTH_CONV = RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3"]
RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position"] = {
    "train": {**_DEPTH_CONV["train"], "network_def#position_channels": True}, "sample": _DEPTH_CONV["sample"]}
RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_variance_shifted"] = {
    "train": {**_DEPTH_CONV["train"], "timestep_sampling": "variance_shifted"}, "sample": _DEPTH_CONV["sample"]}
# the demo's recipe with the variance_shifted timestep density: does it reach the demo's numbers in fewer iterations?
RECIPES["v_prediction_variance_shifted"] = {"train": {**RECIPES["v_prediction"]["train"], "timestep_sampling": "variance_shifted"},
                                            "sample": RECIPES["v_prediction"]["sample"]}
RECIPES["v_prediction_depth_conv"] = {"train": {**RECIPES["v_prediction"]["train"], "network_def#depth_kernel_size": 3},
                                      "sample": RECIPES["v_prediction"]["sample"]}
# the denoiser naming each latent voxel's code (the bundles' code_classification: one logit per code, cross entropy,
# sampled through the softmax-weighted mean code at temperature 0.5), on the demo's recipe and on the position one
# at 64^3 (benchmarks/code_prediction.py measured the same idea outside the bundle's trainer), and on the same without
# the voxels' coordinates as input channels (do they make the samples alike, by letting the denoiser draw one brain?)
CODES = {"train": {"prediction_type": "sample", "code_classification": True}, "sample": {"code_temperature": 0.5}}
for _base in ("v_prediction", "v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position",
              "v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3"):
    RECIPES[f"{_base}_codes"] = {"train": {**RECIPES[_base]["train"], **CODES["train"]},
                                 "sample": {**RECIPES[_base]["sample"], **CODES["sample"]}}
# the position recipe's code classifier on latents scaled to unit variance (the regression recipe went from too alike
# to too diverse with that scale, convergence_64_depth_conv.md): does it make the classifier's samples less alike?
RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"] = {
    "train": {**RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["train"], "latent_scaling": "unit_variance"},
    "sample": RECIPES["v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["sample"]}
# the same with the latents scaled to std 0.4 instead of 1 (latent_target_std): every step's SNR 8 dB below unit
# variance's and 8 to 10 dB above the codebook range's (by the VQ-GAN's latents): between the codebook-range
# classifier's coherent but alike brains and the unit-variance one's diverse but mottled ones?
RECIPES["latent_std_0.4_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"] = {
    "train": {**RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["train"], "latent_target_std": 0.4},
    "sample": RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["sample"]}
# rectified flow (noise_schedule rectified_flow: straight lines from the latent to the noise, the velocity x0 - noise
# learned, Euler steps in sampling; the last candidate, MONAI's RFlowScheduler) on the demo's codebook-range
# latents and on unit-variance ones (the noise it interpolates with has unit variance), the latter also with its
# timesteps drawn logit-normally (Esser et al.'s best density)
_FLOW = {"noise_schedule": "rectified_flow", "prediction_type": "v_prediction"}
RECIPES["rectified_flow"] = {"train": {**PAPER, **_FLOW}, "sample": {"clip_sample_range": 1.25}}
RECIPES["unit_variance_rectified_flow"] = {"train": {"latent_scaling": "unit_variance", **_FLOW}, "sample": {"clip_sample_range": 1.25}}
RECIPES["unit_variance_rectified_flow_logit_normal"] = {
    "train": {**RECIPES["unit_variance_rectified_flow"]["train"], "timestep_sampling": "logit_normal"},
    "sample": RECIPES["unit_variance_rectified_flow"]["sample"]}
# the 64^3 unit-variance position code classifier (convergence_64_codes_diversity.md: diverse, mottled) with
# rectified flow (uniform timesteps, the better of the two densities at 32^3): the clean latent is the classifier's
# target on either path, so what changes is the noise path, the noise levels training visits and the sampler
RECIPES["rectified_flow_unit_variance_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"] = {
    "train": {**RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["train"],
              "noise_schedule": "rectified_flow"},
    "sample": RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["sample"]}
# the same unit-variance classifier with its denoiser under bfloat16 autocast (network_def#autocast_dtype, in training
# and sampling), trained with the bundles' latent cache (latent_cache_mb, on by default since 0.2.24; every earlier
# 64^3 run encoded every batch): its numbers met the at 1,800 iterations in 65 minutes on a faster day
# (convergence_64_codes_diversity.md); do both speed options bring that within the hour?
RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16"] = {
    "train": {**RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["train"],
              "network_def#autocast_dtype": "bfloat16"},
    "sample": RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes"]["sample"]}
# the bf16 classifier fed its own estimate of the clean latent (self-conditioning, Chen et al., ICLR 2023; part of
# Dieleman et al.'s continuous diffusion for categorical data): does deciding each step from the last one's expected
# codes turn its mottled inside into grey/white structure within the hour?
RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16_self_cond"] = {
    "train": {**RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16"]["train"],
              "self_conditioning": True},
    "sample": RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16"]["sample"]}
# the bf16 classifier's logits added to every code's exact log-likelihood at the noisy voxel (code_likelihood): its
# own logits named 74% of the codes of a barely noised latent right at 1,600 iterations, the likelihood alone 80%,
# the two added 97%; does the network, left to learn only what the context says, draw the grey/white pattern?
RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16_likelihood"] = {
    "train": {**RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16"]["train"],
              "code_likelihood": True},
    "sample": RECIPES["unit_variance_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes_bf16"]["sample"]}
# the DDPM's cosine schedule wherever a recipe does not name another: the demo's settings (the base at 32^3) used
# rectified flow in 0.2.22, and each recipe must mean the same whatever the base
for _recipe in RECIPES.values():
    _recipe["train"] = {"noise_schedule": "cosine", **_recipe["train"]}
SEED_CHANGE = 1000  # the first seed of the second seed set (the curves use 0 on)
CURVES = {  # ratio key in metrics.json -> label
    "histogram_jensen_shannon": "histogram Jensen-Shannon",
    "histogram_wasserstein": "histogram Wasserstein",
    "diversity_ms_ssim": "diversity (MS-SSIM)",
    "slice_consistency_ssim": "slice consistency",
    "sharpness": "sharpness",
}


def stage_settings(args: argparse.Namespace) -> dict:
    """Overrides by stage: the demo's at 32^3, ``benchmarks/quality.py``'s at 64^3."""
    if args.size == 32:
        from common.pipeline import DEMO_SETTINGS, V_PREDICTION_DENOISER, without_autoguidance

        settings = without_autoguidance(DEMO_SETTINGS[BUNDLE])  # the denoiser alone, as every recipe is measured
        settings["denoiser"].update(V_PREDICTION_DENOISER)  # the base the recipes' ids were written on
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import quality

        settings = quality.settings(argparse.Namespace(
            paper_widths=args.paper_widths, codes=1024, autoencoder_epochs=50, diffusion_epochs=1, batch_size=4,
            train=args.train, samples=args.samples,
        ))
    settings["inference"] = {**settings["inference"], "num_samples": args.samples}
    if args.downsample_factor:
        settings["shared"]["autoencoder_def#downsample_factor"] = args.downsample_factor
    if args.scale_equivariance:
        settings["autoencoder"]["scale_equivariance_weight"] = args.scale_equivariance
    return settings


def vqgan_weight(vqgan: Path) -> float:
    """The ``scale_equivariance_weight`` a workdir's VQ-GAN was trained with (``settings.json`` beside its models;
    0 for runs from before the option, whose VQ-GANs had no such term)."""
    settings = vqgan / "settings.json"
    return float(json.loads(settings.read_text())["scale_equivariance_weight"]) if settings.is_file() else 0.0


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sample_and_evaluate(run_stages, run_dir: Path, data: Path, settings: dict, overrides: dict, steps: int, seed: int = 0) -> dict:
    """Sample the seeds from ``seed`` on with ``steps`` DDIM steps and evaluate; the ratios, and the seconds per sample."""
    overrides = {**overrides, "num_inference_steps": steps, "seed": seed}
    start = time.time()
    run_stages(BUNDLE, str(run_dir), str(data / "train"), "inference", settings, overrides)
    seconds = (time.time() - start) / settings["inference"]["num_samples"]
    run_stages(BUNDLE, str(run_dir), str(data / "train"), "evaluation", settings, overrides)
    metrics = json.loads((run_dir / "samples" / "evaluation" / "metrics.json").read_text())
    return {**metrics["ratios_to_real"], "seconds_per_sample": seconds, "near_copies": len(metrics["memorisation_audit"]["near_copies"]),
            "reconstruction_psnr_db": metrics["reconstruction"]["psnr_db"]["mean"]}


def keep(args, rows: list[dict], sweep: list[dict]) -> None:
    """Every row measured so far in ``rows.json``, so that a long run that stops early still shows its curves."""
    (args.pictures / "rows.json").write_text(json.dumps({"curves": rows, "sweep": sweep}, indent=1) + "\n")


def train_recipes(args, settings, data, vqgan_models, common_overrides, run_stages) -> list[dict]:
    """Every recipe in chunks of ``--every`` iterations, each chunk followed by sampling and evaluation."""
    rows = []
    iterations_per_epoch = args.train // settings["diffusion"]["batch_size"]
    for name in args.recipes:
        recipe = RECIPES[name]
        length = args.lengths.get(name, args.iterations)
        decay = recipe.get("lr_decay")
        decay = {"lr_decay#final_ratio": decay["final_ratio"], "lr_decay#start_iteration": int(length * decay["from"]),
                 "lr_decay#end_iteration": length} if decay else {}
        run_dir = args.workdir / "recipes" / name
        (run_dir / "models").mkdir(parents=True, exist_ok=True)
        if name not in args.already:
            shutil.copy2(vqgan_models / "autoencoder.pt", run_dir / "models" / "autoencoder.pt")
        trained_minutes = 0.0
        for target in range(args.every, length + 1, args.every):
            if target <= args.already.get(name, (0, 0.0))[0]:  # trained by an earlier run into --workdir
                trained_minutes = args.already[name][1] * target / args.already[name][0]
                if target < args.already[name][0]:
                    continue
                found = sample_and_evaluate(run_stages, run_dir, data, settings, {**common_overrides, **recipe["train"], **recipe["sample"]}, args.steps)
                rows.append({"recipe": name, "iteration": target, "train_minutes": trained_minutes, "steps": args.steps, **found})
                keep(args, rows, [])
                shutil.copy(run_dir / "samples" / "evaluation" / "samples_and_real.png", args.pictures / f"{name}_{target}_samples_and_real.png")
                continue
            chunk = copy.deepcopy(settings)
            chunk["diffusion"].update({"train#trainer#max_epochs": target // iterations_per_epoch,
                                       "ema#start_iteration": args.iterations // 2})
            if args.guide_iteration:  # the snapshot that --autoguidance-scales samples with (models/guide.pt)
                chunk["diffusion"]["guide_iteration"] = args.guide_iteration
            start = time.time()
            run_stages(BUNDLE, str(run_dir), str(data / "train"), "diffusion", chunk,
                       {**common_overrides, **recipe["train"], **decay, "resume": target > args.every})
            trained_minutes += (time.time() - start) / 60
            found = sample_and_evaluate(run_stages, run_dir, data, settings, {**common_overrides, **recipe["train"], **recipe["sample"]}, args.steps)
            rows.append({"recipe": name, "iteration": target, "train_minutes": trained_minutes, "steps": args.steps, **found})
            keep(args, rows, [])
            shutil.copy(run_dir / "samples" / "evaluation" / "samples_and_real.png", args.pictures / f"{name}_{target}_samples_and_real.png")
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sweep_steps(args, settings, data, best: str, common_overrides, run_stages, curves: list[dict]) -> list[dict]:
    """The best recipe's last checkpoint sampled with each of ``--sweep-steps`` DDIM steps, and with the curves' steps
    from other seeds (``SEED_CHANGE`` on): how much the numbers move with the seeds alone, against which the fewer
    steps are judged. ``--sweep-overrides`` (inference.json ids) apply to every one of these samples. With
    ``--autoguidance-scales``, the curves' steps from both seed sets again, guided by the run's ``guide.pt`` at each
    scale (Karras et al., NeurIPS 2024: ``common.sampling.autoguidance``)."""
    rows = []
    recipe = RECIPES[best]
    run_dir = args.workdir / "recipes" / best
    guided = [{"guide_path": str(run_dir / "models" / "guide.pt"), "autoguidance_scale": scale} for scale in args.autoguidance_scales]
    plans = [*((s, 0, {}) for s in args.sweep_steps), (args.steps, SEED_CHANGE, {}),
             *((args.steps, seed, guide) for guide in guided for seed in (0, SEED_CHANGE))]
    given = "".join(f", {key} {value}" for key, value in args.sweep_overrides.items())  # the row's label
    given_suffix = "".join(f"_{key}_{value}" for key, value in args.sweep_overrides.items())  # its picture's name
    for steps, seed, guide in plans:
        found = sample_and_evaluate(run_stages, run_dir, data, settings,
                                    {**common_overrides, **recipe["train"], **recipe["sample"], **args.sweep_overrides, **guide}, steps, seed)
        extra = given + (f", autoguidance_scale {guide['autoguidance_scale']} (guide: iteration {args.guide_iteration})" if guide else "")
        rows.append({"recipe": f"{best}{extra}" + (f", seeds {seed}+" if seed else ""), "iteration": args.iterations, "steps": steps, **found})
        suffix = given_suffix + (f"_autoguidance_{guide['autoguidance_scale']}" if guide else "")
        shutil.copy(run_dir / "samples" / "evaluation" / "samples_and_real.png",
                    args.pictures / f"{best}_{steps}_steps{suffix}{'_seeds' if seed else ''}_samples_and_real.png")
        keep(args, curves, rows)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def describe(name: str) -> str:
    ids = {**RECIPES[name]["train"], **RECIPES[name]["sample"]}
    decay = RECIPES[name].get("lr_decay")
    decay = f" --lr_decay#final_ratio {decay['final_ratio']} (training; the decay from {decay['from']:.0%} of the run to its end)" if decay else ""
    return " ".join(f"--{k} {v}" for k, v in ids.items()) + decay


def closeness(row: dict) -> float:
    """How far a row is from real, in one number: the larger of the histogram ratios (1 is real-like)."""
    return max(row["histogram_jensen_shannon"] or float("inf"), row["histogram_wasserstein"] or float("inf"))


def best_recipe(rows: list[dict], iterations: int, recipes: list[str]) -> str | None:
    """Of ``recipes`` (this run's: an ``--earlier`` recipe's checkpoint in the workdir may since have trained on), the
    one whose row at ``iterations`` is the closest to real; None if none has one."""
    finals = {r["recipe"]: r for r in rows if r["iteration"] == iterations and r["recipe"] in recipes}
    return min(finals, key=lambda name: closeness(finals[name])) if finals else None


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES) + 1, figsize=(4 * (len(CURVES) + 1), 3.6))
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        for axis, key in zip(axes, CURVES):
            axis.plot([r["iteration"] for r in mine], [r[key] for r in mine], marker="o", label=name)
        axes[-1].plot([r["train_minutes"] for r in mine], [r["histogram_jensen_shannon"] for r in mine], marker="o", label=name)
    for axis, label in zip(axes, [*CURVES.values(), "histogram Jensen-Shannon"]):
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(f"{label} (x real)", fontsize=9)
        axis.set_xlabel("denoiser iterations" if axis is not axes[-1] else "training minutes")
    for axis in axes[:2]:
        axis.set_yscale("log")
    axes[-1].set_yscale("log")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def table(rows: list[dict], first: str) -> list[str]:
    def show(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [f"| {first} | iteration | training min | DDIM steps | s / sample | histogram JS | histogram W | diversity | "
             "slice consistency | sharpness | near copies |", "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['iteration']} | {show(r.get('train_minutes'))} | {r['steps']} | {r['seconds_per_sample']:.1f} | "
            f"{show(r['histogram_jensen_shannon'])} | {show(r['histogram_wasserstein'])} | {show(r['diversity_ms_ssim'])} | "
            f"{show(r['slice_consistency_ssim'])} | {show(r['sharpness'])} | {r['near_copies']} |"
        )
    return lines


def earlier_vqgan(earlier: list[dict], rows: list[dict]) -> str:
    """Whether an earlier run's curves share this run's VQ-GAN: its reconstructions of the held-out brains, measured
    with every row, are the same (identical sharpness) only if the VQ-GAN is."""
    def sharpness(found: list[dict]) -> set[float]:
        return {round(r["reconstruction_sharpness"], 6) for r in found if r.get("reconstruction_sharpness") is not None}

    before, now = sharpness(earlier), sharpness([r for r in rows if r not in earlier])
    if before and before == now:
        return "the same VQ-GAN, data and seeds"
    shown = ", ".join(f"{v:.2f}x" for v in sorted(before)) or "not recorded"
    return (f"the same data and seeds, but another training of the same VQ-GAN settings: reconstruction sharpness "
            f"{shown} there against {', '.join(f'{v:.2f}x' for v in sorted(now))} here, so the curves differ by the "
            "VQ-GAN's training too")


def write_report(args, rows: list[dict], sweep: list[dict], best: str, settings: dict, revision: str, minutes: float | None,
                 vqgan_minutes: float | None) -> str:
    """``convergence.md``: the command, the setup, the curves' table and the sampling-steps table."""
    import torch

    from common.io import write_text

    lines = [
        f"# Convergence of the diffusion recipes: brain_mri at {args.size}^3",
        "",
        f"Command: `python benchmarks/convergence.py {shlex.join(sys.argv[1:])}` (commit {revision}). Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} "
        f"threads, device {args.device}, torch {torch.__version__}. "
        + (f"Wall time {minutes:.1f} min (VQ-GAN {'reused from --workdir' if vqgan_minutes is None else f'{vqgan_minutes:.1f} min'})."
           if minutes is not None else "Report written again from the run's rows.json (`--report-only`): its wall time is not recorded."),
        "",
        f"Data: {args.train} training and {args.heldout} held-out subjects of the real-anatomy population; settings "
        f"{'of the demo (common.pipeline.DEMO_SETTINGS)' if args.size == 32 else 'of benchmarks/quality.py'}; one VQ-GAN, "
        f"every recipe's denoiser from the same start on its latents, batch {settings['diffusion']['batch_size']}, EMA from "
        f"iteration {args.iterations // 2}; {args.samples} samples of the same seeds at every point, DDIM {args.steps} steps. "
        "Ratios to real (about 1 is real-like; for the histogram distances the real value is half of the real "
        "volumes against the other half, so below 1 is as close as real data are to each other).",
        "",
        # this run's VQ-GAN: the rows of --earlier come from another run's, which may be another training
        *(line for recon in [r for r in rows + sweep if "reconstruction_psnr_db" in r and r["recipe"] in args.recipes][:1]
          for line in (
            f"The VQ-GAN (compression {settings['shared']['autoencoder_def#downsample_factor']} per axis) reconstructs the "
            f"held-out brains at {recon['reconstruction_psnr_db']:.1f} dB, sharpness {recon['reconstruction_sharpness']:.2f}x real"
            + (f" (trained with --scale_equivariance_weight {args.scale_equivariance})." if args.scale_equivariance else "."), "")),
        "Recipes (config ids): " + "; ".join(f"`{name}`: {describe(name)}" for name in dict.fromkeys(r["recipe"] for r in rows)) + ".",
        *(["", f"The curves of {', '.join(sorted({r['recipe'] for r in args.earlier_rows}))} come from an earlier run "
           f"(`--earlier {args.earlier.name}`: {earlier_vqgan(args.earlier_rows, rows)}); its training minutes were "
           "measured then, under that day's load.", ""] if args.earlier_rows else []),
        "",
        *table(rows, "recipe"),
        "",
        f"Fewer sampling steps, `{best}` (of this run's recipes the closest to real at {args.iterations} iterations) from its last checkpoint; the "
        f"row of other seeds ({SEED_CHANGE} on) with {args.steps} steps measures, by its distance from the curves' last "
        f"`{best}` row, the noise of a seed change"
        + (f"; the rows with an autoguidance_scale sample the same checkpoint guided by its own weights after iteration "
           f"{args.guide_iteration} (`--guide_path <run>/models/guide.pt`), from both seed sets" if args.autoguidance_scales else "")
        + (f"; every one of these samples with {', '.join(f'--{k} {v}' for k, v in args.sweep_overrides.items())}" if args.sweep_overrides else "")
        + ":",
        "",
        *table(sweep, "recipe"),
        "",
        f"Pictures (`{args.pictures.name}/`, beside this file): `curves.png`, and each recipe's samples at each point beside real brains "
        "(`<recipe>_<iteration>_samples_and_real.png`, `<recipe>_<steps>_steps_samples_and_real.png`).",
    ]
    text = "\n".join(lines) + "\n"
    write_text(text, args.out)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, choices=(32, 64), default=32, help="32: the demo's settings; 64: the paper's size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper-widths", action="store_true", help="with --size 64: the paper's widths (for a GPU)")
    parser.add_argument("--recipes", default="paper,v_prediction,unit_variance_v",
                        help=f"comma-separated, of {', '.join(RECIPES)}; name:N trains that one only N iterations (EMA as the others)")
    parser.add_argument("--iterations", type=int, default=900, help="denoiser iterations of each recipe")
    parser.add_argument("--every", type=int, default=300, help="sample and evaluate every this many iterations")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps of the curves' samples")
    parser.add_argument("--sweep-steps", default="10,25", help="DDIM steps tried on the best recipe's last checkpoint")
    parser.add_argument("--train", type=int, default=20, help="training subjects")
    parser.add_argument("--heldout", type=int, default=8, help="held-out subjects")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--autoencoder-epochs", type=int, help="VQ-GAN epochs (default: the settings')")
    parser.add_argument("--autoencoder-lr", type=float, help="the VQ-GAN's learning rate (default: the settings', 1e-3; "
                        "at --downsample-factor 4 it saturates the decoder's tanh within 10 iterations: use 3e-4)")
    parser.add_argument("--downsample-factor", type=int, choices=(2, 4), help="the VQ-GAN's compression per axis (default: the "
                        "settings', 2 as the paper's brain model); 4 gives a latent of 1/8 the voxels (use another --workdir)")
    parser.add_argument("--scale-equivariance", type=float, default=0.0, help="the VQ-GAN's scale_equivariance_weight (default 0, "
                        "the paper's objective); > 0 trains a VQ-GAN whose latents hold less power in fine frequencies (use another --workdir)")
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--report-only", action="store_true", help="only write the report again from rows.json of an earlier "
                        "run (same --out, --recipes, --iterations and --earlier): nothing is trained or sampled")
    rerun.add_argument("--sweep-only", action="store_true", help="the curves from rows.json of an earlier run (same --out, "
                        "--workdir), then only the sweep of the steps and seeds")
    parser.add_argument("--sweep-overrides", type=json.loads, default={}, help="JSON of inference.json ids the sweep's "
                        "samples take on top of the recipe's, e.g. '{\"ddim_eta\": 1.0}'")
    parser.add_argument("--guide-iteration", type=int, help="every recipe's training keeps its weights after this many "
                        "iterations as models/guide.pt (guide_iteration): the guide of --autoguidance-scales")
    parser.add_argument("--autoguidance-scales", default="", help="comma-separated scales > 1: the sweep also samples the best "
                        "recipe's last checkpoint guided by its guide.pt (guide_path, autoguidance_scale), both seed sets")
    parser.add_argument("--already", default="", help="name:iterations:minutes,...: recipes an interrupted run into --workdir "
                        "trained that far in that many minutes; they continue from their checkpoint (--resume)")
    parser.add_argument("--earlier", type=Path, help="rows.json of an earlier run into the same --workdir (the same VQ-GAN, data "
                        "and seeds): its curves are shown beside this run's")
    parser.add_argument("--workdir", type=Path, default=REPO / "convergence_run", help="data, the VQ-GAN and every recipe's run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "convergence.md")
    args = parser.parse_args()
    given = [r.strip().split(":") for r in args.recipes.split(",") if r.strip()]
    args.recipes = [g[0] for g in given]
    args.lengths = {g[0]: int(g[1]) for g in given if len(g) == 2 and g[1].isdigit()}
    unknown = sorted(set(args.recipes) - set(RECIPES)) + [":".join(g) for g in given if len(g) > 2 or (len(g) == 2 and not g[1].isdigit())]
    if unknown or args.every < 1 or any(n % args.every or n > args.iterations for n in [args.iterations, *args.lengths.values()]):
        parser.error(f"unknown recipes {unknown}" if unknown else "--iterations (and every name:N) must be a multiple of --every, N at most --iterations")
    if all(args.lengths.get(name, args.iterations) < args.iterations for name in args.recipes):
        parser.error("at least one recipe must train all --iterations")
    if not 0 <= args.scale_equivariance < float("inf"):
        parser.error(f"--scale-equivariance must be a finite weight >= 0, got {args.scale_equivariance}")
    args.sweep_steps = [int(s) for s in args.sweep_steps.split(",") if s.strip()]
    args.autoguidance_scales = [float(s) for s in args.autoguidance_scales.split(",") if s.strip()]
    if any(not 1 < scale < float("inf") for scale in args.autoguidance_scales):
        parser.error(f"--autoguidance-scales must be finite scales > 1 (1 is the denoiser alone), got {args.autoguidance_scales}")
    if args.guide_iteration is not None and not 0 < args.guide_iteration < args.iterations:
        parser.error(f"--guide-iteration must be between 0 and --iterations {args.iterations} (exclusive), got {args.guide_iteration}")
    if args.autoguidance_scales and args.guide_iteration is None:
        parser.error("--autoguidance-scales needs --guide-iteration: the iteration whose snapshot the training kept as the guide")
    if not isinstance(args.sweep_overrides, dict):
        parser.error(f"--sweep-overrides must be a JSON object of inference.json ids, got {args.sweep_overrides!r}")
    args.already = {a.split(":")[0]: (int(a.split(":")[1]), float(a.split(":")[2])) for a in args.already.split(",") if a.strip()}
    args.out = args.out.resolve()
    args.earlier_rows = json.loads(args.earlier.read_text())["curves"] if args.earlier else []
    overlap = sorted({r["recipe"] for r in args.earlier_rows} & set(args.recipes))
    if overlap:
        parser.error(f"--earlier already has curves of {overlap}; train other recipes beside them")
    args.pictures = args.out.parent / args.out.stem
    args.pictures.mkdir(parents=True, exist_ok=True)

    from common.data import brain_demo_datalist, brain_demo_heldout_datalist
    from common.pipeline import run_stages

    started, revision = time.time(), commit()
    settings = stage_settings(args)
    if args.report_only:  # a run that stopped after its last row (or wrote an unreadable report): its rows, reported
        if not (args.pictures / "rows.json").is_file():
            parser.error(f"--report-only: no {args.pictures / 'rows.json'} of an earlier run with this --out")
        saved = json.loads((args.pictures / "rows.json").read_text())
        best = best_recipe(saved["curves"], args.iterations, args.recipes)
        if best is None:
            parser.error(f"{args.pictures / 'rows.json'} has no row at --iterations {args.iterations}")
        if (args.workdir / "vqgan").is_dir() and vqgan_weight(args.workdir / "vqgan") != args.scale_equivariance:
            parser.error(f"--report-only: the VQ-GAN in {args.workdir / 'vqgan'} was trained with scale_equivariance_weight "
                         f"{vqgan_weight(args.workdir / 'vqgan')}: give that --scale-equivariance")
        plot_curves(saved["curves"], args.pictures / "curves.png")
        print(write_report(args, saved["curves"], saved["sweep"], best, settings, revision, None, None))
        return
    if args.autoencoder_epochs:
        settings["autoencoder"]["train#trainer#max_epochs"] = args.autoencoder_epochs
    if args.autoencoder_lr:
        settings["autoencoder"]["lr"] = args.autoencoder_lr
    data = args.workdir / "data"
    brain_demo_datalist(data, count=args.train, seed=0)  # the demo's population
    brain_demo_heldout_datalist(data, count=args.heldout, seed=0)
    common_overrides = {"heldout_dir": str(data / "heldout"), "device": f"$torch.device('{args.device}')",
                        "cache_dir": str(args.workdir / "cache")}
    vqgan = args.workdir / "vqgan"
    vqgan_start, vqgan_minutes = time.time(), None
    if not (vqgan / "models" / "autoencoder.pt").is_file():
        run_stages(BUNDLE, str(vqgan), str(data / "train"), "autoencoder", settings, common_overrides)
        vqgan_minutes = (time.time() - vqgan_start) / 60
        (vqgan / "settings.json").write_text(json.dumps({"scale_equivariance_weight": args.scale_equivariance}) + "\n")
    trained_with = vqgan_weight(vqgan)
    if trained_with != args.scale_equivariance:
        parser.error(f"the VQ-GAN in {vqgan} was trained with scale_equivariance_weight {trained_with}, not the "
                     f"--scale-equivariance {args.scale_equivariance} asked for: use another --workdir")
    if args.sweep_only:  # the curves of an earlier run into --workdir and --out, then the sweep
        rows = json.loads((args.pictures / "rows.json").read_text())["curves"]
    else:
        rows = args.earlier_rows + train_recipes(args, settings, data, vqgan / "models", common_overrides, run_stages)
    best = best_recipe(rows, args.iterations, args.recipes)
    sweep = sweep_steps(args, settings, data, best, common_overrides, run_stages, rows)
    plot_curves(rows, args.pictures / "curves.png")

    report = write_report(args, rows, sweep, best, settings, revision, (time.time() - started) / 60, vqgan_minutes)
    print(report)


if __name__ == "__main__":
    main()

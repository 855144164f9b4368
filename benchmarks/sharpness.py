"""Where do the demo's samples lose their sharpness, and what brings it back? Three parts, each judged against
held-out brains (sharpness: the share of spectral power above 0.25 cycles per voxel, as a ratio to the real brains'
own; 1 is as sharp as real):

- the VQ-GAN: variants of its training (``train_autoencoder.json`` overrides) trained side by side on the demo's
  brains (32^3, ``common.pipeline.DEMO_SETTINGS``; with ``--size 64`` at the paper's brain size with
  ``benchmarks/quality.py``'s settings), each reconstructing held-out brains it never saw (PSNR, SSIM, sharpness);
- the sampler: the denoiser a demo trained (``--demo-output``, the folder ``python -m common demo --output_dir``
  wrote) sampled with the same seeds by each sampler variant (``inference.json`` overrides) and evaluated with
  ``evaluate.json`` (sharpness beside the histogram, diversity and slice-consistency ratios); then its latents
  against the held-out brains' latents, and their images by spectral band: is the detail lost in the latents or
  when the decoder renders them?

    python benchmarks/sharpness.py                                        # every VQ-GAN variant, 4 to 14 minutes each here
    python benchmarks/sharpness.py --variants none --demo-output demo_output   # the sampler variants, about 6 minutes

Every variant runs the brain_mri bundle's own configs (``common.pipeline.run_stages``), so each is one
``python -m monai.bundle run`` option, except one that the bundles do not offer, set by the benchmark:
``gan_adaptive_tenth_tanh_hinge`` (the discriminators on MONAI's tanh hinge of 0.2.15, ``benchmarks/gan_hinge.md``).
``--reuse`` does not know which hinge an earlier run trained with: reuse only a --workdir trained by this version.
Writes ``sharpness.md``,
``sharpness/reconstructions.png``, each sampler variant's samples beside real brains and ``rows.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from convergence import commit, sample_and_evaluate

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "brain_mri"

# train_autoencoder.json overrides of each VQ-GAN variant, on top of the demo's
VARIANTS: dict[str, dict] = {
    # the demo as it is: its 2,000 iterations end before the paper's adversarial_start (10,000), so it trains
    # with the L1 and codebook losses only
    "demo": {},
    # the demo's VQ-GAN length until sharpness_vqgan.md measured twice that
    "iterations_1000": {"train#trainer#max_epochs": 100},
    # the paper's adversarial and feature-matching losses (image and volume discriminators, their weights) from
    # iteration 500 on: the part of the paper's VQ-GAN that is there for sharpness
    "gan_from_500": {"adversarial_start": 500},
    # the same at a tenth of the paper's adversarial and feature-matching weights, in 1,000 iterations
    "gan_from_500_tenth": {"adversarial_start": 500, "loss#image_gan_weight": 0.1, "loss#volume_gan_weight": 0.1,
                           "loss#feature_matching_weight": 1.6, "train#trainer#max_epochs": 100},
    # four and eight times the demo's 512 codes (the paper's codebook has 16,384): more bits per latent voxel
    "codes_2048": {"autoencoder_def#num_embeddings": 2048},
    "codes_4096": {"autoencoder_def#num_embeddings": 4096},
    # the paper's GAN from iteration 1,000 at a tenth of its weights, with discriminators normalised per instance
    # (BatchNorm's statistics over a batch of 2 differ between the real and the reconstructed batch) ...
    "gan_tenth_instance_norm": {"adversarial_start": 1000, "loss#image_gan_weight": 0.1, "loss#volume_gan_weight": 0.1,
                                "loss#feature_matching_weight": 1.6, "image_discriminator#norm": "INSTANCE",
                                "volume_discriminator#norm": "INSTANCE"},
    # ... and the same with the discriminators at a tenth of the autoencoder's learning rate
    "gan_tenth_instance_norm_slow_d": {"adversarial_start": 1000, "loss#image_gan_weight": 0.1, "loss#volume_gan_weight": 0.1,
                                       "loss#feature_matching_weight": 1.6, "image_discriminator#norm": "INSTANCE",
                                       "volume_discriminator#norm": "INSTANCE", "discriminator_optimizer#lr": 1e-4},
    # the paper's GAN from iteration 1,000 with its terms balanced against the reconstruction's gradient at the
    # decoder's last layer (Esser et al., 2021): at the paper's weights, and at a tenth of them
    "gan_adaptive": {"adversarial_start": 1000, "loss#adaptive_adversarial_weight": True},
    "gan_adaptive_tenth": {"adversarial_start": 1000, "loss#adaptive_adversarial_weight": True, "loss#image_gan_weight": 0.1,
                           "loss#volume_gan_weight": 0.1, "loss#feature_matching_weight": 1.6},
    # the same with the discriminators' hinge of latent bundles 0.2.15 and before: MONAI's PatchAdversarialLoss, a
    # tanh on the logits first (set by the benchmark; the bundles now use the hinge on the raw logits, the paper's)
    "gan_adaptive_tenth_tanh_hinge": {"adversarial_start": 1000, "loss#adaptive_adversarial_weight": True,
                                      "loss#image_gan_weight": 0.1, "loss#volume_gan_weight": 0.1,
                                      "loss#feature_matching_weight": 1.6},
    # the last tenth of the run trains the decoder alone on a frozen encoder and codebook (VQGANTrainer's
    # frozen_codebook_iterations): of the demo's 2,000 iterations, and of the 500 at --size 64
    "frozen_codebook_200": {"frozen_codebook_iterations": 200},
    "frozen_codebook_50": {"frozen_codebook_iterations": 50},
}
TANH_HINGE = {"gan_adaptive_tenth_tanh_hinge"}
# inference.json overrides of each sampler variant, on top of the demo's (DDIM 100, EMA weights, x0 clipped to 1.25)
SAMPLERS: dict[str, dict] = {
    "ddim_100": {},
    "ddim_100_eta_1": {"ddim_eta": 1.0},  # stochastic DDIM, as random as DDPM
    "ddpm_300": {"num_inference_steps": 300},  # the paper's sampler: ancestral DDPM over every training step
    "ddim_25": {"num_inference_steps": 25},
    "clip_2": {"clip_sample_range": 2.0},
    "without_ema": {"network": "$common.checkpoints.load_weights(@network_def, @diffusion_path, 'network', @model_settings).to(@device)"},
}
REUSED = " (measuring only: the VQ-GANs were trained by an earlier run into the same --workdir; their minutes are that run's)"


@contextmanager
def tanh_hinge(active: bool):
    """While the block runs, the discriminators train with MONAI's ``PatchAdversarialLoss("hinge")``, which passes
    the logits through a tanh before the hinge (the bundles' loss until 0.2.15), instead of the hinge on the raw
    logits (``common.losses.hinge_discriminator_loss``)."""
    if not active:
        yield
        return
    from monai.losses import PatchAdversarialLoss

    from common import losses

    original, adversarial = losses.hinge_discriminator_loss, PatchAdversarialLoss(criterion="hinge")

    def through_tanh(real_logits, fake_logits):
        return 0.5 * (adversarial(real_logits, target_is_real=True, for_discriminator=True)
                      + adversarial(fake_logits, target_is_real=False, for_discriminator=True))

    losses.hinge_discriminator_loss = through_tanh
    try:
        yield
    finally:
        losses.hinge_discriminator_loss = original


def measure(run_dir: Path, data: Path, settings: dict, device: str, variant: dict | None = None) -> tuple[dict, "object", "object"]:
    """Held-out PSNR, SSIM and sharpness ratio of the VQ-GAN in ``run_dir``; and one held-out brain with its
    reconstruction, for the picture. ``variant``: the variant's overrides, of which those of the network's
    definition (``autoencoder_def#...``) build the network its weights load into."""
    import torch
    from monai.bundle import ConfigParser

    from common.checkpoints import load_weights
    from common.evaluation import metrics
    from common.evaluation.synthetic import SHARPNESS_CUTOFF
    from common.networks import CodebookRangeAutoencoder
    from common.pipeline import config_files_of

    configs = REPO / "bundles" / BUNDLE / "configs"
    parser = ConfigParser()
    parser.read_config(config_files_of(configs)["evaluation"])
    parser.update({"bundle_root": str(configs.parent), "ckpt_dir": str(run_dir / "models"), "dataset_dir": str(data / "train"),
                   "heldout_dir": str(data / "heldout"), "output_dir": str(run_dir), "device": f"$torch.device('{device}')",
                   **settings["shared"], **{k: v for k, v in (variant or {}).items() if k.startswith("autoencoder_def#")}})
    autoencoder = CodebookRangeAutoencoder(load_weights(parser.get_parsed_content("autoencoder_def"),
                                                        str(run_dir / "models" / "autoencoder.pt"), "autoencoder")).eval()
    volumes = torch.stack([item["image"] for item in parser.get_parsed_content("heldout_dataset")]).float()
    with torch.no_grad():
        rebuilt = torch.cat([autoencoder(v[None]) for v in volumes]).clamp(-1, 1)
    real, made = metrics.high_frequency_share(volumes, SHARPNESS_CUTOFF), metrics.high_frequency_share(rebuilt, SHARPNESS_CUTOFF)
    return {
        "psnr_db": float(metrics.psnr(rebuilt, volumes).mean()),
        "ssim": float(metrics.ssim(rebuilt, volumes).mean()),
        "sharpness": float(made.mean() / real.mean()),
        "sharpness_range": [float((made / real).min()), float((made / real).max())],
    }, volumes[0, 0].numpy(), rebuilt[0, 0].numpy()


def picture(pairs: list[tuple[str, "object", "object"]], path: Path) -> None:
    """One row per variant: the middle axial slice of a held-out brain, its reconstruction and their difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(pairs), 3, figsize=(7.5, 2.6 * len(pairs)), squeeze=False)
    for row, (name, real, made) in zip(axes, pairs):
        middle = real.shape[2] // 2
        for axis, image, title in zip(row, (real[:, :, middle], made[:, :, middle], made[:, :, middle] - real[:, :, middle]),
                                      ("held-out brain", f"{name}: reconstruction", "difference")):
            axis.imshow(image.T, cmap="gray" if title != "difference" else "coolwarm", origin="lower",
                        vmin=-1 if title != "difference" else -0.5, vmax=1 if title != "difference" else 0.5)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train_and_measure_vqgans(args, settings: dict, data: Path) -> tuple[list[dict], list]:
    """Each VQ-GAN variant trained (or reused with ``--reuse``) and measured on the held-out brains."""
    from common.pipeline import run_stages

    rows, pairs = [], []
    for name in args.variants:
        run_dir = args.workdir / name
        trained = run_dir / "training_minutes.json"
        if args.reuse and trained.is_file():  # trained by an earlier run into --workdir, with the same settings
            minutes = json.loads(trained.read_text())["minutes"]
        else:
            start = time.time()
            with tanh_hinge(name in TANH_HINGE):
                run_stages(BUNDLE, str(run_dir), str(data / "train"), "autoencoder", settings,
                           {"heldout_dir": str(data / "heldout"), "device": f"$torch.device('{args.device}')", **VARIANTS[name]})
            minutes = (time.time() - start) / 60
            trained.write_text(json.dumps({"minutes": minutes}) + "\n")
        found, real, made = measure(run_dir, data, settings, args.device, VARIANTS[name])
        rows.append({"variant": name, "minutes": minutes, **found})
        pairs.append((name, real, made))
        print(json.dumps(rows[-1]), flush=True)
    return rows, pairs


def sample_with_each_sampler(args, settings: dict) -> list[dict]:
    """The demo's denoiser in ``--demo-output`` sampled with each sampler variant, the same seeds, and evaluated."""
    from common.pipeline import run_stages

    data = args.demo_output / "demo_data"
    rows = []
    for name in args.samplers:
        run_dir = args.workdir / "samplers" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "models").is_symlink():  # an earlier run's, perhaps of another --demo-output
            (run_dir / "models").unlink()
        (run_dir / "models").symlink_to((args.demo_output / "models").resolve(), target_is_directory=True)
        overrides = {"heldout_dir": str(data / "heldout"), "device": f"$torch.device('{args.device}')", **SAMPLERS[name]}
        steps = SAMPLERS[name].get("num_inference_steps", settings["inference"]["num_inference_steps"])
        found = sample_and_evaluate(run_stages, run_dir, data, settings, overrides, steps)
        rows.append({"sampler": name, **found})
        shutil.copy(run_dir / "samples" / "evaluation" / "samples_and_real.png", args.pictures / f"{name}_samples_and_real.png")
        print(json.dumps(rows[-1]), flush=True)
    return rows


BANDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # lower edges of the spectral bands (cycles per voxel), each 0.1 wide


def band_powers(volumes) -> list[float]:
    """Mean spectral power (the volume's mean removed) of ``volumes`` (N, 1, H, W, D) in each band of ``BANDS``."""
    from common.evaluation.metrics import power_spectrum

    power, frequency = power_spectrum(volumes)
    return [float(power[:, (frequency > low) & (frequency <= low + 0.1)].sum(1).mean()) for low in BANDS]


def where_the_detail_goes(args, settings: dict) -> dict:
    """The demo's latents and images compared with the real ones: is the sharpness lost in the denoiser's latents
    (less high-frequency power there than in the real latents) or when the decoder renders them?

    The denoiser's latents of the demo's seeds are MONAI's ``DiffusionInferer.sample`` with the demo's steps (what
    ``LatentSampler`` runs, without the decoding), decoded as the sampler decodes them (quantised) and unquantised."""
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import DiffusionInferer

    from common.evaluation import metrics
    from common.evaluation.synthetic import SHARPNESS_CUTOFF
    from common.pipeline import config_files_of
    from common.sampling.loop import starting_noise

    configs = REPO / "bundles" / BUNDLE / "configs"
    data = args.demo_output / "demo_data"
    parser = ConfigParser()
    parser.read_config(config_files_of(configs)["evaluation"])
    parser.update({"bundle_root": str(configs.parent), "ckpt_dir": str(args.demo_output / "models"), "dataset_dir": str(data / "train"),
                   "heldout_dir": str(data / "heldout"), "output_dir": str(args.workdir / "latents"), "device": f"$torch.device('{args.device}')",
                   **settings["shared"], **settings["denoiser"], **settings["inference"]})
    sampler = parser.get_parsed_content("sampler")
    autoencoder = sampler.autoencoder.eval()
    real = torch.stack([item["image"] for item in parser.get_parsed_content("heldout_dataset")]).float()
    noise = torch.stack([starting_noise(sampler.latent_shape, seed) for seed in range(settings["inference"]["num_samples"])])
    with torch.no_grad():
        real_latents = torch.cat([autoencoder.encode_stage_2_inputs(v[None]) for v in real])
        sampler.network.eval()  # sampled as LatentSampler samples it: through the expected code of a code classifier
        sample_latents = DiffusionInferer.sample(sampler.inferer, input_noise=noise, diffusion_model=sampler.denoiser,
                                                 scheduler=sampler.inferer.scheduler, verbose=False)
        rebuilt = torch.cat([autoencoder.decode_stage_2_outputs(z[None]) for z in real_latents]).clamp(-1, 1)
        samples = torch.cat([autoencoder.decode_stage_2_outputs(z[None]) for z in sample_latents]).clamp(-1, 1)
        unquantised = torch.cat([autoencoder.autoencoder.decode(autoencoder.denormalize(z[None] / autoencoder.latent_scale.factor()))
                                 for z in sample_latents]).clamp(-1, 1)

    def code_distance(latents) -> float:  # mean absolute distance of each latent vector from its nearest code
        denormalised = autoencoder.denormalize(latents / autoencoder.latent_scale.factor())
        return float((denormalised - autoencoder.quantize(denormalised)).abs().mean())

    def latent_share(latents) -> float:  # the mean over channels of each channel's high-frequency share
        return float(torch.stack([metrics.high_frequency_share(latents[:, c : c + 1], SHARPNESS_CUTOFF) for c in range(latents.shape[1])]).mean())

    def image_share(volumes) -> float:
        return float(metrics.high_frequency_share(volumes, SHARPNESS_CUTOFF).mean())

    return {
        "latent_std": {"real": float(real_latents.std()), "samples": float(sample_latents.std())},
        "latent_sharpness": {"real": latent_share(real_latents), "samples": latent_share(sample_latents)},
        "nearest_code_distance": {"real": code_distance(real_latents), "samples": code_distance(sample_latents)},
        "image_sharpness": {"real": image_share(real), "reconstructions": image_share(rebuilt), "samples": image_share(samples),
                            "samples_unquantised": image_share(unquantised)},
        "band_power": {"real": band_powers(real), "reconstructions": band_powers(rebuilt), "samples": band_powers(samples)},
    }


def report(args, settings: dict, vqgans: list[dict], samplers: list[dict], detail: dict, minutes: float) -> list[str]:
    """``sharpness.md``'s lines."""
    import torch

    def chosen(flag: str, names: list[str], every: dict) -> str:  # the option as given, or nothing for the default
        return "" if names == list(every) else f" --{flag} {','.join(names) or 'none'}"

    options = chosen("variants", args.variants, VARIANTS) + (chosen("samplers", args.samplers, SAMPLERS) if args.demo_output else "")
    options += (f" --size {args.size}" if args.size != 32 else "") + (f" --epochs {args.epochs}" if args.epochs else "") + (" --reuse" if args.reuse else "")
    options += f" --demo-output {args.demo_output.name}" if args.demo_output else ""
    count = settings["inference"]["num_samples"]
    lines = [
        f"# Where the {'demo' if args.size == 32 else 'paper-size'} samples lose their sharpness (brain_mri, {args.size}^3)", "",
        f"Command: `python benchmarks/sharpness.py{options}` (commit {commit()}). Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, torch {torch.__version__}. Wall time {minutes:.1f} min"
        f"{REUSED if args.reuse and vqgans else ''}.", "",
        "Sharpness: the share of spectral power above 0.25 cycles per voxel, as a ratio to the held-out brains' own (1: as "
        "sharp as real; the evaluation's `sharpness` and `reconstruction_sharpness`).", "",
    ]
    if vqgans:
        iterations = settings["autoencoder"]["train#trainer#max_epochs"] * args.train // 2  # train_autoencoder's batch_size 2
        lines += [
            "## The VQ-GAN", "",
            f"Data: {args.train} training and {args.heldout} held-out subjects of the demo's population; "
            f"{'the demo' if args.size == 32 else 'benchmarks/quality.py'}'s VQ-GAN settings at {args.size}^3, {iterations} iterations "
            "of batch 2, every variant from the same initial weights and data order; reconstructions of the held-out brains.", "",
            "Variants (train_autoencoder.json overrides): " + "; ".join(
                f"`{n}`: {' '.join(f'--{k} {v}' for k, v in VARIANTS[n].items()) or ('the demo as it is' if args.size == 32 else 'the settings as they are')}"
                f"{' (discriminators trained with MONAI tanh hinge, set by the benchmark)' if n in TANH_HINGE else ''}" for n in args.variants) + ".", "",
            "| variant | training min | held-out PSNR dB | held-out SSIM | sharpness (x real) | per brain |",
            "|---|---|---|---|---|---|",
            *(f"| {r['variant']} | {r['minutes']:.1f} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['sharpness']:.2f} | "
              f"{r['sharpness_range'][0]:.2f} to {r['sharpness_range'][1]:.2f} |" for r in vqgans), "",
            f"Picture: `{args.pictures.name}/reconstructions.png` (the middle axial slice of a held-out brain, each variant's "
            "reconstruction and the difference).", "",
        ]
    if samplers:
        lines += [
            "## The sampler", "",
            f"The denoiser and VQ-GAN of a demo run (`python -m common demo --output_dir {args.demo_output.name}`), "
            f"{count} samples of seeds 0 to {count - 1} for each variant, evaluated against the demo's held-out brains. Variants "
            "(inference.json overrides): " + "; ".join(
                f"`{n}`: {' '.join(f'--{k} {v}' for k, v in SAMPLERS[n].items()) or 'the demo as it is'}"
                for n in args.samplers) + ".", "",
            "| sampler | s / sample | sharpness | reconstruction sharpness | histogram JS | histogram W | diversity | slice consistency |",
            "|---|---|---|---|---|---|---|---|",
            *(f"| {r['sampler']} | {r['seconds_per_sample']:.1f} | {r['sharpness']:.2f} | {r['reconstruction_sharpness']:.2f} | "
              f"{r['histogram_jensen_shannon']:.2f} | {r['histogram_wasserstein']:.2f} | {r['diversity_ms_ssim']:.2f} | "
              f"{r['slice_consistency_ssim']:.2f} |" for r in samplers), "",
            f"Pictures: `{args.pictures.name}/<sampler>_samples_and_real.png`.", "",
        ]
    if detail:
        from common.evaluation.synthetic import SHARPNESS_CUTOFF

        ratio = lambda a, b: f"{a / b:.2f}x"  # noqa: E731
        latent, image, bands = detail["latent_sharpness"], detail["image_sharpness"], detail["band_power"]
        lines += [
            "## Where the detail goes", "",
            f"The same demo model's latents of seeds 0 to {count - 1} (DDIM {settings['inference']['num_inference_steps']}) against the held-out brains' latents, and their "
            "images (sharpness as a ratio to the held-out brains):", "",
            "| | held-out real | measured | measured / real |", "|---|---|---|---|",
            f"| latent standard deviation: the samples' latents | {detail['latent_std']['real']:.3f} | {detail['latent_std']['samples']:.3f} | "
            f"{ratio(detail['latent_std']['samples'], detail['latent_std']['real'])} |",
            f"| latent sharpness (each channel's share of power above {SHARPNESS_CUTOFF} cycles per latent voxel, mean): the "
            f"samples' latents | {latent['real']:.4f} | {latent['samples']:.4f} | {ratio(latent['samples'], latent['real'])} |",
            f"| mean distance of a latent vector from its nearest code (codebook units) | {detail['nearest_code_distance']['real']:.4f} | "
            f"{detail['nearest_code_distance']['samples']:.4f} | "
            f"{ratio(detail['nearest_code_distance']['samples'], detail['nearest_code_distance']['real'])} |",
            *(f"| image sharpness: {what} | {image['real']:.4f} | {image[key]:.4f} | {ratio(image[key], image['real'])} |"
              for what, key in (("the samples, decoded as sampled (quantised)", "samples"),
                                ("the samples, decoded unquantised", "samples_unquantised"),
                                ("the held-out brains' reconstructions", "reconstructions"))), "",
            "Image power by band (cycles per voxel), as a ratio to the held-out brains':", "",
            "| band | " + " | ".join(f"{low:.1f}-{low + 0.1:.1f}" for low in BANDS) + " |", "|---|" + "---|" * len(BANDS),
            *(f"| {name} | " + " | ".join(ratio(b, r) for b, r in zip(bands[key], bands["real"])) + " |"
              for name, key in (("reconstructions", "reconstructions"), ("samples", "samples"))), "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"VQ-GAN variants, comma-separated, of {', '.join(VARIANTS)}; none: skip")
    parser.add_argument("--samplers", help=f"sampler variants (with --demo-output), of {', '.join(SAMPLERS)} (default: all)")
    parser.add_argument("--demo-output", type=Path, help="a folder python -m common demo --output_dir wrote: its denoiser is sampled "
                        "with each sampler variant (without it the sampler part is skipped)")
    parser.add_argument("--size", type=int, choices=(32, 64), default=32, help="32: the demo's settings; 64: the paper's brain "
                        "size with benchmarks/quality.py's settings (VQ-GAN variants only)")
    parser.add_argument("--epochs", type=int, help="VQ-GAN epochs (default: the settings')")
    parser.add_argument("--train", type=int, default=20, help="training subjects")
    parser.add_argument("--heldout", type=int, default=8, help="held-out subjects")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=REPO / "sharpness_run")
    parser.add_argument("--reuse", action="store_true", help="measure the VQ-GAN variants an earlier run trained into --workdir "
                        "(their training minutes as measured then) instead of training them again")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sharpness.md")
    args = parser.parse_args()
    if args.demo_output and args.size != 32:
        parser.error("--demo-output: the sampler variants are measured on the demo's denoiser, at --size 32")
    if args.samplers and not args.demo_output:
        parser.error("--samplers needs --demo-output: the demo run whose denoiser they sample")
    args.samplers = args.samplers or ",".join(SAMPLERS)
    for option, known in (("variants", VARIANTS), ("samplers", SAMPLERS)):
        chosen = [v.strip() for v in getattr(args, option).split(",") if v.strip() and v.strip() != "none"]
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"unknown {option} {unknown}; choose from {', '.join(known)}")
        setattr(args, option, chosen)
    if not args.demo_output:
        args.samplers = []
    if not args.variants and not args.samplers:
        parser.error("nothing to measure: give VQ-GAN --variants, or --demo-output for the sampler variants")
    if args.demo_output and not ((args.demo_output / "models" / "diffusion.pt").is_file() and (args.demo_output / "demo_data" / "heldout").is_dir()):
        parser.error(f"--demo-output {args.demo_output} holds no demo run (models/diffusion.pt and demo_data/heldout, which "
                     "python -m common demo --output_dir writes)")

    from common.data import brain_demo_datalist, brain_demo_heldout_datalist
    from common.io import write_text
    from convergence import stage_settings

    # the demo's settings without autoguidance (the sampler variants as measured, unguided), or quality.py's at 64^3
    settings = stage_settings(argparse.Namespace(size=args.size, paper_widths=False, train=args.train, samples=8,
                                                 downsample_factor=None, scale_equivariance=0.0))
    if args.size == 32:  # the sampler variants sample the demo's own denoiser, as python -m common demo trains it
        from common.pipeline import DEMO_SETTINGS

        settings["denoiser"] = dict(DEMO_SETTINGS[BUNDLE]["denoiser"])
    if args.epochs:
        settings["autoencoder"]["train#trainer#max_epochs"] = args.epochs
    args.pictures = args.out.with_suffix("")
    args.pictures.mkdir(parents=True, exist_ok=True)
    started = time.time()
    vqgans, pairs = [], []
    if args.variants:
        data = args.workdir / "data"
        brain_demo_datalist(data, count=args.train, seed=0)
        brain_demo_heldout_datalist(data, count=args.heldout, seed=0)
        vqgans, pairs = train_and_measure_vqgans(args, settings, data)
        picture(pairs, args.pictures / "reconstructions.png")
    samplers = sample_with_each_sampler(args, settings) if args.samplers else []
    detail = where_the_detail_goes(args, settings) if args.demo_output else {}
    (args.pictures / "rows.json").write_text(json.dumps({"vqgans": vqgans, "samplers": samplers, "detail": detail}, indent=1) + "\n")
    write_text("\n".join(report(args, settings, vqgans, samplers, detail, (time.time() - started) / 60)), args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()

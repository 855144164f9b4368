"""Where a trained brain model loses its anatomy: how the VQ-GAN's decoder answers noise and blur in its latents,
and what the trained denoiser makes of held-out brains' latents noised to each level of the schedule.

    python benchmarks/latent_detail.py --workdir W --recipe v_prediction_4_levels_volume_norm_lr_2e-3

``W`` is the ``--workdir`` of a ``benchmarks/convergence.py --size 64`` run (the paper's brain size): its held-out
brains (``data/heldout``) and the recipe's models (``recipes/<recipe>/models``: the VQ-GAN and the denoiser).
The run must have ``benchmarks/quality.py``'s reduced widths and the VQ-GAN's compression 2 (the convergence
defaults; not ``--paper-widths`` or ``--downsample-factor 4``). Nothing is trained. The held-out brains are preprocessed as the VQ-GAN's evaluation does and encoded; then, each
as a ratio or a PSNR against the VQ-GAN's own reconstruction (the best any sample can be):

- the decoder: the latents with white noise added, and blurred (a Gaussian over the latent's voxels), decoded as
  the sampler decodes (nearest codes, then the decoder) and unquantised (the decoder alone);
- the denoiser: the latents noised to timestep ``t`` as in training, its one-step estimate of the clean latent
  (x0, also decoded unquantised), and DDIM (``--steps``, the sampler's clip) from ``t`` to the end: does it restore
  what the noise hid? Each ``t`` is taken at the DDIM grid's step at or below it.

Writes ``latent_detail.md`` (``--out``) and the middle axial slices of the first brain (``latent_detail/<recipe>.png``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402  (the recipes and stage settings of the run being probed)

CONFIGS = REPO / "bundles" / convergence.BUNDLE / "configs"
FOREGROUND = -0.9  # voxels of the real brain above this (images in [-1, 1]): where PSNR is measured


def run_settings(size: int) -> dict:
    """The stage settings of a ``convergence.py --size size`` run with its default widths and compression."""
    return convergence.stage_settings(argparse.Namespace(size=size, paper_widths=False, train=20, samples=8,
                                                         downsample_factor=None, scale_equivariance=0.0))


def brains(workdir: Path, folder: str, size: int, count: int | None = None) -> torch.Tensor:
    """The first ``count`` (default: all) brains of ``workdir/data/folder``, preprocessed as the VQ-GAN's evaluation
    does (N, 1, H, W, D)."""
    from monai.bundle import ConfigParser

    reading = ConfigParser()
    reading.read_config([str(CONFIGS / "train_autoencoder.json")])
    reading.update(run_settings(size)["shared"])
    preprocess = reading.get_parsed_content("evaluation_preprocessing")
    files = sorted((workdir / "data" / folder).glob("*.nii*"))[:count]
    if not files:
        raise SystemExit(f"no brains in {workdir / 'data' / folder}")
    return torch.stack([torch.as_tensor(preprocess({"image": str(f)})["image"]) for f in files]).float()


def gaussian_blur(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of (B, C, H, W, D) blurred by a Gaussian of ``sigma`` voxels along every spatial axis (scipy);
    ``sigma`` 0 returns the latents as they are."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return latents
    return torch.from_numpy(gaussian_filter(latents.numpy(), sigma=(0, 0, sigma, sigma, sigma))).to(latents.dtype)


def load_models(args: argparse.Namespace, size: int = 64) -> tuple[torch.Tensor, object, torch.nn.Module, object, float]:
    """The held-out brains (N, 1, H, W, D), the latent autoencoder, the denoiser, its DDIM scheduler and x0 clip, of a
    ``convergence.py --size size`` run."""
    from monai.bundle import ConfigParser

    settings = run_settings(size)
    recipe = convergence.RECIPES[args.recipe]
    models = args.workdir / "recipes" / args.recipe / "models"
    if not (models / "diffusion.pt").is_file():
        raise SystemExit(f"{models / 'diffusion.pt'} does not exist: train the recipe with benchmarks/convergence.py first.")
    images = brains(args.workdir, "heldout", size, args.count)

    sampling = ConfigParser()
    sampling.read_config([str(CONFIGS / "inference.json")])
    training_ids = {k: v for k, v in recipe["train"].items() if k != "lr"}  # the ids that define the model
    sampling.update({**settings["shared"], **settings.get("denoiser", {}), **training_ids, **recipe["sample"],
                     "ckpt_dir": str(models), "device": "$torch.device('cpu')", "num_inference_steps": args.steps})
    autoencoder = sampling.get_parsed_content("latent_autoencoder")
    network = sampling.get_parsed_content("network").eval()
    scheduler = sampling.get_parsed_content("noise_scheduler")
    clip = float(sampling.get_parsed_content("clip_sample_range")) * float(autoencoder.latent_scale.factor())
    scheduler.clip_sample_values = [-clip, clip]  # as common.sampling.LatentSampler sets it
    return images, autoencoder, network, scheduler, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks/convergence.py run's --workdir")
    parser.add_argument("--recipe", default="v_prediction_4_levels_volume_norm_lr_2e-3", choices=sorted(convergence.RECIPES))
    parser.add_argument("--count", type=int, default=4, help="held-out brains")
    parser.add_argument("--timesteps", default="20,60,120,180,240,290", help="noise levels of the denoiser's cases")
    parser.add_argument("--steps", type=int, default=100, help="the DDIM grid the completions run on")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "latent_detail.md")
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    if not timesteps or args.count < 1:
        parser.error("--timesteps needs at least one timestep and --count at least one brain")

    from common.evaluation.metrics import high_frequency_share

    torch.set_grad_enabled(False)
    started = time.time()
    images, autoencoder, network, scheduler, clip = load_models(args)
    total = scheduler.num_train_timesteps
    if not 1 <= args.steps < total or not all(0 <= t < total for t in timesteps):
        raise SystemExit(f"--steps must be in [1, {total}) (DDIM; {total} would be the ancestral DDPM) and every timestep in "
                         f"[0, {total}); got --steps {args.steps}, --timesteps {timesteps}")
    latents = autoencoder.encode_stage_2_inputs(images)
    reconstructions = autoencoder.decode_stage_2_outputs(latents).clamp(-1, 1)
    foreground = images > FOREGROUND
    real_sharpness = float(high_frequency_share(images).mean())
    channels = latents.shape[1]

    def latent_share(z: torch.Tensor) -> float:  # each channel's share of power above 0.25 cycles per latent voxel
        return float(high_frequency_share(z.reshape(-1, 1, *z.shape[2:])).mean())

    real_latent_share = latent_share(latents)

    def measured(case: str, z: torch.Tensor, quantised: bool = True) -> tuple[dict, torch.Tensor]:
        if quantised:
            decoded = autoencoder.decode_stage_2_outputs(z)
        else:
            decoded = autoencoder.autoencoder.decode(autoencoder.denormalize(z / autoencoder.latent_scale.factor()))
        decoded = decoded.clamp(-1, 1)
        error = float(((decoded - reconstructions) ** 2)[foreground].mean())
        row = {"case": case, "latent_rmse": float(((z - latents) ** 2).mean().sqrt()),
               "latent_detail": latent_share(z) / real_latent_share,
               "psnr_db": float("inf") if error == 0 else 10 * float(np.log10(4.0 / error)),
               "sharpness": float(high_frequency_share(decoded).mean()) / real_sharpness}
        print(json.dumps(row), flush=True)
        return row, decoded

    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    decoder_rows, pictures = [], {"real": images[0, 0]}
    row, decoded = measured("reconstruction (the encoder's latents)", latents)
    decoder_rows.append(row)
    pictures["reconstruction"] = decoded[0, 0]
    decoder_rows.append(measured("the same latents decoded unquantised", latents, quantised=False)[0])
    for rmse in (0.01, 0.028):
        row, decoded = measured(f"white noise added, RMSE {rmse}", latents + rmse * noise)
        decoder_rows += [row, measured(f"white noise added, RMSE {rmse}, unquantised", latents + rmse * noise, quantised=False)[0]]
        pictures[f"noise {rmse}"] = decoded[0, 0]
    for sigma in (0.5, 1.0):
        blurred = gaussian_blur(latents, sigma)
        row, decoded = measured(f"blurred, Gaussian sigma {sigma} latent voxels", blurred)
        decoder_rows += [row, measured(f"blurred, Gaussian sigma {sigma} latent voxels, unquantised", blurred, quantised=False)[0]]
        pictures[f"blur {sigma}"] = decoded[0, 0]

    alphas = scheduler.alphas_cumprod
    grid = [int(t) for t in scheduler.timesteps]
    denoiser_rows = []
    for t in timesteps:
        start = max(s for s in grid if s <= t)  # the grid ends at 0
        alpha = alphas[start]
        noisy = scheduler.add_noise(latents, noise, torch.full((len(latents),), start))  # as in training
        z, estimate = noisy, None
        for step in (s for s in grid if s <= start):  # DDIM from start to the end, the sampler's clip on x0
            z, x0 = scheduler.step(network(z, torch.full((len(z),), step)), step, z)
            estimate = x0 if estimate is None else estimate  # the first step's x0: the one-step estimate
        snr_db = 10 * float(torch.log10(alpha / (1 - alpha) * latents.var()))
        row, decoded = measured(f"t = {start}: one-step x0", estimate)
        denoiser_rows.append({**row, "t": start, "snr_db": snr_db})
        row = measured(f"t = {start}: one-step x0, unquantised", estimate, quantised=False)[0]
        denoiser_rows.append({**row, "t": start, "snr_db": snr_db})
        pictures[f"x0, t={start}"] = decoded[0, 0]
        row, decoded = measured(f"t = {start}: DDIM to the end", z)
        denoiser_rows.append({**row, "t": start, "snr_db": snr_db})
        pictures[f"DDIM from t={start}"] = decoded[0, 0]

    figure_path = args.out.parent / args.out.stem / f"{args.recipe}.png"
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    plot(pictures, figure_path)
    args.out.write_text(report(args, decoder_rows, denoiser_rows, channels, clip, real_latent_share, (time.time() - started) / 60,
                               figure_path))
    print(f"wrote {args.out} and {figure_path}")


def plot(pictures: dict[str, torch.Tensor], path: Path) -> None:
    """The middle axial slice of each volume, six a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 6
    rows = -(-len(pictures) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (title, volume) in zip(axes.flat, pictures.items()):
        axis.imshow(volume[:, :, volume.shape[-1] // 2].numpy().T, cmap="gray", vmin=-1, vmax=1, origin="lower")
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def report(args, decoder_rows: list[dict], denoiser_rows: list[dict], channels: int, clip: float, latent_share: float,
           minutes: float, figure_path: Path) -> str:
    def table(rows: list[dict], first: list[str]) -> list[str]:
        head = [*first, "latent RMSE", "latent detail (x real)", "PSNR dB against the reconstruction", "sharpness (x real)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            extra = [str(r["t"]), f"{r['snr_db']:.1f}", r["case"].split(": ")[1]] if "t" in r else [r["case"]]
            lines.append("| " + " | ".join([*extra, f"{r['latent_rmse']:.4f}", f"{r['latent_detail']:.2f}",
                                             f"{r['psnr_db']:.1f}", f"{r['sharpness']:.2f}"]) + " |")
        return lines

    command = " ".join(["python benchmarks/latent_detail.py", *sys.argv[1:]])
    return "\n".join([
        "# Where the anatomy is lost: the decoder's tolerance and the denoiser's estimates (brain_mri)",
        "",
        f"Command: `{command}` (commit {convergence.commit()}). Machine: {platform.machine()}, {torch.get_num_threads()} "
        f"threads, CPU, torch {torch.__version__}. Wall time {minutes:.1f} min. Recipe `{args.recipe}`, its last checkpoint; "
        f"{args.count} held-out brains at 64^3, latents of {channels} channels; x0 clipped to +-{clip:.2f} as the sampler does.",
        "",
        "PSNR is measured inside the brain against the VQ-GAN's own reconstruction (the best a sample can be), not "
        "against the brain; sharpness is the share of spectral power above 0.25 cycles per voxel as a ratio to the "
        "held-out brains' (the evaluation's `sharpness`); latent detail is the same share of each latent channel's "
        f"power, as a ratio to the encoder's latents' (on average over the channels, {latent_share:.3f} of a channel's power "
        "is above 0.25 cycles per latent voxel).",
        "",
        "## The decoder",
        "",
        *table(decoder_rows, ["latents"]),
        "",
        "## The denoiser, from held-out latents noised to timestep t (the same noise at every t)",
        "",
        *table(denoiser_rows, ["t", "SNR dB (latents' own variance)", "estimate"]),
        "",
        f"Picture: `{figure_path.relative_to(args.out.parent)}` (the first brain's middle axial slice in every case).",
        "",
    ])


if __name__ == "__main__":
    main()

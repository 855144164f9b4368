"""A trained VQ-GAN's decoder fine-tuned alone, on its frozen encoder's latents of the training brains, plainly or
with those latents blurred and noised first: does a decoder that has learnt to decode degraded latents bring back the
anatomy a denoiser's samples lack?

    python benchmarks/decoder_finetune.py --workdir W --size 64 --recipe v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3

``W`` is the ``--workdir`` of a ``benchmarks/convergence.py`` run of that ``--size`` (its training and held-out brains,
its VQ-GAN and the recipe's denoiser under ``recipes/<recipe>/models``), with the convergence defaults' widths and
compression. Nothing in ``W`` is changed. The fine-tuning keeps the encoder and the codebook as they are, so the latents
the denoiser learnt stay valid: it is the decoder alone that ``VQGANTrainer``'s ``frozen_codebook_iterations`` trains
at the end of a run, here after it, with an L1 loss and Adam. Each degraded latent is blurred by a Gaussian of a random
width in [0, ``--sigma-max``] latent voxels (none for a quarter of them; ``latent_detail.gaussian_blur``) and given white noise of a random standard
deviation in [0, ``--noise-max``], then snapped to its nearest codes as the sampler does.

Measured against the held-out brains (PSNR over the whole volume and inside the brain, sharpness as a ratio to real):
their reconstructions from clean latents and from latents blurred by 0.5 and 1 latent voxel, decoded by the trained
decoder and by the fine-tuned one; and ``--samples`` samples of the recipe's denoiser (DDIM ``--steps``, seeds from 0)
decoded by both. Writes ``--out`` (markdown) and, beside it, ``<out stem>/samples.png`` and ``blur.png``.
"""

from __future__ import annotations

import argparse
import copy
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

import convergence  # noqa: E402
import latent_detail  # noqa: E402

FOREGROUND = latent_detail.FOREGROUND
BLURS = (0.0, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks/convergence.py run's --workdir")
    parser.add_argument("--size", type=int, choices=(32, 64), default=64, help="the run's --size")
    parser.add_argument("--recipe", default="v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3", choices=sorted(convergence.RECIPES))
    parser.add_argument("--iterations", type=int, default=600, help="fine-tuning iterations")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--plain", action="store_true", help="fine-tune on the clean latents (no blur, no noise)")
    parser.add_argument("--sigma-max", type=float, default=1.0, help="widest blur, in latent voxels")
    parser.add_argument("--noise-max", type=float, default=0.03, help="largest noise standard deviation")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the samples")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "decoder_finetune.md")
    args = parser.parse_args()
    if args.iterations < 1 or args.batch_size < 1 or args.samples < 1 or not args.lr > 0 or args.sigma_max < 0 or args.noise_max < 0:
        parser.error("--iterations, --batch-size, --samples and --lr must be positive, --sigma-max and --noise-max >= 0")

    from common.evaluation.metrics import high_frequency_share

    started = time.time()
    torch.manual_seed(0)
    heldout, autoencoder, network, scheduler, _ = latent_detail.load_models(
        argparse.Namespace(workdir=args.workdir, recipe=args.recipe, count=8, steps=args.steps), size=args.size)
    train = latent_detail.brains(args.workdir, "train", args.size)
    train = torch.cat([train, train.flip(2)])  # with their left-right flips, as the denoiser's data
    trained = autoencoder.autoencoder
    with torch.no_grad():
        train_latents, heldout_latents = autoencoder.encode_stage_2_inputs(train), autoencoder.encode_stage_2_inputs(heldout)

    def codes(latents: torch.Tensor) -> torch.Tensor:  # the sampler's decoding up to the decoder: nearest codes
        return autoencoder.quantize(autoencoder.denormalize(latents / autoencoder.latent_scale.factor()))

    tuned = copy.deepcopy(trained).requires_grad_(False)
    tuned.decoder.requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.decoder.parameters(), lr=args.lr)
    draw = torch.Generator().manual_seed(1)
    losses = []
    tune_start = time.time()
    for _ in range(args.iterations):
        chosen = torch.randint(len(train), (args.batch_size,), generator=draw)
        latents = []
        for index in chosen:
            latent = train_latents[index:index + 1]
            if not args.plain:
                sigma = 0.0 if float(torch.rand(1, generator=draw)) < 0.25 else float(torch.rand(1, generator=draw)) * args.sigma_max
                noise = float(torch.rand(1, generator=draw)) * args.noise_max
                latent = latent_detail.gaussian_blur(latent, sigma) + noise * torch.randn(latent.shape, generator=draw)
            latents.append(latent)
        with torch.no_grad():
            quantised = codes(torch.cat(latents))
        loss = (tuned.decode(quantised) - train[chosen]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    tune_minutes = (time.time() - tune_start) / 60
    tuned.eval()
    torch.set_grad_enabled(False)

    foreground = heldout > FOREGROUND
    real_sharpness = float(high_frequency_share(heldout).mean())

    def decoded(decoder_of: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        return decoder_of.decode(codes(latents)).clamp(-1, 1)

    rows, blurred_pictures = [], {"real": heldout[0, 0]}
    for sigma in BLURS:
        latents = latent_detail.gaussian_blur(heldout_latents, sigma)
        for name, model in (("trained", trained), ("fine-tuned", tuned)):
            images = decoded(model, latents)
            error = (images - heldout) ** 2
            rows.append({"blur": sigma, "decoder": name, "psnr_db": 10 * float(np.log10(4 / float(error.mean()))),
                         "psnr_brain_db": 10 * float(np.log10(4 / float(error[foreground].mean()))),
                         "sharpness": float(high_frequency_share(images).mean()) / real_sharpness})
            blurred_pictures[f"{name}, blur {sigma}"] = images[0, 0]
            print(json.dumps(rows[-1]), flush=True)

    noise = torch.randn((args.samples, *heldout_latents.shape[1:]), generator=torch.Generator().manual_seed(0))
    for step in scheduler.timesteps:  # DDIM with the sampler's clip, as latent_detail.py runs it
        noise, _ = scheduler.step(network(noise, torch.full((len(noise),), int(step))), int(step), noise)
    samples = {name: decoded(model, noise) for name, model in (("trained", trained), ("fine-tuned", tuned))}
    sample_sharpness = {name: float(high_frequency_share(images).mean()) / real_sharpness for name, images in samples.items()}
    print(json.dumps(sample_sharpness), flush=True)

    pictures = args.out.parent / args.out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    plot_samples(heldout[:2, 0], samples, pictures / "samples.png")
    latent_detail.plot(blurred_pictures, pictures / "blur.png")
    args.out.write_text(report(args, rows, sample_sharpness, losses, tune_minutes, (time.time() - started) / 60, pictures))
    print(f"wrote {args.out}")


def plot_samples(real: torch.Tensor, samples: dict[str, torch.Tensor], path: Path) -> None:
    """Rows of three middle slices: two held-out brains, then each sample as decoded by each decoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = [(f"held-out brain {i}", v) for i, v in enumerate(real)]
    volumes += [(f"{name} decoder, sample {i}", v[0]) for name, images in samples.items() for i, v in enumerate(images)]
    figure, axes = plt.subplots(len(volumes), 3, figsize=(6, 2.1 * len(volumes)), squeeze=False)
    for row, (title, volume) in zip(axes, volumes):
        h, w, d = (n // 2 for n in volume.shape)
        for axis, image in zip(row, (volume[:, :, d], volume[:, w, :], volume[h, :, :])):
            axis.imshow(image.numpy().T, cmap="gray", vmin=-1, vmax=1, origin="lower")
            axis.axis("off")
        row[0].set_title(title, fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def report(args, rows: list[dict], sample_sharpness: dict, losses: list[float], tune_minutes: float, minutes: float,
           pictures: Path) -> str:
    command = " ".join(["python benchmarks/decoder_finetune.py", *sys.argv[1:]])
    how = "the clean latents" if args.plain else (f"latents blurred by a Gaussian of 0 to {args.sigma_max} latent voxels (none for a "
                                                  f"quarter) and noised with a standard deviation of 0 to {args.noise_max}")
    window = max(1, len(losses) // 10)
    lines = [
        f"Command: `{command}` (commit {convergence.commit()}). Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"CPU, torch {torch.__version__}. Wall time {minutes:.1f} min, of which the fine-tuning {tune_minutes:.1f} min.", "",
        f"The decoder of the run's VQ-GAN fine-tuned alone for {args.iterations} iterations (batch {args.batch_size}, Adam at "
        f"{args.lr}, L1) on {how}, then nearest codes; its L1 fell from {np.mean(losses[:window]):.4f} (first tenth) to "
        f"{np.mean(losses[-window:]):.4f} (last tenth). Held-out brains reconstructed from their latents, clean and blurred:", "",
        "| latent blur (voxels) | decoder | PSNR dB | PSNR dB inside the brain | sharpness (x real) |", "|---|---|---|---|---|",
        *(f"| {r['blur']} | {r['decoder']} | {r['psnr_db']:.1f} | {r['psnr_brain_db']:.1f} | {r['sharpness']:.2f} |" for r in rows), "",
        f"Samples of `{args.recipe}` (seeds 0 to {args.samples - 1}, DDIM {args.steps}) decoded by the trained decoder: "
        f"sharpness {sample_sharpness['trained']:.2f}x real; by the fine-tuned one: {sample_sharpness['fine-tuned']:.2f}x.", "",
        f"Pictures: `{pictures.name}/samples.png` (two held-out brains, then the samples by each decoder), "
        f"`{pictures.name}/blur.png` (the first held-out brain's middle axial slice from each case).", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

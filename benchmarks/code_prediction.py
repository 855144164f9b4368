"""Does a 64^3 denoiser learn anatomy sooner when it classifies the latent's codebook entries instead of regressing
their values? (Continuous diffusion for categorical data, CDCD: Dieleman et al., 2022, applied to VQ-GAN codes.)

    python benchmarks/code_prediction.py --workdir W --minutes 40 --every 20
    python benchmarks/code_prediction.py --workdir W32 --size 32 --template v_prediction --minutes 4 --every 2

Every 64^3 recipe so far ends in brain outlines without the grey/white pattern, and ``latent_detail.md`` says why:
even at the least noisy timesteps the regression denoiser returns the latent blurred, and the VQ-GAN's decoder needs
exactly the latent's finest detail. But the latent it decodes is discrete: every voxel is snapped to one of the
codebook's entries. This experiment makes the denoiser say *which* entry:

- the training brains (and their flips) are encoded once and every latent voxel replaced by its nearest code, so the
  diffusion data are the codes the decoder reads;
- the U-Net's last layer gives one logit per code in use (``K`` of them) instead of 8 values, trained with the cross
  entropy against the voxel's code at every noise level;
- its x0 estimate is the softmax-weighted mean of the codes, the posterior mean a calibrated classifier gives (the
  least-squares x0), which the bundle's sampler takes as ``prediction_type sample``. Near the end of sampling the
  softmax is sharp and the estimate is a code, not a blur of codes.

Everything else is the bundle's, from ``--template``'s run in ``W`` (a ``benchmarks/convergence.py --size 64``
recipe, or with ``--size 32`` one at the demo's size): the network's widths, the optimiser (Adam at ``--lr``), the
noise schedule and the timesteps of ``PredictionTargetPrepareBatch``; EMA (0.995) from the middle of the budget. Every ``--every`` minutes of training
the network is written into a copy of the template's checkpoint and sampled and evaluated by the bundle's own
configs (its network class replaced in this process by the code-classifying one), as ``convergence.py`` does.
Writes ``--out`` and beside it the samples and ``rows.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402
import latent_crops  # noqa: E402
import latent_detail  # noqa: E402

import common.networks  # noqa: E402
from common.networks.depth_attention_unet import DepthAttentionUNet  # noqa: E402
from common.sampling.code_expectation import expected_codes  # noqa: E402


class CodeClassifyingUNet(DepthAttentionUNet):
    """``DepthAttentionUNet`` whose last layer gives one logit per code of ``codes`` (K, C) at every voxel;
    ``forward`` returns the softmax-weighted mean code, an x0 estimate (``prediction_type sample``). ``COUNT`` is
    the K the bundle's config builds it with (set by this script; the codes come with the checkpoint's state)."""

    COUNT = 0
    TEMPERATURE = 1.0  # of the softmax in sampling: 1 the posterior mean, below 1 sharper, 0 the most likely code

    def __init__(self, in_channels: int, out_channels: int | None = None, **kwargs) -> None:
        channels = kwargs.get("channels", (32, 64, 128, 256))
        super().__init__(in_channels, out_channels=channels[0], **kwargs)
        self.final_conv = torch.nn.Identity()  # _denoise returns the last block's features (B, channels[0], ...)
        self.code_head = torch.nn.Linear(channels[0], self.COUNT)
        self.register_buffer("codes", torch.zeros(self.COUNT, in_channels))

    def logits(self, x: torch.Tensor, timesteps: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """The logits (B, K, N) at the flat voxel indices ``voxels`` (B, N)."""
        features = super().forward(x, timesteps).flatten(2)
        chosen = features.gather(2, voxels.unsqueeze(1).expand(-1, features.shape[1], -1))
        return self.code_head(chosen.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        features = super().forward(x, timesteps, context)
        estimate = torch.empty_like(x)
        for index in range(x.shape[0]):  # one volume's logits at a time: K values a voxel
            logits = self.code_head(features[index].flatten(1).T.float())
            estimate[index] = expected_codes(logits.T, self.codes, self.TEMPERATURE).reshape(x.shape[1:])
        return estimate


def codes_in_use(autoencoder, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The normalised codes the latents' voxels are nearest to (K, C), each voxel's index among them (B, H, W, D),
    and the root mean square distance of the latents to their codes."""
    codebook = autoencoder.normalize(autoencoder.autoencoder.quantizer.quantizer.embedding.weight) * autoencoder.latent_scale.factor()
    flat = latents.movedim(1, -1).reshape(-1, latents.shape[1])
    nearest = torch.cdist(flat, codebook).argmin(dim=1)
    used, indices = torch.unique(nearest, return_inverse=True)
    residual = float((flat - codebook[nearest]).pow(2).mean().sqrt())
    return codebook[used].clone(), indices.view(latents.shape[0], *latents.shape[2:]), residual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks/convergence.py --size SIZE run's --workdir")
    parser.add_argument("--size", type=int, default=64, choices=(32, 64), help="the --size of the --workdir's run")
    parser.add_argument("--template", default="v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position",
                        choices=sorted(convergence.RECIPES), help="the recipe (trained in --workdir) whose network is trained")
    parser.add_argument("--name", default="codes", help="this run's folder under --workdir/recipes")
    parser.add_argument("--minutes", type=float, default=40.0, help="training minutes")
    parser.add_argument("--every", type=float, default=20.0, help="sample and evaluate every this many training minutes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--voxels", type=int, default=4096, help="voxels of each latent whose cross entropy a step takes")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps of the evaluation's samples")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run --name from its last point (its training_state.pt) up to --minutes")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[],
                        help="at the end, sample again with these softmax temperatures (0: the most likely code); with "
                             "--minutes 0 only this, from the run's last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="the first seed of the --temperatures samples (the points' samples take 0 on, as convergence.py's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "code_prediction.md")
    args = parser.parse_args()
    points = args.minutes / args.every if args.every > 0 else 0.0
    if args.batch < 1 or args.voxels < 1 or (args.minutes or not args.temperatures) and (points < 1 or abs(points - round(points)) > 1e-9):
        parser.error("--batch and --voxels at least 1, --minutes a multiple of a positive --every (or 0 with --temperatures)")
    if any(t < 0 for t in args.temperatures):
        parser.error("--temperatures must be at least 0")
    template = args.workdir / "recipes" / args.template / "models"
    if not (template / "diffusion.pt").is_file():
        parser.error(f"{template / 'diffusion.pt'} does not exist: train --template with benchmarks/convergence.py --size {args.size} first")

    from monai.utils import set_determinism

    from common.io import save_torch
    from common.pipeline import run_stages

    set_determinism(args.seed)
    autoencoder = latent_crops.training_parts(args.workdir, args.template, args.lr, args.size)["latent_autoencoder"]
    latents = latent_crops.encoded_brains(args.workdir, autoencoder, args.size)
    codes, indices, residual = codes_in_use(autoencoder, latents)
    data_codes = codes[indices].movedim(-1, 1).contiguous()  # (B, C, H, W, D): every voxel its code
    print(f"{len(latents)} latents {tuple(latents.shape[1:])}, std {float(latents.std()):.3f}; {len(codes)} codes in use; "
          f"RMS distance to the nearest code {residual:.4f}", flush=True)

    CodeClassifyingUNet.COUNT = len(codes)
    common.networks.DepthAttentionUNet = CodeClassifyingUNet  # what the bundle's configs build, here and in sampling
    parts = latent_crops.training_parts(args.workdir, args.template, args.lr, args.size)
    network, optimizer, scheduler, targets = parts["network"], parts["optimizer"], parts["noise_scheduler"], parts["targets"]
    if not isinstance(network, CodeClassifyingUNet):
        raise SystemExit(f"the bundle built a {type(network).__name__}, not the code-classifying network")
    network.codes.copy_(codes)

    run_dir = args.workdir / "recipes" / args.name
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / "autoencoder.pt", run_dir / "models" / "autoencoder.pt")
    pictures = args.out.parent / args.out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    settings = latent_detail.run_settings(args.size)
    recipe = convergence.RECIPES[args.template]
    data = args.workdir / "data"
    overrides = {"heldout_dir": str(data / "heldout"), "device": "$torch.device('cpu')", "cache_dir": str(args.workdir / "cache"),
                 **recipe["train"], **recipe["sample"], "prediction_type": "sample"}

    generator = torch.Generator().manual_seed(args.seed)
    ema, rows, trained, iteration = None, [], 0.0, 0
    if not args.minutes:  # sample the run's last checkpoint again
        if not (run_dir / "models" / "diffusion.pt").is_file() or not (pictures / "rows.json").is_file():
            parser.error(f"{run_dir / 'models' / 'diffusion.pt'} or {pictures / 'rows.json'} does not exist: train the run first, with this --out")
        rows = json.loads((pictures / "rows.json").read_text())["curves"]
        iteration, trained = rows[-1]["iteration"], rows[-1]["train_minutes"] * 60
    state_path = run_dir / "models" / "training_state.pt"
    if args.resume and args.minutes:
        if not state_path.is_file():
            parser.error(f"{state_path} does not exist: nothing to resume")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        if state["ema"] is not None:
            ema = latent_crops.follow_ema(None, network, start=True)
            ema.ema_network.load_state_dict(state["ema"])
        iteration, trained, rows = state["iteration"], state["trained_seconds"], state["rows"]
        generator.set_state(state["generator"])
        print(f"resumed {args.name} at iteration {iteration}, {trained / 60:.1f} min", flush=True)
    network.train()
    for point in range(1, round(points) + 1 if args.minutes else 1):
        if trained >= point * args.every * 60:  # a point of the resumed run
            continue
        while trained < point * args.every * 60:
            start = time.time()
            chosen = torch.randperm(len(latents), generator=generator)[:args.batch]
            batch = data_codes[chosen]
            noise = torch.randn(batch.shape, generator=generator)
            timesteps = targets.get_timesteps(batch)
            voxels = torch.rand(len(chosen), indices[0].numel(), generator=generator).argsort(dim=1)[:, :args.voxels]
            logits = network.logits(scheduler.add_noise(batch, noise, timesteps), timesteps, voxels)
            loss = F.cross_entropy(logits, indices[chosen].flatten(1).gather(1, voxels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            ema = latent_crops.follow_ema(ema, network, trained >= args.minutes * 60 / 2)
            trained += time.time() - start
            if iteration % 50 == 0:
                print(f"iteration {iteration}, {trained / 60:.1f} min, cross entropy {loss.item():.4f}", flush=True)
        latent_crops.write_checkpoint(template / "diffusion.pt", run_dir / "models" / "diffusion.pt", network, ema,
                                      {"prediction_type": "sample"}, iteration)
        latent_crops.evaluate_point(run_stages, run_dir, data, settings, overrides, args.steps, rows,
                                    {"recipe": args.name, "iteration": iteration, "train_minutes": trained / 60, "steps": args.steps,
                                     "codes": len(codes), "ema": ema is not None},
                                    pictures / f"{args.name}_{iteration}_samples_and_real.png")
        save_torch({"network": network.state_dict(), "ema": None if ema is None else ema.ema_network.state_dict(),
                    "optimizer": optimizer.state_dict(), "iteration": iteration, "trained_seconds": trained,
                    "generator": generator.get_state(), "rows": rows}, state_path)
    for temperature in args.temperatures:
        CodeClassifyingUNet.TEMPERATURE = temperature
        seeds = f", seeds {args.sample_seed} on" if args.sample_seed else ""
        latent_crops.evaluate_point(
            run_stages, run_dir, data, settings, overrides, args.steps, rows,
            {"recipe": f"{args.name}, temperature {temperature:g}{seeds}", "iteration": iteration, "train_minutes": trained / 60,
             "steps": args.steps, "codes": len(codes), "temperature": temperature, "sample_seed": args.sample_seed},
            pictures / f"{args.name}_{iteration}_temperature_{temperature:g}{seeds.replace(', ', '_').replace(' ', '_')}_samples_and_real.png",
            args.sample_seed)

    latent_crops.write_report(
        args.out, f"Code classification at {args.size}^3 (`{args.name}`)",
        f"Network: `{args.template}` ({convergence.describe(args.template)}) with {len(codes)} output logits (the codes in use) "
        f"from a linear layer on its last features, cross entropy, lr {args.lr}, batch {args.batch}, the cross entropy of "
        f"{args.voxels} random voxels of each latent; sampled as `prediction_type sample`.", rows)

if __name__ == "__main__":
    main()

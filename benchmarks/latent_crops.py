"""Does a 64^3 denoiser learn anatomy sooner when most of its steps see latent crops? (Patch Diffusion, Wang et al.,
NeurIPS 2023, on a 3D latent.)

    python benchmarks/latent_crops.py --workdir W --minutes 60 --every 20

At 64^3 a bundle iteration of the best CPU recipe costs about 1.8 s here, of which the U-Net's step on the 8x32^3
latent is 1.5 s and encoding the batch 0.3 s; no recipe reached grey/white anatomy within the hour. This experiment
trains the same network a different way:

- the training brains (and their flips, the bundle's only augmentation) are encoded once, so no step reads or
  encodes an image;
- a ``--full-share`` of the steps sees the whole latents (batch ``--batch``); the others see ``--crops`` random
  ``--crop``^3 crops of each of ``--batch`` latents (batch ``--batch * --crops``), at a sixth of a whole step's cost;
- with a network that has ``position_channels``, every crop gets its voxels' coordinates in the whole volume (the
  coordinates Patch Diffusion feeds), so a crop knows where in the brain it lies; sampling runs on whole latents as
  always, with the network's own coordinates.

Everything else is the bundle's, parsed from its training config with the recipe's ids: the network, loss (L1),
optimiser (Adam at ``--lr``), and the timesteps and target of ``PredictionTargetPrepareBatch`` (the recipe's
``timestep_sampling`` and ``prediction_type``); EMA (decay 0.995 every step) from the middle of the budget. Every ``--every`` minutes of training the network and its
EMA are written into a copy of ``--template``'s diffusion checkpoint (a ``benchmarks/convergence.py`` recipe of
the same network trained in ``W``, whose model settings and latent scale it keeps) and sampled and evaluated by
the bundle's own configs, exactly as ``convergence.py`` does: the rows compare with that script's reports on the
same ``--workdir``. ``--full-share 1`` trains on whole latents only (the baseline with the same cached latents).
Writes ``--out`` (a report) and beside it the samples at each point and ``rows.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402
import latent_detail  # noqa: E402

from common.handlers.ema import DelayedEMAHandler  # noqa: E402
from common.networks import depth_attention_unet  # noqa: E402


class CropCoordinates:
    """The coordinates ``DepthAttentionUNet`` gives its ``position_channels``, replaced while a crop batch trains by
    each crop's place in the whole latent (its network computes them over the grid it is given)."""

    def __init__(self, full_size: tuple[int, int, int]) -> None:
        self.full_size = full_size
        self.offsets: list[tuple[int, int, int]] | None = None
        self._own = depth_attention_unet._coordinates

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.offsets is None:
            return self._own(x)
        size = x.shape[2:]
        axes = [torch.linspace(-1.0, 1.0, n, dtype=x.dtype) for n in self.full_size]
        crops = []
        for offset in self.offsets:
            parts = [axis[o:o + n] for axis, o, n in zip(axes, offset, size)]
            crops.append(torch.stack(torch.meshgrid(*parts, indexing="ij")))
        return torch.stack(crops).to(x.device)


def training_parts(workdir: Path, template: str, lr: float, size: int = 64) -> dict:
    """The bundle's diffusion training parts for ``template``'s ids: a fresh ``network``, its ``optimizer`` (at
    ``lr``), ``loss_function``, the ``noise_scheduler``, ``targets`` (a ``PredictionTargetPrepareBatch`` whose
    ``get_timesteps``/``get_target`` a step uses) and the ``latent_autoencoder`` of ``template``'s run (a
    ``convergence.py --size size`` run)."""
    from monai.bundle import ConfigParser

    from common.engines import PredictionTargetPrepareBatch

    settings = latent_detail.run_settings(size)
    recipe = convergence.RECIPES[template]
    parser = ConfigParser()
    parser.read_config([str(latent_detail.CONFIGS / "train_autoencoder.json"), str(latent_detail.CONFIGS / "train_diffusion.json")])
    parser.update({**settings["shared"], **settings.get("denoiser", {}), **recipe["train"], "lr": lr,
                   "ckpt_dir": str(workdir / "recipes" / template / "models"), "device": "$torch.device('cpu')"})
    parts = {name: parser.get_parsed_content(name) for name in ("network", "optimizer", "noise_scheduler", "latent_autoencoder")}
    parts["loss_function"] = parser.get_parsed_content("train#trainer#loss_function")
    parts["targets"] = PredictionTargetPrepareBatch(
        num_train_timesteps=parser.get_parsed_content("num_train_timesteps"), scheduler=parts["noise_scheduler"],
        timestep_sampling=parser.get_parsed_content("timestep_sampling"), snr_gamma=parser.get_parsed_content("snr_gamma"))
    return parts


def encoded_brains(workdir: Path, autoencoder, size: int = 64) -> torch.Tensor:
    """The training brains (``size``^3) and their left-right flips (the bundle's ``RandFlipd`` on spatial axis 0),
    encoded once."""
    images = latent_detail.brains(workdir, "train", size)
    with torch.no_grad():
        return torch.cat([autoencoder.encode_stage_2_inputs(batch) for batch in (images, images.flip(2))])


def crop_batch(latents: torch.Tensor, crop: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
    """``count`` random ``crop``^3 crops of each latent (B, C, H, W, D), and their offsets."""
    crops, offsets = [], []
    for latent in latents:
        for _ in range(count):
            offset = tuple(int(torch.randint(0, n - crop + 1, (1,), generator=generator)) for n in latent.shape[1:])
            crops.append(latent[:, offset[0]:offset[0] + crop, offset[1]:offset[1] + crop, offset[2]:offset[2] + crop])
            offsets.append(offset)
    return torch.stack(crops), offsets


def write_checkpoint(template: Path, target: Path, network: torch.nn.Module, ema: DelayedEMAHandler | None,
                     model_settings: dict | None = None, iteration: int | None = None) -> None:
    """``template``'s checkpoint with ``network`` and its EMA (the network itself before the EMA starts), the
    ``model_settings`` given changed and the trainer's ``iteration`` set when given; no optimizer."""
    from common.checkpoints import read_checkpoint
    from common.io import save_torch

    checkpoint = read_checkpoint(template)
    checkpoint["network"] = network.state_dict()
    checkpoint["ema_network"] = (network if ema is None else ema.ema_network).state_dict()
    checkpoint["model_settings"] = {**checkpoint["model_settings"], **(model_settings or {})}
    if iteration is not None:
        checkpoint["trainer"] = {**checkpoint.get("trainer", {}), "iteration": iteration}
    checkpoint.pop("optimizer", None)
    save_torch(checkpoint, target)


def follow_ema(ema: DelayedEMAHandler | None, network: torch.nn.Module, start: bool) -> DelayedEMAHandler | None:
    """After a training step: the bundle's EMA of ``network`` (0.995 every step), made when ``start`` first holds and
    updated at every later step; None before."""
    if ema is None:
        return DelayedEMAHandler(network, decay=0.995, every=1, start_iteration=0) if start else None
    ema.update()
    return ema


def evaluate_point(run_stages, run_dir: Path, data: Path, settings: dict, overrides: dict, steps: int, rows: list[dict],
                   row: dict, picture: Path, seed: int = 0) -> None:
    """Sample ``run_dir``'s checkpoint and evaluate it as ``convergence.py`` does; append ``row`` with the ratios to
    ``rows``, keep the samples' picture as ``picture`` and every row in ``rows.json`` beside it."""
    rows.append({**row, **convergence.sample_and_evaluate(run_stages, run_dir, data, settings, overrides, steps, seed)})
    shutil.copy(run_dir / "samples" / "evaluation" / "samples_and_real.png", picture)
    (picture.parent / "rows.json").write_text(json.dumps({"curves": rows}, indent=1) + "\n")
    print(json.dumps(rows[-1]), flush=True)


def write_report(out: Path, title: str, description: str, rows: list[dict]) -> None:
    """``out``: ``title``, the command, commit and machine, ``description``, the rows' table and where the pictures are."""
    from common.io import write_text

    lines = [f"# {title}", "",
             f"Command: `python benchmarks/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}` (commit {convergence.commit()}). "
             f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. {description}", "",
             *convergence.table(rows, "run"), "",
             f"Pictures (`{out.stem}/`): the samples at each point beside real brains."]
    write_text("\n".join(lines) + "\n", out)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks/convergence.py --size 64 run's --workdir")
    parser.add_argument("--template", default="v_prediction_4_levels_volume_norm_depth_conv_lr_2e-3_position",
                        choices=sorted(convergence.RECIPES), help="the recipe (trained in --workdir) whose network is trained")
    parser.add_argument("--name", default="crops", help="this run's folder under --workdir/recipes")
    parser.add_argument("--minutes", type=float, default=60.0, help="training minutes")
    parser.add_argument("--every", type=float, default=20.0, help="sample and evaluate every this many training minutes")
    parser.add_argument("--full-share", type=float, default=0.25, help="the share of steps on whole latents")
    parser.add_argument("--crop", type=int, default=16, help="crop edge in latent voxels (a multiple of the U-Net's 8)")
    parser.add_argument("--crops", type=int, default=4, help="crops of each latent in a crop step")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps of the evaluation's samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "latent_crops.md")
    args = parser.parse_args()
    points = args.minutes / args.every if args.every > 0 else 0.0
    if not 0.0 <= args.full_share <= 1.0 or args.crop < 8 or args.crop % 8 or points < 1 or abs(points - round(points)) > 1e-9:
        parser.error("--full-share in [0, 1], --crop a multiple of 8, --minutes a multiple of a positive --every")
    template = args.workdir / "recipes" / args.template / "models"
    if not (template / "diffusion.pt").is_file():
        parser.error(f"{template / 'diffusion.pt'} does not exist: train --template with benchmarks/convergence.py --size 64 first")

    from monai.utils import set_determinism

    from common.pipeline import run_stages

    set_determinism(args.seed)
    parts = training_parts(args.workdir, args.template, args.lr)
    network, optimizer, loss_function = parts["network"], parts["optimizer"], parts["loss_function"]
    scheduler, targets = parts["noise_scheduler"], parts["targets"]
    latents = encoded_brains(args.workdir, parts["latent_autoencoder"])
    coordinates = CropCoordinates(tuple(latents.shape[2:]))
    depth_attention_unet._coordinates = coordinates  # the crops' places (read by DepthAttentionUNet._denoise)
    run_dir = args.workdir / "recipes" / args.name
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / "autoencoder.pt", run_dir / "models" / "autoencoder.pt")
    pictures = args.out.parent / args.out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    settings = latent_detail.run_settings(64)
    recipe = convergence.RECIPES[args.template]
    data = args.workdir / "data"
    overrides = {"heldout_dir": str(data / "heldout"), "device": "$torch.device('cpu')", "cache_dir": str(args.workdir / "cache"),
                 **recipe["train"], **recipe["sample"]}

    generator = torch.Generator().manual_seed(args.seed)
    ema, rows, trained, iteration, counts = None, [], 0.0, 0, {"whole": 0, "crops": 0}
    network.train()
    for point in range(1, round(points) + 1):
        while trained < point * args.every * 60:
            start = time.time()
            chosen = latents[torch.randperm(len(latents), generator=generator)[:args.batch]]
            whole = float(torch.rand(1, generator=generator)) < args.full_share
            if whole:
                batch, coordinates.offsets = chosen, None
            else:
                batch, coordinates.offsets = crop_batch(chosen, args.crop, args.crops, generator)
            noise = torch.randn(batch.shape, generator=generator)
            timesteps = targets.get_timesteps(batch)
            loss = loss_function(network(scheduler.add_noise(batch, noise, timesteps), timesteps),
                                 targets.get_target(batch, noise, timesteps))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            coordinates.offsets = None
            iteration += 1
            counts["whole" if whole else "crops"] += 1
            ema = follow_ema(ema, network, trained >= args.minutes * 60 / 2)
            trained += time.time() - start
            if iteration % 50 == 0:
                print(f"iteration {iteration}, {trained / 60:.1f} min, loss {loss.item():.4f}, {counts}", flush=True)
        write_checkpoint(template / "diffusion.pt", run_dir / "models" / "diffusion.pt", network, ema)
        evaluate_point(run_stages, run_dir, data, settings, overrides, args.steps, rows,
                       {"recipe": args.name, "iteration": iteration, "train_minutes": trained / 60, "steps": args.steps,
                        "whole_steps": counts["whole"], "crop_steps": counts["crops"], "ema": ema is not None},
                       pictures / f"{args.name}_{iteration}_samples_and_real.png")

    write_report(args.out, f"Latent crops at 64^3 (`{args.name}`)",
                 f"Network and sampling: `{args.template}` ({convergence.describe(args.template)}), lr {args.lr}; {counts['whole']} "
                 f"steps on whole latents (batch {args.batch}) and {counts['crops']} on {args.crop}^3 crops (batch {args.batch * args.crops}).",
                 rows)

if __name__ == "__main__":
    main()

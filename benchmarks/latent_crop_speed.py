"""How much a training iteration of the 64^3 denoiser costs on whole latents and on latent crops, side by side.

    python benchmarks/latent_crop_speed.py --workdir W     # W: a `convergence.py --size 64` work folder; about 6 min

``latent_crop_size`` (Patch Diffusion, Wang et al., NeurIPS 2023) trains on random crops of the latents in the
batches that are not among ``full_latent_share``. A crop of an eighth of the latent costs the U-Net about an eighth,
but every batch is still read and encoded whole by the VQ-GAN, so what a crop saves per iteration is measured here:
the recipe's denoiser (``--recipe``, one of ``convergence.py``'s) trained through the brain_mri bundle's own configs
(``common.pipeline.run_stages``) on ``W``'s data and VQ-GAN, once on whole latents and once on crops only
(``full_latent_share 0``), in the same process, in the order whole, crops, crops, whole so that neither gains from
going first or last. Each iteration's time is the median of the trainer's epochs after the first, divided by the
epoch's iterations, averaged over the case's two trainings. Writes ``latent_crop_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402  (the 64^3 settings and recipes)

EPOCH_TIME = re.compile(r"Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


class EpochTimes(logging.Handler):
    """The seconds of every epoch the trainer logs ("Epoch[n] Complete. Time taken: hh:mm:ss.sss")."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = EPOCH_TIME.search(record.getMessage())
        if found:
            hours, minutes, seconds = found.groups()
            self.seconds.append(int(hours) * 3600 + int(minutes) * 60 + float(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a convergence.py --size 64 work folder (data, vqgan)")
    parser.add_argument("--recipe", default="latent_std_0.4_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes")
    parser.add_argument("--crop", type=int, nargs=3, default=[16, 16, 16], help="latent_crop_size")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each training (the first is not counted)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "latent_crop_speed.md")
    args = parser.parse_args()
    if args.recipe not in convergence.RECIPES:
        parser.error(f"--recipe must be one of convergence.py's: {sorted(convergence.RECIPES)}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not counted")
    vqgan = args.workdir / "vqgan" / "models" / "autoencoder.pt"
    data = args.workdir / "data"
    if not vqgan.is_file() or not (data / "train").is_dir():
        parser.error(f"{args.workdir} holds no convergence.py --size 64 VQ-GAN ({vqgan}) or data ({data / 'train'})")
    from common.io import write_text
    from common.pipeline import run_stages

    brains = len(list((data / "train").glob("*.nii*")))
    settings = convergence.stage_settings(argparse.Namespace(size=64, paper_widths=False, train=brains, samples=8,
                                                             downsample_factor=None, scale_equivariance=0.0))
    iterations_per_epoch = brains // settings["diffusion"]["batch_size"]  # the loader drops the last partial batch
    chunk = copy.deepcopy(settings)
    chunk["diffusion"].update({"train#trainer#max_epochs": args.epochs, "ema#start_iteration": 10**6})
    common = {"heldout_dir": str(data / "heldout"), "device": "$torch.device('cpu')", "cache_dir": str(args.workdir / "cache")}
    cases = {"whole latents": {}, f"{'x'.join(map(str, args.crop))} crops": {"latent_crop_size": args.crop, "full_latent_share": 0.0}}
    times = EpochTimes()
    trainer_log = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    trainer_log.addHandler(times)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        for turn, name in enumerate([*cases, *reversed(cases)]):
            extra = cases[name]
            run_dir = Path(scratch) / f"{turn}_{name.replace(' ', '_')}"
            (run_dir / "models").mkdir(parents=True)
            shutil.copy2(vqgan, run_dir / "models" / "autoencoder.pt")
            times.seconds.clear()
            run_stages(convergence.BUNDLE, str(run_dir), str(data / "train"), "diffusion", chunk,
                       {**common, **convergence.RECIPES[args.recipe]["train"], **extra})
            if len(times.seconds) != args.epochs:
                raise SystemExit(f"{name}: read {len(times.seconds)} epoch times from the trainer's log, expected {args.epochs}")
            seconds[name].append(statistics.median(times.seconds[1:]) / iterations_per_epoch)
    trainer_log.removeHandler(times)
    each = {name: statistics.mean(values) for name, values in seconds.items()}

    import torch

    whole, cropped = each.values()
    lines = [
        "# A training iteration on whole latents and on latent crops, side by side (brain_mri, 64^3)",
        "",
        f"Command: `python benchmarks/latent_crop_speed.py {shlex.join(sys.argv[1:])}` (commit {convergence.commit()}). "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, CPU, torch {torch.__version__}. Wall time "
        f"{(time.time() - started) / 60:.1f} min.",
        "",
        f"The recipe `{args.recipe}` (`{convergence.describe(args.recipe)}`) on the work folder's VQ-GAN and 20 "
        f"training brains, batch {settings['diffusion']['batch_size']}, through the bundle's configs; the median of "
        f"{args.epochs - 1} epochs after the first, per iteration, averaged over two trainings of each (run whole, crops, "
        "crops, whole).",
        "",
        "| latents | s / iteration (each training) | mean | against whole latents |",
        "|---|---|---|---|",
        *(f"| {name} | {', '.join(f'{v:.2f}' for v in seconds[name])} | {value:.2f} | {value / whole:.2f}x |"
          for name, value in each.items()),
        f"| half the batches crops (`full_latent_share 0.5`), expected | | {(whole + cropped) / 2:.2f} | "
        f"{(whole + cropped) / 2 / whole:.2f}x |",
        "",
        "A crop is cheaper only in the denoiser: every batch is read, flipped and encoded whole by the VQ-GAN first.",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

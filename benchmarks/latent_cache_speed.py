"""How much a diffusion training iteration costs with and without the latent cache, side by side.

    python benchmarks/latent_cache_speed.py --workdir W              # W: a `convergence.py --size 64` work folder; about 8 min
    python benchmarks/latent_cache_speed.py --workdir W --size 32    # W: the demo's (`demo_side_by_side.py`); about 3 min

The diffusion stage encodes every batch with the frozen VQ-GAN; ``latent_cache_mb`` (``common.engines.LatentCache``)
keeps the encoder's output of every input seen before, by content, so each training brain and its flip is encoded
once. Here a denoiser recipe (``--recipe``, one of ``convergence.py``'s) is trained through the brain_mri bundle's own
configs (``common.pipeline.run_stages``) on ``W``'s data and VQ-GAN with ``latent_cache_mb 0`` (every batch encoded,
the paper's code) and with the bundle's default cache, in the same process, in the order uncached, cached, cached,
uncached so that neither gains from going first or last. Each training's iteration time is the median of its epochs
from the third on (the cache fills in the first epochs), divided by the epoch's iterations; the first epoch's time
and the whole training's are given too. Writes ``latent_cache_speed.md`` (``_32`` for the demo's size).
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

import convergence  # noqa: E402  (the settings and recipes)

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
    parser.add_argument("--workdir", type=Path, required=True, help="a convergence.py work folder of --size (data, vqgan)")
    parser.add_argument("--size", type=int, choices=(32, 64), default=64)
    parser.add_argument("--recipe", help="one of convergence.py's (default: the 64^3 std-0.4 code classifier; the demo's "
                        "v_prediction at 32)")
    parser.add_argument("--epochs", type=int, help="epochs of each training (default 6 at 64^3, 20 at 32^3)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.recipe = args.recipe or ("latent_std_0.4_v_4_levels_volume_norm_depth_conv_lr_2e-3_position_codes" if args.size == 64
                                  else "v_prediction")
    args.epochs = args.epochs or (6 if args.size == 64 else 20)
    args.out = args.out or REPO / "benchmarks" / ("latent_cache_speed.md" if args.size == 64 else "latent_cache_speed_32.md")
    if args.recipe not in convergence.RECIPES:
        parser.error(f"--recipe must be one of convergence.py's: {sorted(convergence.RECIPES)}")
    if args.epochs < 4:
        parser.error("--epochs must be at least 4: the first two epochs fill the cache and are not in the median")
    vqgan = args.workdir / "vqgan" / "models" / "autoencoder.pt"
    data = args.workdir / "data"
    if not vqgan.is_file() or not (data / "train").is_dir():
        parser.error(f"{args.workdir} holds no convergence.py VQ-GAN ({vqgan}) or data ({data / 'train'})")
    from monai.bundle import ConfigParser

    from common.io import bundle_dir, write_text
    from common.pipeline import run_stages

    default_mb = ConfigParser.load_config_file(bundle_dir(convergence.BUNDLE) / "configs" / "train_diffusion.json")["latent_cache_mb"]
    brains = len(list((data / "train").glob("*.nii*")))
    settings = convergence.stage_settings(argparse.Namespace(size=args.size, paper_widths=False, train=brains, samples=8,
                                                             downsample_factor=None, scale_equivariance=0.0))
    iterations_per_epoch = brains // settings["diffusion"]["batch_size"]  # the loader drops the last partial batch
    chunk = copy.deepcopy(settings)
    chunk["diffusion"].update({"train#trainer#max_epochs": args.epochs, "ema#start_iteration": 10**6})
    common = {"heldout_dir": str(data / "heldout"), "device": "$torch.device('cpu')", "cache_dir": str(args.workdir / "cache")}
    cases = {"every batch encoded (`latent_cache_mb 0`)": 0, f"latent cache (`latent_cache_mb {default_mb}`, the default)": default_mb}
    times = EpochTimes()
    trainer_log = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    trainer_log.addHandler(times)
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}  # (steady s/it, first epoch s, total s)
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        for turn, name in enumerate([*cases, *reversed(cases)]):
            run_dir = Path(scratch) / f"run_{turn}"
            (run_dir / "models").mkdir(parents=True)
            shutil.copy2(vqgan, run_dir / "models" / "autoencoder.pt")
            times.seconds.clear()
            run_stages(convergence.BUNDLE, str(run_dir), str(data / "train"), "diffusion", chunk,
                       {**common, **convergence.RECIPES[args.recipe]["train"], "latent_cache_mb": cases[name]})
            if len(times.seconds) != args.epochs:
                raise SystemExit(f"{name}: read {len(times.seconds)} epoch times from the trainer's log, expected {args.epochs}")
            measured[name].append((statistics.median(times.seconds[2:]) / iterations_per_epoch, times.seconds[0], sum(times.seconds)))
    trainer_log.removeHandler(times)
    mean = {name: [statistics.mean(v[i] for v in values) for i in range(3)] for name, values in measured.items()}

    import torch

    base = mean[next(iter(cases))]
    lines = [
        f"# A diffusion training iteration with and without the latent cache, side by side (brain_mri, {args.size}^3)",
        "",
        f"Command: `python benchmarks/latent_cache_speed.py {shlex.join(sys.argv[1:])}` (commit {convergence.commit()}). "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, CPU, torch {torch.__version__}. Wall time "
        f"{(time.time() - started) / 60:.1f} min.",
        "",
        f"The recipe `{args.recipe}` (`{convergence.describe(args.recipe)}`) on the work folder's VQ-GAN and {brains} "
        f"training brains (random flips), batch {settings['diffusion']['batch_size']}, {args.epochs} epochs of "
        f"{iterations_per_epoch} iterations, through the bundle's configs; two trainings of each case (run uncached, "
        "cached, cached, uncached), their mean.",
        "",
        "| case | s / iteration from the third epoch (each training) | against every batch encoded | first epoch s | "
        "whole training s | against every batch encoded |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {value[0]:.2f} ({', '.join(f'{v[0]:.2f}' for v in measured[name])}) | {value[0] / base[0]:.2f}x | "
          f"{value[1]:.1f} | {value[2]:.1f} | {value[2] / base[2]:.2f}x |" for name, value in mean.items()),
        "",
        "The cache returns the latents that encoding would; the time it saves is the VQ-GAN encoder's forward pass on "
        "every volume seen before (the first epochs still encode the volumes and flips not yet seen).",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""How good are the brain bundle's volumes at the paper's size? Train, sample and evaluate on real anatomy with
held-out brains, and record the numbers, the pictures, the time and the commit.

    python benchmarks/quality.py                      # CPU, reduced widths, about 45 minutes on 2 cores
    python benchmarks/quality.py --device cuda --paper-widths --autoencoder-epochs 400 --diffusion-epochs 4000

The brain_mri bundle at the paper's 64^3 and VQ-GAN compression 2 (Khader et al., Supplementary Table 1), its own
configs run stage by stage (``common.pipeline.run_stages``). The data: the real-anatomy population of
``common.data.brain_population`` (one real T1 brain, the ICBM 2009a template, changed in shape and contrast as
real brains and scans differ): ``--train`` subjects to train on and ``--heldout`` others that no stage ever sees,
for the held-out reconstruction quality and the held-out diversity. Writes ``benchmarks/quality.md`` and the
pictures to ``benchmarks/quality/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

REDUCED = {  # widths that train in about 45 minutes on 2 CPU cores
    "autoencoder_def#base_channels": 16,
    "network_def#channels": [32, 64],
    "network_def#spatial_attention": [False, True],
    "network_def#num_heads": 4,
    "network_def#head_channels": 16,
}


def settings(args: argparse.Namespace) -> dict:
    """Overrides by stage (``common.pipeline.run_stages``): the paper's size and compression, the given widths."""
    widths = {} if args.paper_widths else REDUCED
    shared = {
        "image_size": [64, 64, 64],
        "autoencoder_def#downsample_factor": 2,
        "autoencoder_def#num_embeddings": args.codes,
        "autoencoder_def#decay": 0.9 if not args.paper_widths else 0.99,
        "autoencoder_def#output_act": "TANH",  # as the demo: see the brain bundle's docs, Differences
        **{k: v for k, v in widths.items() if k.startswith("autoencoder_def")},
    }
    return {
        "shared": shared,
        "autoencoder": {"perceptual_weight": 0.0, "lr": 0.001, "num_workers": 0, "train#trainer#max_epochs": args.autoencoder_epochs,
                        "save_interval": 0, "log_interval": 50, "heldout_interval": 200},
        "denoiser": {k: v for k, v in widths.items() if k.startswith("network_def")},
        "diffusion": {"batch_size": args.batch_size, "lr": 0.001, "num_workers": 0, "train#trainer#max_epochs": args.diffusion_epochs,
                      "accumulation_steps": 1, "ema#start_iteration": args.diffusion_epochs * (args.train // args.batch_size) // 2,
                      "ema#every": 1, "ema#decay": 0.995, "save_interval": 0, "log_interval": 50},
        "inference": {"num_samples": args.samples, "num_inference_steps": 100, "spacing": [2.6, 2.6, 2.6]},
    }


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--paper-widths", action="store_true", help="the paper's widths (for a GPU) instead of reduced ones")
    parser.add_argument("--train", type=int, default=24, help="subjects to train on")
    parser.add_argument("--heldout", type=int, default=6, help="subjects never trained on")
    parser.add_argument("--codes", type=int, default=1024, help="codebook size")
    parser.add_argument("--autoencoder-epochs", type=int, default=50)
    parser.add_argument("--diffusion-epochs", type=int, default=110)
    parser.add_argument("--batch-size", type=int, default=4, help="of the diffusion training")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality.md")
    parser.add_argument("--workdir", type=Path, help="keep the data, models and samples here (default: a temporary folder)")
    parser.add_argument("--stages", default="autoencoder,diffusion,inference,evaluation",
                        help="the stages to run (with --workdir, the later ones can be run again alone)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training stages from the checkpoints in --workdir (to train longer)")
    args = parser.parse_args()

    import torch

    from common.data import brain_demo_datalist, brain_demo_heldout_datalist
    from common.io import write_text
    from common.pipeline import run_stages

    started, revision = time.time(), commit()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or Path(scratch)
        data = Path(tmp) / "data"
        brain_demo_datalist(data, count=args.train, seed=1)  # another population than the demo's (same files again)
        brain_demo_heldout_datalist(data, count=args.heldout, seed=1)
        overrides = {"heldout_dir": str(data / "heldout"), "device": f"$torch.device('{args.device}')"}
        stage_times = {}
        for stage in [s.strip() for s in args.stages.split(",")]:
            stage_start = time.time()
            resume = {"resume": True} if args.resume and stage in ("autoencoder", "diffusion") else {}
            samples = run_stages("brain_mri", str(Path(tmp) / "run"), str(data / "train"), stage, settings(args), {**overrides, **resume})
            stage_times[stage] = time.time() - stage_start
        evaluation = Path(samples) / "evaluation"
        metrics = json.loads((evaluation / "metrics.json").read_text())
        pictures = args.out.parent / "quality"
        pictures.mkdir(parents=True, exist_ok=True)
        for name in ("samples_and_real", "reconstructions", "adjacent_slices", "nearest_neighbours", "training_curves"):
            if (evaluation / f"{name}.png").is_file():
                shutil.copy(evaluation / f"{name}.png", pictures / f"{name}.png")
    wall = time.time() - started

    recon, ratios, diversity = metrics["reconstruction"], metrics["ratios_to_real"], metrics["diversity_ms_ssim"]

    def show(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        "# Quality at the paper's size: brain_mri, 64^3, VQ-GAN compression 2",
        "",
        f"Command: `python benchmarks/quality.py{' --device ' + args.device if args.device != 'cpu' else ''}"
        f"{' --paper-widths' if args.paper_widths else ''}` (commit {revision}). Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, torch {torch.__version__}. Wall time {wall / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in stage_times.items())} min).",
        "",
        f"Data: {args.train} training and {args.heldout} held-out subjects of the real-anatomy population "
        "(`common.data.brain_population`: the ICBM 2009a T1 brain with random shape, size, bias field and contrast); "
        "the held-out subjects are never trained on. Widths: "
        f"{'the paper' if args.paper_widths else json.dumps(REDUCED)}; codebook {args.codes} x 8; VQ-GAN "
        f"{args.autoencoder_epochs} epochs, denoiser {args.diffusion_epochs} epochs at batch {args.batch_size}; decoder "
        "output tanh (as the demo; not the paper's); "
        f"{args.samples} samples, DDIM 100 steps.",
        "",
        "| measure | value | real | ratio (about 1 is real-like) |",
        "|---|---|---|---|",
        f"| held-out reconstruction PSNR | {recon['psnr_db']['mean']:.2f} dB (sd {recon['psnr_db']['std']:.2f}) | | |",
        f"| held-out reconstruction SSIM | {recon['ssim']['mean']:.3f} | | |",
        f"| diversity, 3D MS-SSIM (lower is more diverse) | {diversity['synthetic']:.3f} | {diversity.get('real_heldout', diversity['real']):.3f} ({ratios['diversity_compared_with']}) | {show(ratios['diversity_ms_ssim'])} |",
        f"| MMD to real | {metrics['mmd']['synthetic_vs_real']:.4f} | {metrics['mmd']['real_half_vs_half']:.4f} (half against half) | {show(ratios['mmd'])} |",
        f"| histogram Wasserstein to real | {metrics['intensity_histogram']['synthetic_vs_real']['wasserstein']:.4f} | {metrics['intensity_histogram']['real_half_vs_half']['wasserstein']:.4f} | {show(ratios['histogram_wasserstein'])} |",
        f"| histogram Jensen-Shannon to real | {metrics['intensity_histogram']['synthetic_vs_real']['jensen_shannon']:.4f} | {metrics['intensity_histogram']['real_half_vs_half']['jensen_shannon']:.4f} | {show(ratios['histogram_jensen_shannon'])} |",
        f"| slice consistency, SSIM of adjacent slices | {metrics['slice_consistency_ssim']['synthetic']:.3f} | {metrics['slice_consistency_ssim']['real']:.3f} | {show(ratios['slice_consistency_ssim'])} |",
        f"| near copies of a training volume | {len(metrics['memorisation_audit']['near_copies'])} of {metrics['samples']} | | |",
        "",
        "Pictures (`benchmarks/quality/`): `samples_and_real.png`, `reconstructions.png` (held-out inputs beside their "
        "reconstructions), `adjacent_slices.png`, `nearest_neighbours.png`, `training_curves.png`.",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Does autoguidance (Karras et al., NeurIPS 2024) make the demo's samples sharper or closer to real? The demo's
denoiser and its guide, sampled with and without guidance from the same seeds, side by side.

    python benchmarks/autoguidance.py --workdir W      # about 22 minutes here; reuses W's data and VQ-GAN

Everything runs the brain_mri bundle's own configs (``common.pipeline.run_stages``) with the demo's settings
(``common.pipeline.DEMO_SETTINGS``): the data and the VQ-GAN are those of ``benchmarks/convergence.py --size 32``
(made in ``--workdir`` if absent, reused if there), the denoiser is trained once with ``guide_iteration`` set (the
guide is its own snapshot, ``guide.pt``, the product's path), and, with ``--short-guide N``, a second guide is
trained on its own for N iterations with its EMA from N / 2 (a guide that costs N more iterations). Each guide is
sampled at every ``--scales`` value (``guide_path``, ``autoguidance_scale``), and everything from two seed sets, so
that a difference can be told from the noise of a seed change. Writes ``autoguidance.md`` and the samples beside
real brains in ``autoguidance/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402  (the data, the VQ-GAN settings, sampling and evaluation of the convergence runs)

BUNDLE = convergence.BUNDLE


def train(run_stages, run_dir: Path, data: Path, vqgan: Path, settings: dict, overrides: dict, iterations: int, ema_start: int) -> float:
    """Train the demo's denoiser for ``iterations`` into ``run_dir`` (skipped if done); its minutes (0 if skipped)."""
    if (run_dir / "models" / "diffusion.pt").is_file():
        return 0.0
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(vqgan / "models" / "autoencoder.pt", run_dir / "models" / "autoencoder.pt")
    chunk = copy.deepcopy(settings)
    chunk["diffusion"].update({"train#trainer#max_epochs": iterations * chunk["diffusion"]["batch_size"] // 20,
                               "ema#start_iteration": ema_start})
    start = time.time()
    run_stages(BUNDLE, str(run_dir), str(data / "train"), "diffusion", chunk, overrides)
    return (time.time() - start) / 60


def demo_vqgan(workdir: Path, settings: dict, run_stages) -> tuple[Path, Path, dict]:
    """The demo's data (20 training, 8 held-out brains) in ``workdir/data`` and its VQ-GAN in ``workdir/vqgan``, made
    there if absent (the layout of ``convergence.py --size 32``); the data folder, the VQ-GAN's run folder and the
    overrides every stage of a run on them takes."""
    from common.data import brain_demo_datalist, brain_demo_heldout_datalist

    data = workdir / "data"
    brain_demo_datalist(data, count=20, seed=0)
    brain_demo_heldout_datalist(data, count=8, seed=0)
    common = {"heldout_dir": str(data / "heldout"), "device": "$torch.device('cpu')", "cache_dir": str(workdir / "cache")}
    vqgan = workdir / "vqgan"
    if not (vqgan / "models" / "autoencoder.pt").is_file():
        run_stages(BUNDLE, str(vqgan), str(data / "train"), "autoencoder", settings, common)
        (vqgan / "settings.json").write_text(json.dumps({"scale_equivariance_weight": 0.0}) + "\n")
    elif convergence.vqgan_weight(vqgan) != 0.0:
        raise SystemExit(f"the VQ-GAN in {vqgan} was trained with a scale-equivariance term, not the demo's: use another --workdir")
    return data, vqgan, common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "convergence_run", help="data and VQ-GAN (convergence.py's)")
    parser.add_argument("--guide-iteration", type=int, default=450, help="the denoiser's snapshot taken as its guide")
    parser.add_argument("--iterations", type=int, help="denoiser iterations (default: the demo's 1,800), its EMA from half of them")
    parser.add_argument("--short-guide", type=int, default=450, help="iterations of a guide trained on its own (0: none)")
    parser.add_argument("--scales", default="1.5,2", help="autoguidance scales, each > 1")
    parser.add_argument("--seeds", default="0,1000", help="first seed of each seed set")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "autoguidance.md")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not scales or any(s <= 1 for s in scales) or not seeds:
        parser.error("--scales must be numbers above 1 and --seeds at least one seed")

    from common.io import write_text
    from common.pipeline import DEMO_SETTINGS, V_PREDICTION_DENOISER, run_stages, without_autoguidance

    started = time.time()
    settings = without_autoguidance(DEMO_SETTINGS[BUNDLE])  # guided only where a row asks for it
    settings["denoiser"].update(V_PREDICTION_DENOISER)  # the denoiser its report measured
    samples = settings["inference"]["num_samples"]
    iterations = args.iterations or settings["diffusion"]["train#trainer#max_epochs"] * 20 // settings["diffusion"]["batch_size"]
    if not 0 < args.guide_iteration < iterations:
        parser.error(f"--guide-iteration must lie inside the denoiser's {iterations} iterations")
    data, vqgan, common = demo_vqgan(args.workdir, settings, run_stages)

    work = args.workdir / "autoguidance"
    run = work / ("denoiser" if args.iterations is None else f"denoiser_{iterations}")
    minutes = {"denoiser": train(run_stages, run, data, vqgan, settings, {**common, "guide_iteration": args.guide_iteration},
                                 iterations, iterations // 2)}
    guides = {f"snapshot at {args.guide_iteration}": run / "models" / "guide.pt"}
    if args.short_guide:
        short = work / f"guide_{args.short_guide}"
        minutes["short guide"] = train(run_stages, short, data, vqgan, settings, common, args.short_guide, args.short_guide // 2)
        guides[f"trained {args.short_guide} on its own"] = short / "models" / "diffusion.pt"

    pictures = args.out.parent / args.out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        for guide, scale in [(None, 1.0), *((name, s) for name in guides for s in scales)]:
            guided = {"guide_path": str(guides[guide]), "autoguidance_scale": scale} if guide else {}
            found = convergence.sample_and_evaluate(run_stages, run, data, settings, {**common, **guided}, args.steps, seed)
            rows.append({"guide": guide or "none", "scale": scale, "seed": seed, **found})
            tag = f"{'none' if guide is None else guide.split()[0] + '_' + str(scale)}_seeds_{seed}"
            shutil.copy(run / "samples" / "evaluation" / "samples_and_real.png", pictures / f"{tag}_samples_and_real.png")
            (pictures / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps(rows[-1]), flush=True)

    import torch

    def show(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        "# Autoguidance on the demo (brain_mri, 32^3)",
        "",
        f"Command: `python benchmarks/autoguidance.py {shlex.join(sys.argv[1:])}` (commit {convergence.commit()}). Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} threads, CPU, torch {torch.__version__}. Wall time "
        f"{(time.time() - started) / 60:.1f} min; training minutes: "
        + ", ".join(f"{k} {v:.1f}" if v else f"{k} reused from --workdir" for k, v in minutes.items()) + ".",
        "",
        f"The demo's settings (`common.pipeline.DEMO_SETTINGS`), its denoiser trained {iterations} iterations with "
        f"`guide_iteration {args.guide_iteration}` on the VQ-GAN and data of `{args.workdir}`; {samples} samples of each "
        f"seed set, DDIM {args.steps} steps; ratios to the held-out real brains (about 1 is real-like). Guides: "
        + "; ".join(f"{name} (`--guide_path {path.relative_to(args.workdir)}`)" for name, path in guides.items()) + ".",
        "",
        "| guide | autoguidance_scale | seeds | s / sample | histogram JS | histogram W | diversity | slice consistency | sharpness | MMD | near copies |",
        "|" + "---|" * 11,
        *(f"| {r['guide']} | {r['scale']:g} | {r['seed']}+ | {r['seconds_per_sample']:.1f} | {show(r['histogram_jensen_shannon'])} | "
          f"{show(r['histogram_wasserstein'])} | {show(r['diversity_ms_ssim'])} | {show(r['slice_consistency_ssim'])} | "
          f"{show(r['sharpness'])} | {show(r.get('mmd'))} | {r['near_copies']} |" for r in rows),
        "",
        f"Pictures (`{pictures.name}/`): each row's samples beside real brains (`<guide>_<scale>_seeds_<seed>_samples_and_real.png`).",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

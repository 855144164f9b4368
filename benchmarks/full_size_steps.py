"""One training step of each bundle's full-size networks at its full input size, batch 1, on this machine.

Also the knee VQ-GAN at batch 2 (the paper's), beside the training step of its codebook quantizer alone on the
same 65,536 latent vectors, to show how much of the step's memory the codebook takes.

Each case runs in a fresh process: the bundle's own training config (perceptual loss off: LPIPS weights are a
download; adversarial terms on from the first step, as after ``adversarial_start``) trains on random volumes of
the bundle's ``image_size`` for ``--steps`` iterations. The first is a warm-up; the table gives the median time
of the others and the peak resident memory of the process. The denoiser step includes encoding the volume with
the (untrained) VQ-GAN, as in real training, and one optimizer step per iteration (``accumulation_steps`` 1).

    python benchmarks/full_size_steps.py                      # all bundles, writes benchmarks/full_size_steps.md
    python benchmarks/full_size_steps.py --bundles breast_mri --out /tmp/breast.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("brain_mri", "knee_mri", "breast_mri", "chest_ct")
STAGES = ("autoencoder", "denoiser")
CODEBOOK_CASES = ("knee_mri:autoencoder:2", "knee_mri:quantizer:2")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_quantizer(bundle: str, steps: int, batch: int) -> dict:
    """Training steps (search, EMA update, dead-code restart) of the bundle's codebook alone, at its latent size."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train_autoencoder.json"))
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), "device": "$torch.device('cpu')"})
    autoencoder = parser.get_parsed_content("autoencoder_def").train()
    quantizer, codebook = autoencoder.quantizer, autoencoder.codebook  # MONAI's wrapper, as in the training step
    latent_shape = [s // autoencoder.downsample_factor for s in parser["image_size"]]
    latents = torch.randn(batch, codebook.embedding_dim, *latent_shape)
    baseline = _peak_gib()
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        quantizer(latents)
        durations.append(time.perf_counter() - started)
    return {
        "bundle": bundle, "stage": "quantizer", "batch": batch, "image_size": list(parser["image_size"]),
        "vectors": latents.numel() // codebook.embedding_dim, "codes": codebook.num_embeddings,
        "parameters": 0, "step_seconds": statistics.median(durations[1:]), "baseline_gib": baseline, "peak_gib": _peak_gib(),
    }


def run_case(bundle: str, stage: str, steps: int, batch: int = 1) -> dict:
    """Build the bundle's trainer for ``stage``, run ``steps`` iterations, return what was measured."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    if stage == "quantizer":
        return run_quantizer(bundle, steps, batch)

    configs = REPO / "bundles" / bundle / "configs"
    files = [configs / "train_autoencoder.json"] + ([configs / "train_diffusion.json"] if stage == "denoiser" else [])
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({
        "bundle_root": str(REPO / "bundles" / bundle),
        "device": "$torch.device('cpu')",
        "perceptual_weight": 0,
        "adversarial_start": 0,
        "accumulation_steps": 1,
        "train#handlers": [],
        "train#trainer#max_epochs": 1,
        "train#trainer#train_data_loader": f"$[{{'image': torch.rand({batch}, 1, *@image_size) * 2 - 1}} for _ in range({steps})]",
    })
    if stage == "denoiser":
        parser["latent_autoencoder"] = "$common.networks.CodebookRangeAutoencoder(@autoencoder_def)"
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("autoencoder" if stage == "autoencoder" else "network")
    durations: list[float] = []

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        engine.state.started = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine):
        durations.append(time.perf_counter() - engine.state.started)

    torch.manual_seed(0)
    baseline = _peak_gib()
    trainer.run()
    return {
        "bundle": bundle,
        "stage": stage,
        "batch": batch,
        "image_size": list(parser["image_size"]),
        "parameters": sum(p.numel() for p in network.parameters()),
        "step_seconds": statistics.median(durations[1:]),
        "baseline_gib": baseline,
        "peak_gib": _peak_gib(),
    }


def machine() -> str:
    import monai
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}, MONAI {monai.__version__}, float32"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    parser.add_argument("--steps", type=int, default=3, help="iterations per case, the first a warm-up (at least 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "full_size_steps.md")
    parser.add_argument("--no-codebook", dest="codebook", action="store_false", help="skip the knee batch-2 codebook cases (also skipped without knee_mri)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # bundle:stage[:batch], run in this process (the child)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first iteration is a warm-up")
    if args.case:
        bundle, stage, *batch = args.case.split(":")
        print(json.dumps(run_case(bundle, stage, steps=args.steps, batch=int(batch[0]) if batch else 1)))
        return
    cases = [f"{bundle}:{stage}" for bundle in args.bundles for stage in STAGES]
    rows, codebook_rows = [], []
    codebook_cases = list(CODEBOOK_CASES) if args.codebook and "knee_mri" in args.bundles else []
    for case in cases + codebook_cases:
        child = subprocess.run(
            [sys.executable, __file__, "--case", case, "--steps", str(args.steps)], capture_output=True, text=True, cwd=REPO
        )
        if child.returncode != 0:
            raise SystemExit(f"{case} failed:\n{child.stderr[-3000:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(result, flush=True)
        (rows if case in cases else codebook_rows).append(result)
    lines = [
        "# One full-size training step per bundle (CPU)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/full_size_steps.py --steps {args.steps}`. Median of "
        f"{args.steps - 1} steps after a warm-up; peak resident memory of a fresh process per case. Parameters: the "
        "VQ-GAN's or the denoiser's (the VQ-GAN step also updates both discriminators, not counted).",
        "",
        "| bundle | network | input | parameters | step time | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        network = "VQ-GAN + discriminators (G and D update)" if row["stage"] == "autoencoder" else "DepthAttentionUNet (with encoding)"
        lines.append(
            f"| {row['bundle']} | {network} | 1x{'x'.join(map(str, row['image_size']))} | {row['parameters'] / 1e6:.2f} M "
            f"| {row['step_seconds']:.1f} s | {row['peak_gib']:.2f} GiB |"
        )
    if codebook_rows:
        step, quantizer = codebook_rows
        lines += [
            "",
            "## The codebook's share of the knee VQ-GAN's training memory (batch 2)",
            "",
            "How much each raised the process's peak above its peak just before the first step (model, optimizers and "
            "libraries loaded):",
            "",
            "| case | step time | peak memory | above the loaded process |",
            "|---|---|---|---|",
            f"| VQ-GAN + discriminators (G and D update), 2x{'x'.join(map(str, step['image_size']))} | {step['step_seconds']:.1f} s "
            f"| {step['peak_gib']:.2f} GiB | {step['peak_gib'] - step['baseline_gib']:.2f} GiB |",
            f"| its codebook quantizer alone ({quantizer['vectors']:,} vectors, {quantizer['codes']:,} codes; search, EMA update, "
            f"dead-code restart) | {quantizer['step_seconds']:.2f} s | {quantizer['peak_gib']:.2f} GiB | {quantizer['peak_gib'] - quantizer['baseline_gib']:.2f} GiB |",
        ]
    from common.io import write_text

    write_text("\n".join(lines) + "\n", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How much does blur alone raise the MS-SSIM diversity ratio? The paper's diversity measure (mean pairwise 3D
MS-SSIM, Khader et al., Sec. 3) compares structure at every scale, so a set of blurred volumes could read as "alike"
without being so. This benchmark blurs the held-out real brains (a Gaussian of each sigma, in voxels) and measures
them as ``evaluate.json`` measures samples: the sharpness ratio (share of spectral power above 0.25 cycles per voxel)
and the diversity ratio, both against the unblurred brains. Samples whose diversity ratio is well above what blur to
their sharpness gives here are alike in their anatomy, not only blurred.

    python benchmarks/diversity_and_blur.py --size 64   # the paper's brain size, about 1.5 minutes here

The brains are the demo's held-out population (``common.data.brain_demo_heldout_datalist``, seed 0), read through
the brain_mri bundle's own evaluation preprocessing. Writes ``diversity_and_blur.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import GaussianSmooth

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.data import brain_demo_heldout_datalist  # noqa: E402
from common.evaluation import metrics  # noqa: E402
from common.evaluation.synthetic import SHARPNESS_CUTOFF  # noqa: E402

SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5)


def heldout_brains(workdir: Path, count: int, size: int) -> torch.Tensor:
    """The held-out demo brains as the brain_mri bundle's evaluation reads them: (N, 1, size, size, size) in [-1, 1]."""
    brain_demo_heldout_datalist(workdir, count=count, seed=0)
    configs = REPO / "bundles" / "brain_mri" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train_autoencoder.json", "inference.json", "evaluate.json")])
    parser.update({"dataset_dir": str(workdir / "heldout"), "heldout_dir": str(workdir / "heldout"), "image_size": [size] * 3})
    dataset = parser.get_parsed_content("heldout_dataset")
    return torch.cat([torch.as_tensor(dataset[index]["image"]).float()[None] for index in range(len(dataset))])


def blurred(volumes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Every volume smoothed by a Gaussian of ``sigma`` voxels (``sigma`` 0: as it is)."""
    if sigma == 0:
        return volumes
    return torch.stack([torch.as_tensor(GaussianSmooth(sigma)(volume)) for volume in volumes])


def measure(volumes: torch.Tensor) -> dict[str, list[dict[str, float]]]:
    """Sharpness and diversity (mean pairwise MS-SSIM over every pair) of the volumes blurred by each sigma, and
    their ratios to the unblurred volumes' own."""
    pairs = len(volumes) * (len(volumes) - 1) // 2
    rows = []
    for sigma in SIGMAS:
        smooth = blurred(volumes, sigma)
        rows.append({"sigma": sigma, "sharpness": float(metrics.high_frequency_share(smooth, SHARPNESS_CUTOFF).mean()),
                     "diversity": metrics.mean_pairwise_ms_ssim(smooth, max_pairs=pairs)[0]})
    for row in rows:
        row["sharpness_ratio"], row["diversity_ratio"] = row["sharpness"] / rows[0]["sharpness"], row["diversity"] / rows[0]["diversity"]
    return {"rows": rows}


def report(args: argparse.Namespace, found: dict, seconds: float) -> str:
    lines = [
        f"# Blur and the diversity ratio ({args.size}^3 brains)", "",
        f"**How it was run.** `python benchmarks/diversity_and_blur.py --size {args.size} --heldout {args.heldout}` "
        f"({seconds:.0f} s on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads): the demo's "
        f"{args.heldout} held-out brains through the brain_mri bundle's evaluation preprocessing at {args.size}^3, each "
        "blurred by a Gaussian of sigma voxels, measured as `evaluate.json` measures samples (every pair's MS-SSIM). "
        "Ratios to the unblurred brains.", "",
        "| Gaussian sigma (voxels) | sharpness ratio | diversity ratio (MS-SSIM) | mean pairwise MS-SSIM |",
        "|---|---|---|---|",
        *(f"| {r['sigma']} | {r['sharpness_ratio']:.2f} | {r['diversity_ratio']:.3f} | {r['diversity']:.3f} |" for r in found["rows"]),
        "",
        "**How to read a sample set's ratios with it.** Blur raises the diversity ratio only a little: brains blurred to "
        "the sharpness a sample set has read that much more alike, and the rest of a sample set's diversity ratio above "
        "1 is anatomy that repeats from sample to sample.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, choices=(32, 64), default=64, help="edge of the cubic volumes")
    parser.add_argument("--heldout", type=int, default=8, help="held-out brains (at least 2)")
    parser.add_argument("--workdir", type=Path, default=REPO / "diversity_and_blur_run", help="where the brains are written")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "diversity_and_blur.md")
    args = parser.parse_args()
    if args.heldout < 2:
        parser.error(f"--heldout must be at least 2, got {args.heldout}")
    start = time.time()
    found = measure(heldout_brains(args.workdir, args.heldout, args.size))
    text = report(args, found, time.time() - start)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

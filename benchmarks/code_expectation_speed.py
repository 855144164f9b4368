"""How long a code classifier's x0 estimate takes at every sampling step: the softmax-weighted mean code of every
latent voxel (``common.sampling.expected_codes``), against the previous way of computing it, side by side.

The classifier (``code_classification``) gives K logits at every latent voxel, channel first as a convolution
gives them (K, voxels). The previous estimate took them as a transposed (voxels, K) view, a softmax over its rows
and a (voxels, K) x (K, C) product; the present one takes the softmax over the channel axis as given and one (C, K) x
(K, voxels) product. Both give the same estimate (checked here). Measured at the demo's size (512 codes, latent
8x16^3), at ``convergence.py --size 64`` (1,024 codes, 8x32^3) and with the paper's codebook at that latent (16,384
codes, 8x32^3: 2 GiB of logits), each at temperature 0.5 (the bundles' default).

    python benchmarks/code_expectation_speed.py   # about a minute on a 2-core CPU

Writes ``code_expectation_speed.md`` (or ``--out``): the median of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.speed import _median_time as seconds  # noqa: E402  (the median of repeats after a warm-up)
from common.sampling.code_expectation import expected_codes  # noqa: E402

CASES = {  # name: (codes K, latent channels C, latent side)
    "the demo (512 codes, latent 8x16^3)": (512, 8, 16),
    "convergence.py --size 64 (1,024 codes, latent 8x32^3)": (1024, 8, 32),
    "the paper's codebook at 64^3 (16,384 codes, latent 8x32^3)": (16384, 8, 32),
}
TEMPERATURE = 0.5


def previous(logits: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """The estimate as computed before: a softmax over the rows of the transposed (voxels, K) logits."""
    flat = logits.flatten(1).T
    return ((flat.float() / temperature).softmax(dim=1) @ codes.float()).to(codes.dtype).T.reshape(codes.shape[1], *logits.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "code_expectation_speed.md")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for name, (count, channels, side) in CASES.items():
            logits = torch.randn(count, side, side, side) * 3
            codes = torch.randn(count, channels)
            before, now = previous(logits, codes, TEMPERATURE), expected_codes(logits, codes, TEMPERATURE)
            difference = float((before - now).abs().max())
            if difference > 1e-4:
                raise SystemExit(f"{name}: the two estimates differ by {difference}")
            old = seconds(lambda: previous(logits, codes, TEMPERATURE), args.repeats)
            new = seconds(lambda: expected_codes(logits, codes, TEMPERATURE), args.repeats)
            rows.append((name, old, new, difference))
            print(f"{name}: previous {old:.3f} s, now {new:.3f} s, {old / new:.2f}x faster", flush=True)
    lines = [
        "# A code classifier's x0 estimate: the softmax over the channel axis (one volume)",
        "",
        f"Command: `python benchmarks/code_expectation_speed.py --repeats {args.repeats}`. Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, float32, temperature {TEMPERATURE}; the median of "
        f"{args.repeats} runs after a warm-up, both ways in the same run.",
        "",
        "| case | previous (transposed softmax) s | now (channel softmax) s | speed-up | largest difference |",
        "|---|---|---|---|---|",
        *[f"| {name} | {old:.3f} | {new:.3f} | {old / new:.2f}x | {difference:.1e} |" for name, old, new, difference in rows],
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

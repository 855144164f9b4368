"""What ``code_likelihood`` costs: a code classifier's training step and sampling step with and without every code's
log-likelihood added to its logits, side by side in one run.

The classifier and its inputs are those of ``convergence.py --size 64``'s bf16 code classifier (1,024 codes, latent
8x32^3, four levels 16 to 128 wide, a depth convolution, position channels, GroupNorm over the volume, bfloat16
autocast): a training step is the network's forward and backward pass at the 4,096 sampled voxels of each of a batch
of 4 (``common.engines.SampledVoxelsInferer``) and the cross entropy; a sampling step is one volume's forward pass
and its expected code (``common.sampling.CodeExpectation``). Random weights and latents: the cost does not depend on
what the network has learnt.

    python benchmarks/code_likelihood_speed.py   # a few minutes on a 2-core CPU

Writes ``code_likelihood_speed.md`` (or ``--out``): the median of ``--repeats`` runs after a warm-up, the two ways
alternating.
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
from common.engines import SampledVoxelsInferer  # noqa: E402
from common.networks import DepthAttentionUNet  # noqa: E402
from common.sampling import CodeExpectation, make_noise_scheduler, make_sampling_scheduler  # noqa: E402

CODES, CHANNELS, SIDE, BATCH, VOXELS = 1024, 8, 32, 4, 4096


class Codes:
    """The part of ``CodebookRangeAutoencoder`` the training inferer reads: its codes."""

    def __init__(self, codes: torch.Tensor) -> None:
        self._codes = codes

    def codes(self) -> torch.Tensor:
        return self._codes


def network() -> DepthAttentionUNet:
    return DepthAttentionUNet(
        CHANNELS, CODES, channels=(16, 32, 64, 128), spatial_attention=(False, False, True, True), num_heads=4,
        head_channels=16, volume_norm=True, depth_position_embedding=True, autocast_dtype="bfloat16", depth_kernel_size=3,
        position_channels=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "code_likelihood_speed.md")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.manual_seed(0)
    codes = torch.randn(CODES, CHANNELS)
    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = make_noise_scheduler(300, "cosine", "sample")
    latents = codes[torch.randint(0, CODES, (BATCH, SIDE, SIDE, SIDE))].movedim(-1, 1).contiguous()
    targets = torch.randint(0, CODES, (BATCH, VOXELS))
    loss_function = torch.nn.CrossEntropyLoss()

    def training_step(inferer: SampledVoxelsInferer) -> None:
        noise, timesteps = torch.randn_like(latents), torch.randint(0, 300, (BATCH,))
        voxels = torch.stack([torch.randperm(SIDE ** 3)[:VOXELS] for _ in range(BATCH)])
        optimizer.zero_grad(set_to_none=True)
        loss_function(inferer(latents, net, noise, timesteps, voxels=voxels), targets).backward()
        optimizer.step()

    with_it = SampledVoxelsInferer(scheduler, autoencoder=Codes(codes), code_classification=True, code_likelihood=True)
    without = SampledVoxelsInferer(scheduler, autoencoder=Codes(codes), code_classification=True)
    training = {"without": [], "with": []}
    for _ in range(args.repeats):  # alternating, so that a slower spell of the machine falls on both
        training["without"].append(seconds(lambda: training_step(without), 1, warm_up=not training["without"]))
        training["with"].append(seconds(lambda: training_step(with_it), 1, warm_up=not training["with"]))
    sampler = make_sampling_scheduler(300, 25, "cosine", "sample")
    volume, timestep = latents[:1], sampler.timesteps[12]
    sampling = {}
    net.eval()
    with torch.no_grad():
        for name, likelihood in (("without", None), ("with", sampler)):
            estimate = CodeExpectation(net, codes, temperature=0.5, likelihood=likelihood)
            sampling[name] = seconds(lambda: estimate(volume, timestep[None]), args.repeats)
    train = {name: sorted(times)[len(times) // 2] for name, times in training.items()}
    for name, table in (("training step", train), ("sampling step", sampling)):
        print(f"{name}: without {table['without']:.3f} s, with {table['with']:.3f} s, "
              f"{table['with'] / table['without']:.3f}x", flush=True)
    lines = [
        "# What code_likelihood costs: a code classifier's training and sampling step with and without it",
        "",
        f"Command: `python benchmarks/code_likelihood_speed.py --repeats {args.repeats}`. Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {CODES} codes, latent {CHANNELS}x{SIDE}^3, the "
        f"64^3 convergence recipe's bf16 classifier; training: batch {BATCH}, {VOXELS} sampled voxels each, forward, "
        f"backward and an Adam step; sampling: one volume at 25 DDIM steps' middle timestep, temperature 0.5. The median "
        f"of {args.repeats} runs, the two ways alternating (training) or one after the other after a warm-up (sampling), "
        f"in the same run.",
        "",
        "| step | without s | with code_likelihood s | ratio |",
        "|---|---|---|---|",
        *[f"| {name} | {table['without']:.3f} | {table['with']:.3f} | {table['with'] / table['without']:.3f}x |"
          for name, table in (("training", train), ("sampling", sampling))],
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

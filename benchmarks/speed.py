"""Speed and memory of the denoiser, the sampler and the codebook, each against its baseline in the same run.

Every case runs in a fresh process (so its peak resident memory is its own) and reports the median of
``--repeats`` runs after a warm-up. Writes ``benchmarks/speed.md`` and prints the ratios.

    python benchmarks/speed.py                   # everything, about 13 minutes on a 2-core CPU
    python benchmarks/speed.py --repeats 2 --out /tmp/speed.md

Cases:
- matmul: this machine's float32 (and bfloat16) matrix-multiply rate, the yardstick of achieved FLOP/s;
- denoiser: one training step (forward, L1 loss, backward, Adam step) and one sampling step of
  ``DepthAttentionUNet`` at the paper's configurations (brain latent 8x32x32x32, widths 32-256; knee latent
  8x64x64x8, widths 64-512), also with its bfloat16 autocast option and (at batch 2) gradient checkpointing,
  and of MONAI's ``DiffusionModelUNet`` at a matched parameter count, batch 1 and 2, with FLOPs counted by
  ``torch.utils.flop_counter``; the authors' U-Net figures, measured earlier on this machine with their released code, are set beside ours (not rerun);
- sampler: DDPM over 300 steps against DDIM over 50 and 25 (per-step time times steps, brain latent);
- codebook: nearest-code search of 65,536 vectors among 16,384 codes (knee, batch 2) with faiss and with the
  chunked torch search, against MONAI's full-matrix ``EMAQuantizer`` (at 16,384 vectors: its 65,536-vector run
  needs 16 GiB); the whole quantizer training step (search, EMA update, dead-code restart);
- scaling: the brain denoiser's training step and memory at latents 8x16^3, 8x24^3 and 8x32^3.
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
BUNDLES = {"brain": "brain_mri", "knee": "knee_mri"}  # the denoisers measured are these bundles' network_def
SHAPES = {"brain": (8, 32, 32, 32), "knee": (8, 64, 64, 8)}  # their latent_shape, checked against the configs
DENOISER_CASES = [(shape, batch) for shape in SHAPES for batch in (1, 2)]
MONAI_MATCHED = {"brain": (32, 64, 96, 128), "knee": (64, 128, 192, 224)}  # 14.6 M and 50.5 M against 14.1 M and 51.6 M
VARIANTS = {  # DepthAttentionUNet options measured beside the plain network
    "ours": {},
    "ours_bf16": dict(autocast_dtype="bfloat16"),
    "ours_checkpointing": dict(use_checkpointing=True),
    "ours_bf16_checkpointing": dict(autocast_dtype="bfloat16", use_checkpointing=True),
}
NAMES = {"ours": "DepthAttentionUNet", "ours_bf16": "DepthAttentionUNet, bfloat16 autocast", "ours_checkpointing": "DepthAttentionUNet, checkpointing", "ours_bf16_checkpointing": "DepthAttentionUNet, bfloat16 autocast and checkpointing", "monai": "DiffusionModelUNet"}
# The authors' released denoiser at the same configuration, as measured earlier on this machine with their released code (not rerun
# here: their code is not part of this repository): training step and peak memory at batch 1 and 2, sampling step.
AUTHORS = {
    "brain": {"train_step_s": {1: 5.4, 2: 12.3}, "peak_gib": {1: 2.3, 2: 4.0}, "sample_step_s": 2.4},
    "knee": {"train_step_s": {1: 8.8, 2: 17.7}, "peak_gib": {1: 3.1, 2: 5.3}, "sample_step_s": 2.9},
}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _median_time(run, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def case_matmul(repeats: int) -> dict:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    flops = 2 * 2048**3
    fp32 = flops / _median_time(lambda: a @ b, repeats)
    bf16 = flops / _median_time(lambda: a.bfloat16() @ b.bfloat16(), repeats)
    return {"fp32_gflops": fp32 / 1e9, "bf16_gflops": bf16 / 1e9}


def bundle_network_def(shape_name: str, options: dict):
    """The bundle's own denoiser (``network_def`` of its inference.json) with ``options`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / BUNDLES[shape_name] / "configs" / "inference.json"))
    parser.update({f"network_def#{key}": value for key, value in options.items()})
    if tuple(parser.get_parsed_content("latent_shape")) != SHAPES[shape_name]:
        raise ValueError(f"{BUNDLES[shape_name]}'s latent_shape is no longer {SHAPES[shape_name]}; update SHAPES.")
    return parser.get_parsed_content("network_def")


def _network(kind: str, shape_name: str):
    import torch
    from monai.networks.nets import DiffusionModelUNet

    from common.networks import DepthAttentionUNet

    torch.manual_seed(0)
    if kind in VARIANTS:
        network = bundle_network_def(shape_name, VARIANTS[kind])
        assert isinstance(network, DepthAttentionUNet)
        return network
    return DiffusionModelUNet(3, 8, 8, channels=MONAI_MATCHED[shape_name], attention_levels=(False, True, True, True), num_res_blocks=2, num_head_channels=32, norm_num_groups=16)


def _cpu_attention_flops() -> dict:
    """FLOP formulas for PyTorch's CPU fused attention, which ``FlopCounterMode`` would otherwise count as zero."""
    import torch
    from torch.utils import flop_counter

    def forward(query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    ops = torch.ops.aten
    return {ops._scaled_dot_product_flash_attention_for_cpu: forward, ops._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def case_denoiser(kind: str, shape_name: str, batch: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network = _network(kind, shape_name)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    x = torch.randn(batch, *SHAPES[shape_name])
    timesteps = torch.randint(0, 300, (batch,))

    def train_step():
        optimizer.zero_grad()
        loss = (network(x, timesteps) - x).abs().mean()
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops())
    with counter:  # the warm-up step, counted
        train_step()
    flops = counter.get_total_flops()
    step = _median_time(train_step, repeats, warm_up=False)

    @torch.no_grad()
    def sample_step():
        network(x, timesteps)

    network.eval()
    sample = _median_time(sample_step, repeats)
    return {
        "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "train_step_s": step, "sample_step_s": sample, "train_gflop": flops / 1e9,
        "train_gflops_per_s": flops / step / 1e9, "peak_gib": _peak_gib(),
    }


def case_sampler(repeats: int) -> dict:
    import torch

    from common.sampling import make_sampling_scheduler

    network = _network("ours", "brain").eval()
    latent = torch.randn(1, *SHAPES["brain"])
    result = {}
    for steps in (300, 50, 25):
        scheduler = make_sampling_scheduler(300, steps)
        t = scheduler.timesteps[len(scheduler.timesteps) // 2]

        @torch.no_grad()
        def one_step():
            noise = network(latent, torch.as_tensor([t]))
            scheduler.step(noise, t, latent)

        result[f"{'ddpm' if steps == 300 else 'ddim'}_{steps}_s"] = _median_time(one_step, repeats) * steps
    return result


def case_codebook(backend: str, repeats: int) -> dict:
    import torch
    from monai.networks.layers.vector_quantizer import EMAQuantizer

    from common.networks import CodebookQuantizer
    from common.networks.nearest_code import nearest_code

    torch.manual_seed(0)
    codes = torch.randn(16384, 8)
    if backend == "naive":
        vectors = torch.randn(16384, 8)
        quantizer = EMAQuantizer(3, 16384, 8).eval()
        quantizer.embedding.weight.data.copy_(codes)
        latents = vectors.t().reshape(1, 8, 16384, 1, 1)
        found = None

        def search():
            nonlocal found
            found = quantizer.quantize(latents)[2].flatten()

        seconds = _median_time(search, max(1, repeats - 1))
        same = bool(torch.equal(found, nearest_code(vectors, codes, backend="torch")))
        return {"vectors": 16384, "search_s": seconds, "search_s_per_65536": seconds * 4, "same_codes_as_ours": same, "peak_gib": _peak_gib()}
    vectors = torch.randn(65536, 8)
    search = _median_time(lambda: nearest_code(vectors, codes, backend=backend), repeats)
    quantizer = CodebookQuantizer(3, 16384, 8, search_backend=backend).train()
    latents = vectors.t().reshape(8, 2, 64, 64, 8).transpose(0, 1).contiguous()
    quantizer(latents)  # data initialisation
    step = _median_time(lambda: quantizer(latents), repeats)
    return {"vectors": 65536, "search_s": search, "quantizer_step_s": step, "peak_gib": _peak_gib()}


def case_scaling(size: int, repeats: int) -> dict:
    import torch

    network = _network("ours", "brain")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    x = torch.randn(1, 8, size, size, size)

    def train_step():
        optimizer.zero_grad()
        (network(x, torch.tensor([10])) - x).abs().mean().backward()
        optimizer.step()

    return {"size": size, "train_step_s": _median_time(train_step, repeats), "peak_gib": _peak_gib()}


def run_case(name: str, repeats: int) -> dict:
    kind, *args = name.split(":")
    if kind == "matmul":
        return case_matmul(repeats)
    if kind == "denoiser":
        return case_denoiser(args[0], args[1], int(args[2]), repeats)
    if kind == "sampler":
        return case_sampler(repeats)
    if kind == "codebook":
        return case_codebook(args[0], repeats)
    if kind == "scaling":
        return case_scaling(int(args[0]), repeats)
    raise ValueError(f"unknown case {name}")


def _denoiser_networks(batch: int) -> tuple[str, ...]:
    """The networks measured at this batch size: checkpointing only at batch 2, where memory matters more."""
    return ("ours", "ours_bf16", "monai") + (("ours_checkpointing", "ours_bf16_checkpointing") if batch == 2 else ())


CASES = (
    ["matmul"]
    + [f"denoiser:{net}:{shape}:{batch}" for shape, batch in DENOISER_CASES for net in _denoiser_networks(batch)]
    + ["sampler", "codebook:faiss", "codebook:torch", "codebook:naive"]
    + [f"scaling:{size}" for size in (16, 24)]  # 8x32^3 is the brain denoiser case
)


def report(results: dict, repeats: int) -> str:
    import monai
    import torch

    matmul = results["matmul"]["fp32_gflops"]
    lines = [
        "# Speed and memory, each against its baseline in the same run",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, MONAI {monai.__version__}, float32 "
        f"unless said. Command: `python benchmarks/speed.py --repeats {repeats}` (median of {repeats} after a warm-up; peak "
        "resident memory of a fresh process per case, which includes about 0.4 GiB of Python and libraries).",
        "",
        f"Matrix multiply (2048^2): float32 {matmul:.0f} GFLOP/s, bfloat16 {results['matmul']['bf16_gflops']:.0f} GFLOP/s.",
        "",
        "## Denoiser: DepthAttentionUNet (paper configuration) against MONAI DiffusionModelUNet (matched parameters)",
        "",
        "| latent | batch | network | parameters | train step | GFLOP per step | GFLOP/s | of matmul | sampling step | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, batch in DENOISER_CASES:
        for net in _denoiser_networks(batch):
            r = results[f"denoiser:{net}:{shape}:{batch}"]
            rate = results["matmul"]["bf16_gflops"] if "bf16" in net else matmul
            lines.append(
                f"| {shape} {'x'.join(map(str, SHAPES[shape]))} | {batch} | {NAMES[net]} "
                f"| {r['parameters_m']:.1f} M | {r['train_step_s']:.2f} s | {r['train_gflop']:.0f} | {r['train_gflops_per_s']:.1f} "
                f"| {r['train_gflops_per_s'] / rate:.0%} | {r['sample_step_s']:.2f} s | {r['peak_gib']:.2f} GiB |"
            )
    lines += [
        "",
        "\"of matmul\" divides by the float32 matmul rate, and for bfloat16 autocast by the bfloat16 rate. FLOPs of "
        "PyTorch's fused CPU attention (our spatial attention), which `FlopCounterMode` leaves at zero, are counted "
        "with PyTorch's own attention formulas (its backward includes recomputing the scores).",
        "",
        "Ratios (DepthAttentionUNet / DiffusionModelUNet; above 1 means ours does more FLOP per second, takes longer, or needs more memory):",
        "",
    ]
    for shape, batch in DENOISER_CASES:
        ours, base = results[f"denoiser:ours:{shape}:{batch}"], results[f"denoiser:monai:{shape}:{batch}"]
        lines.append(
            f"- {shape}, batch {batch}: achieved FLOP/s {ours['train_gflops_per_s'] / base['train_gflops_per_s']:.2f}x, "
            f"step time {ours['train_step_s'] / base['train_step_s']:.2f}x, sampling step {ours['sample_step_s'] / base['sample_step_s']:.2f}x, "
            f"peak memory {ours['peak_gib'] / base['peak_gib']:.2f}x"
        )
    lines += [
        "",
        "Options against the plain DepthAttentionUNet (same run): bfloat16 autocast's training step, sampling step and "
        "peak memory, and at batch 2 gradient checkpointing's, alone and with bfloat16 (checkpointing does not act in "
        "sampling, so its sampling ratios are noise):",
        "",
    ]
    for shape in ("brain", "knee"):
        for batch in (1, 2):
            plain = results[f"denoiser:ours:{shape}:{batch}"]
            parts = []
            for net in (n for n in _denoiser_networks(batch) if n not in ("ours", "monai")):
                r = results[f"denoiser:{net}:{shape}:{batch}"]
                parts.append(
                    f"{NAMES[net].split(', ', 1)[1]}: step {r['train_step_s'] / plain['train_step_s']:.2f}x, "
                    f"sampling step {r['sample_step_s'] / plain['sample_step_s']:.2f}x, peak memory {r['peak_gib'] / plain['peak_gib']:.2f}x"
                )
            lines.append(f"- {shape}, batch {batch}: " + "; ".join(parts))
    lines += [
        "",
        "## Against the authors' released U-Net at the same configuration",
        "",
        "Their figures are those measured earlier on this machine with their released code: not rerun here, so not side by side, and the "
        "machine varies by about 20%. Training step, peak memory (as a fraction of theirs) and one sampling step:",
        "",
        "| latent | batch | authors' step | ours float32 | ours bfloat16 | authors' peak | ours peak float32 | ours peak bfloat16 "
        "| ours peak bfloat16 + checkpointing | authors' sampling step | ours float32 | ours bfloat16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def versus(authors: float, ours: float, unit: str, speed: bool) -> str:
        """Our figure with its speed-up over, or its fraction of, the authors'."""
        ratio = f"{authors / ours:.1f}x faster" if speed else f"{ours / authors:.2f} of it"
        return f"{ours:.2f} {unit} ({ratio})"

    for shape in ("brain", "knee"):
        for batch in (1, 2):
            a = AUTHORS[shape]
            ours, low = results[f"denoiser:ours:{shape}:{batch}"], results[f"denoiser:ours_bf16:{shape}:{batch}"]
            both = results.get(f"denoiser:ours_bf16_checkpointing:{shape}:{batch}")
            row = [
                shape, str(batch), f"{a['train_step_s'][batch]:.1f} s",
                versus(a["train_step_s"][batch], ours["train_step_s"], "s", True),
                versus(a["train_step_s"][batch], low["train_step_s"], "s", True),
                f"{a['peak_gib'][batch]:.1f} GiB",
                versus(a["peak_gib"][batch], ours["peak_gib"], "GiB", False),
                versus(a["peak_gib"][batch], low["peak_gib"], "GiB", False),
                versus(a["peak_gib"][batch], both["peak_gib"], "GiB", False) if both else "not run at batch 1",
            ]
            if batch == 1:
                row += [f"{a['sample_step_s']:.1f} s", versus(a["sample_step_s"], ours["sample_step_s"], "s", True),
                        versus(a["sample_step_s"], low["sample_step_s"], "s", True)]
            else:
                row += ["not measured by the issue", "", ""]
            lines.append("| " + " | ".join(row) + " |")
    s = results["sampler"]
    lines += [
        "", "## Sampler (brain latent, DepthAttentionUNet, batch 1): per-step time times steps", "",
        "| sampler | time per sample | speed-up against DDPM 300 |", "|---|---|---|",
        f"| DDPM, 300 steps | {s['ddpm_300_s']:.0f} s | 1.0x |",
        f"| DDIM, 50 steps | {s['ddim_50_s']:.0f} s | {s['ddpm_300_s'] / s['ddim_50_s']:.1f}x |",
        f"| DDIM, 25 steps | {s['ddim_25_s']:.0f} s | {s['ddpm_300_s'] / s['ddim_25_s']:.1f}x |",
    ]
    faiss_, torch_, naive = results["codebook:faiss"], results["codebook:torch"], results["codebook:naive"]
    lines += [
        "", "## Codebook: 65,536 vectors (knee, batch 2) among 16,384 codes of 8", "",
        "| search | search time | quantizer training step | peak memory |", "|---|---|---|---|",
        f"| faiss (CPU default) | {faiss_['search_s']:.3f} s | {faiss_['quantizer_step_s']:.3f} s | {faiss_['peak_gib']:.2f} GiB |",
        f"| chunked torch (fallback, GPUs) | {torch_['search_s']:.3f} s | {torch_['quantizer_step_s']:.3f} s | {torch_['peak_gib']:.2f} GiB |",
        f"| MONAI EMAQuantizer full matrix, 16,384 vectors | {naive['search_s']:.2f} s ({naive['search_s_per_65536']:.1f} s per 65,536) | | {naive['peak_gib']:.2f} GiB |",
        "",
        f"Same codes as the full matrix: {naive['same_codes_as_ours']}. Search speed-up against the full matrix (per vector): "
        f"faiss {naive['search_s_per_65536'] / faiss_['search_s']:.0f}x, torch {naive['search_s_per_65536'] / torch_['search_s']:.0f}x.",
        "", "## Scaling of the brain denoiser's training step with the latent size (batch 1)", "",
        "| latent | train step | peak memory |", "|---|---|---|",
    ]
    for size in (16, 24, 32):
        r = results[f"scaling:{size}"] if size < 32 else results["denoiser:ours:brain:1"]
        lines.append(f"| 8x{size}^3 | {r['train_step_s']:.2f} s | {r['peak_gib']:.2f} GiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after a warm-up")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed.md")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return
    results = {}
    started = time.perf_counter()
    for name in CASES:
        child = subprocess.run([sys.executable, __file__, "--case", name, "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=REPO)
        if child.returncode != 0:
            raise SystemExit(f"case {name} failed:\n{child.stderr[-3000:]}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]} ({time.perf_counter() - started:.0f} s so far)", flush=True)
    text = report(results, args.repeats)
    from common.io import write_text

    write_text(text, args.out)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

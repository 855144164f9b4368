"""One command that checks every bundle at full size on a CUDA GPU, and writes what it measured to benchmarks/gpu.md.

    python benchmarks/gpu_check.py                         # on a CUDA machine: full size, about 8 minutes on an H100/H200
    python benchmarks/gpu_check.py --device cpu --tiny     # the same code at tiny sizes on a CPU, under 2 minutes
    sh benchmarks/gpu_prepare.sh                           # here: the wheels the bare GPU machine lacks (see its header)

For every bundle, with its own configs (networks, trainers, samplers), random weights and random inputs:

- one training step of the VQ-GAN with both discriminators active, and of the denoiser (the latent bundles), or
  of the mask-conditioned DDPM (brain_tumor_semantic), at the paper's batch size or the largest below it that
  fits (stated), in float32 and with bfloat16 autocast: step time after warm-up, volumes per second, peak GPU
  memory (allocated and reserved);
- sampling one volume with DDIM 50 and with the paper's DDPM over all steps (decoding included), and volumes per
  second at the largest batch that fits (within a time budget);
- the TorchScript exports, loaded on the device and run at another batch size, against the eager networks;

and once: the nearest-code search on the GPU against the CPU path on the same vectors (same codes? time), and,
with two or more GPUs, both training stages of brain_mri for a few iterations under torchrun with NCCL.

Each bundle runs in its own process, and each case catches its own errors (out of memory included), so one
failure loses nothing else; a failed case is recorded with its error. LPIPS is off in the VQ-GAN step (its ImageNet
weights cannot be downloaded on the machines this runs on); the timings are of everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common.pipeline import SMALL_IMAGE_SIZE, SMALL_SETTINGS  # noqa: E402  (the repository's, as the bundles run it)

LATENT = ["brain_mri", "knee_mri", "breast_mri", "chest_ct"]
GROUPS = [*LATENT, "brain_tumor_semantic", "codebook", "multi_gpu"]
PAPER_BATCH = {"brain_mri": 10, "knee_mri": 40, "breast_mri": 40, "chest_ct": 50, "brain_tumor_semantic": 1}
TINY = {  # every bundle small enough for a CPU in seconds: the latent bundles' documented small models
    **{name: {"image_size": SMALL_IMAGE_SIZE[name], **SMALL_SETTINGS["shared"], **SMALL_SETTINGS["denoiser"]} for name in LATENT},
    "brain_tumor_semantic": {"image_size": [16, 16, 16], "network_def#channels": [16, 32], "network_def#attention_levels": [False, True],
                             "network_def#num_head_channels": [16, 32], "network_def#norm_num_groups": 8},
}
TINY_DISCRIMINATORS = {k: v for k, v in SMALL_SETTINGS["autoencoder"].items() if "discriminator" in k}


# ----- measuring


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory(device) -> dict[str, float | None]:
    import torch

    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}


def reset(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_out_of_memory(error: BaseException) -> bool:
    return "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError"


# ----- building the bundles' own pieces


class Bundle:
    """A bundle's configs with random weights in a temporary checkpoint folder, on ``device``."""

    def __init__(self, name: str, device, tiny: bool, folder: Path) -> None:
        self.name, self.device, self.tiny, self.folder = name, device, tiny, folder
        self.sizes = TINY[name] if tiny else {}
        self.latent = name in LATENT

    def parser(self, *configs: str, **overrides: Any):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(REPO / "bundles" / self.name / "configs" / f"{c}.json") for c in configs])
        sizes = {**self.sizes, **({"num_train_timesteps": 10} if self.tiny else {})}
        parser.update({"bundle_root": str(REPO / "bundles" / self.name), "device": f"$torch.device('{self.device}')",
                       "ckpt_dir": str(self.folder), "log_dir": str(self.folder / "logs"), "demo_dir": str(self.folder / "demo"),
                       "initialize": [], **{k: v for k, v in sizes.items() if k.split("#")[0] in parser.config}, **overrides})
        return parser

    def image_shape(self, parser) -> list[int]:
        return list(parser["image_size"])

    def write_random_weights(self) -> None:
        """``autoencoder.pt`` and ``diffusion.pt`` as training writes them, of freshly built networks."""
        import torch

        if self.latent:
            parser = self.parser("train_autoencoder")
            torch.save({"autoencoder": parser.get_parsed_content("autoencoder_def").state_dict()}, self.folder / "autoencoder.pt")
            parser = self.parser("train_autoencoder", "train_diffusion")
        else:
            parser = self.parser("train")
        torch.save({"ema_network": parser.get_parsed_content("network_def").state_dict()}, self.folder / "diffusion.pt")


def time_trainer(trainer, device, iterations: int) -> float:
    """Median seconds per iteration of ``trainer.run()`` over its iterations after the first (the warm-up)."""
    from ignite.engine import Events

    stamps: list[float] = []

    def stamp(_):
        synchronize(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.add_event_handler(Events.STARTED, stamp)
    trainer.run()
    steps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:]))  # drop the first iteration
    if not steps:
        raise RuntimeError(f"too few iterations ({iterations}) to time after a warm-up")
    return steps[len(steps) // 2]


def train_step(bundle: Bundle, stage: str, dtype: str, iterations: int) -> dict[str, Any]:
    """One stage's training step with the bundle's trainer on random batches, at the largest batch that fits."""

    if stage == "autoencoder":
        wanted = 2
    else:
        wanted = 2 if bundle.tiny else PAPER_BATCH[bundle.name]
    batch = wanted
    while batch >= 1:
        reset(bundle.device)
        try:
            seconds = _train(bundle, stage, dtype, batch, iterations)
            return {"batch": batch, "paper_batch": wanted, "step_s": seconds, "volumes_per_s": batch / seconds, **memory(bundle.device)}
        except Exception as error:  # out of memory: try a smaller batch; anything else: report it
            if not is_out_of_memory(error) or batch == 1:
                raise
            batch //= 2
    raise RuntimeError("no batch fits")


def _train(bundle: Bundle, stage: str, dtype: str, batch: int, iterations: int) -> float:
    import torch

    device = bundle.device
    common_overrides = {"train#handlers": [], "train#trainer#max_epochs": 1}
    if stage == "autoencoder":
        overrides = {"adversarial_start": 0, "perceptual_weight": 0.0, "train#trainer#amp": dtype == "bfloat16",
                     "train#trainer#amp_dtype": "bfloat16" if dtype == "bfloat16" else None, **common_overrides}
        if bundle.tiny:
            overrides.update(TINY_DISCRIMINATORS)
        parser = bundle.parser("train_autoencoder", **overrides)
    elif bundle.latent:
        # the trainer's own autocast (float16 on CUDA, the bundles' amp default) off: float32, or the network's bfloat16
        parser = bundle.parser("train_autoencoder", "train_diffusion", **common_overrides, **{"train#trainer#amp": False,
                               "network_def#autocast_dtype": dtype if dtype == "bfloat16" else None, "accumulation_steps": 1})
    else:
        parser = bundle.parser("train", **common_overrides, **{"train#trainer#amp": False})
    shape = [batch, 1, *bundle.image_shape(parser)]
    if stage == "mask_conditioned":
        channels, classes = parser.get_parsed_content("image_channels"), parser.get_parsed_content("num_classes")
        shape[1] = channels
        labels = torch.randint(0, classes + 1, (batch, 1, *shape[2:]), device=device)
        onehot = torch.nn.functional.one_hot(labels[:, 0], classes + 1).movedim(-1, 1)[:, 1:].float()
        batches = [{"image": torch.rand(shape, device=device) * 2 - 1, "label": onehot} for _ in range(iterations)]
    else:
        batches = [{"image": torch.rand(shape, device=device) * 2 - 1} for _ in range(iterations)]
    parser["train#dataloader"] = "$@_batches"
    parser["_batches"] = batches
    trainer = parser.get_parsed_content("train#trainer")
    if stage == "mask_conditioned" and dtype == "bfloat16" and device.type == "cuda":  # MONAI autocasts on CUDA only
        trainer.amp, trainer.amp_kwargs = True, {"dtype": torch.bfloat16}
    return time_trainer(trainer, device, iterations)


def sampler_of(bundle: Bundle, steps: int | None):
    parser = bundle.parser("inference", num_inference_steps=steps if steps is not None else "@num_train_timesteps")
    return parser, parser.get_parsed_content("sampler")


def sample_one(bundle: Bundle, steps: int | None) -> dict[str, Any]:
    """Seconds to sample one volume (decoding included) with ``steps`` DDIM steps, or the DDPM over all steps."""
    import torch

    reset(bundle.device)
    parser, sampler = sampler_of(bundle, 2)  # warm-up (kernels, allocator) with 2 steps: the same shapes, not twice the time
    sampler.verbose = False
    _draw(bundle, parser, sampler)(1)
    parser, sampler = sampler_of(bundle, steps)
    sampler.verbose = False
    draw = _draw(bundle, parser, sampler)
    reset(bundle.device)  # the peak memory of this sampler alone
    synchronize(bundle.device)
    start = time.perf_counter()
    draw(1)
    synchronize(bundle.device)
    seconds = time.perf_counter() - start
    total_steps = len(sampler.inferer.scheduler.timesteps)
    return {"steps": total_steps, "seconds_per_volume": seconds, **memory(bundle.device), "dtype": str(torch.get_default_dtype())}


def _draw(bundle: Bundle, parser, sampler) -> Callable[[int], Any]:
    """A function that samples ``n`` volumes at once with the bundle's sampler (its network, scheduler, decoding)."""
    import torch

    if bundle.latent:
        return lambda n: sampler.sample(list(range(n)))
    classes = parser.get_parsed_content("num_classes")
    size = bundle.image_shape(parser)
    mask = torch.randint(0, classes + 1, (1, *size))

    def draw(n: int):
        from monai.networks.utils import one_hot

        condition = one_hot(mask[None].long(), classes + 1, dim=1)[:, 1:].float().repeat(n, 1, 1, 1, 1).to(bundle.device)
        noise = torch.randn((n, sampler.image_channels, *size), device=bundle.device)
        with torch.no_grad():
            return sampler.inferer.sample(input_noise=noise, diffusion_model=sampler.network,
                                          conditioning=condition, mode="concat", verbose=False)

    return draw


def sample_throughput(bundle: Bundle, steps: int, budget_s: float) -> dict[str, Any]:
    """Volumes per second with ``steps`` DDIM steps at the largest batch (doubling from 1) that fits in memory and
    in ``budget_s`` seconds: a batch is tried only if twice the last batch's time still fits in what is left (a
    check of the time spent alone let the last doubled batch run far past the budget)."""
    parser, sampler = sampler_of(bundle, steps)
    sampler.verbose = False
    draw = _draw(bundle, parser, sampler)
    best: dict[str, Any] = {}
    batch, spent = 1, 0.0
    while batch <= (2 if bundle.tiny else 64):  # and while the next batch fits in the budget (below)
        reset(bundle.device)
        try:
            synchronize(bundle.device)
            start = time.perf_counter()
            draw(batch)
            synchronize(bundle.device)
        except Exception as error:
            if is_out_of_memory(error):
                best["stopped_by"] = f"out of memory at batch {batch}"
                break
            raise
        seconds = time.perf_counter() - start
        spent += seconds
        if not best or batch / seconds > best["volumes_per_s"]:
            best.update({"batch": batch, "volumes_per_s": batch / seconds, **memory(bundle.device)})
        batch *= 2
        if spent + 2 * seconds > budget_s:  # the next batch, twice as large, would not fit in the budget
            best.setdefault("stopped_by", "time budget")
            break
    best.setdefault("stopped_by", "largest batch tried")
    return {"steps": steps, **best}


def torchscript(bundle: Bundle) -> dict[str, Any]:
    """Export the bundle's networks to TorchScript on the device, load them, and compare at another batch size."""
    import torch

    from common.deploy import export_torchscript

    parser = bundle.parser("inference")
    size = bundle.image_shape(parser)
    result = {}
    with torch.no_grad():
        if bundle.latent:
            autoencoder = parser.get_parsed_content("latent_autoencoder").autoencoder.eval()
            autoencoder.codebook.search_backend = "torch"
            path = export_torchscript(autoencoder, (torch.rand(1, 1, *size, device=bundle.device) * 2 - 1,), bundle.folder / "autoencoder.ts")
            loaded = torch.jit.load(str(path), map_location=bundle.device)
            images = torch.rand(2, 1, *size, device=bundle.device) * 2 - 1
            result["autoencoder_max_abs_difference"] = float((loaded(images)[0] - autoencoder(images)[0]).abs().max())
            noisy = torch.randn(1, *parser.get_parsed_content("latent_shape"), device=bundle.device)
        else:
            channels = parser.get_parsed_content("image_channels") + parser.get_parsed_content("num_classes")
            noisy = torch.randn(1, channels, *size, device=bundle.device)
        network = parser.get_parsed_content("network").eval()
        path = export_torchscript(network, (noisy, torch.tensor([1], device=bundle.device)), bundle.folder / "diffusion.ts")
        loaded = torch.jit.load(str(path), map_location=bundle.device)
        batch = torch.cat([noisy, noisy * 0.5])
        timesteps = torch.tensor([3, 7], device=bundle.device)
        result["denoiser_max_abs_difference"] = float((loaded(batch, timesteps) - network(batch, timesteps)).abs().max())
    result["matches"] = all(v < 1e-3 for k, v in result.items() if k.endswith("difference"))
    return result


def nearest_code_check(device, tiny: bool) -> dict[str, Any]:
    """The codebook search on ``device`` against the CPU path, on the same vectors (a knee batch's worth)."""
    import torch

    from common.networks.nearest_code import faiss_available, nearest_code

    vectors, codes = (4096, 256) if tiny else (65536, 16384)
    generator = torch.Generator().manual_seed(0)
    x, c = torch.randn(vectors, 8, generator=generator), torch.randn(codes, 8, generator=generator)
    cpu_backend = "faiss" if faiss_available() else "torch"

    def timed(run: Callable[[], Any], on) -> tuple[Any, float]:
        run()
        synchronize(on)
        start = time.perf_counter()
        found = run()
        synchronize(on)
        return found, time.perf_counter() - start

    on_cpu, cpu_s = timed(lambda: nearest_code(x, c, backend=cpu_backend), torch.device("cpu"))
    xd, cd = x.to(device), c.to(device)
    on_device, device_s = timed(lambda: nearest_code(xd, cd, backend="torch"), device)
    same = float((on_device.cpu() == on_cpu).float().mean())
    return {"vectors": vectors, "codes": codes, "cpu_backend": cpu_backend, "cpu_s": cpu_s, "device_s": device_s,
            "same_codes_fraction": same}


def multi_gpu_check(tiny: bool, folder: Path) -> dict[str, Any]:
    """Both training stages of brain_mri for a few iterations under torchrun with NCCL, when there are 2+ GPUs."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA GPU(s): needs 2"}
    configs = REPO / "bundles" / "brain_mri" / "configs"
    common = ["--ckpt_dir", str(folder / "models"), "--log_dir", str(folder / "logs"), "--demo_dir", str(folder / "demo"),
              "--train#trainer#max_epochs", "1", "--perceptual_weight", "0", "--num_workers", "0", "--save_interval", "0"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    timings = {}
    for stage, files in (("autoencoder", ["train_autoencoder", "multi_gpu_train_autoencoder"]),
                         ("diffusion", ["train_autoencoder", "train_diffusion", "multi_gpu_train_autoencoder", "multi_gpu_train_diffusion"])):
        listed = "[" + ",".join(f"'{configs / f}.json'" for f in files) + "]"
        start = time.perf_counter()
        result = subprocess.run([*command, "--config_file", listed, *common], cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"torchrun {stage} failed: {result.stderr[-1500:]}")
        timings[f"{stage}_s"] = time.perf_counter() - start
    return {"gpus": 2, **timings}


# ----- the cases of one group, in this process


def run_group(group: str, device_name: str, tiny: bool) -> list[dict[str, Any]]:
    import torch

    device = torch.device(device_name)
    results: list[dict[str, Any]] = []

    def case(name: str, measure: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        torch.manual_seed(0)  # the same random weights and inputs on every run of a case
        try:
            found = {"ok": True, **measure()}
        except Exception as error:  # recorded, not hidden; the next case still runs
            found = {"ok": False, "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}",
                     "trace": traceback.format_exc()[-800:]}
        found.update({"group": group, "case": name, "wall_s": time.perf_counter() - started})
        results.append(found)
        print("RESULT " + json.dumps(found), flush=True)
        reset(device)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if group == "codebook":
            case("nearest_code_search", lambda: nearest_code_check(device, tiny))
        elif group == "multi_gpu":
            case("torchrun_two_stages", lambda: multi_gpu_check(tiny, folder))
        else:
            bundle = Bundle(group, device, tiny, folder)
            case("random_weights", lambda: bundle.write_random_weights() or {})
            iterations = 3 if tiny else 4
            stages = ["autoencoder", "denoiser"] if bundle.latent else ["mask_conditioned"]
            for stage in stages:
                for dtype in ("float32", "bfloat16"):
                    case(f"train_{stage}_{dtype}", lambda s=stage, d=dtype: train_step(bundle, s, d, iterations))
            case("sample_ddim50" if not tiny else "sample_ddim5", lambda: sample_one(bundle, 5 if tiny else 50))
            case("sample_ddpm_all_steps", lambda: sample_one(bundle, None))
            case("sample_throughput_ddim50" if not tiny else "sample_throughput_ddim5", lambda: sample_throughput(bundle, 5 if tiny else 50, 30.0))
            case("torchscript_on_device", lambda: torchscript(bundle))
    return results


# ----- the whole check


def run_group_process(group: str, device_name: str, tiny: bool, timeout: float) -> list[dict[str, Any]]:
    """``run_group`` in a process of its own (a crash or a hang loses one group, and no group sees another's state);
    its results, plus a failed "(process)" case if the process died or ran out of ``timeout`` seconds."""
    call = [sys.executable, str(Path(__file__).resolve()), "--group", group, "--device", device_name, *(["--tiny"] if tiny else [])]
    started = time.perf_counter()
    try:
        done = subprocess.run(call, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output, problem = done.stdout, (f"the process exited with {done.returncode}: {done.stderr.strip()[-300:]}" if done.returncode else None)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        problem = f"the process ran out of its {timeout:.0f} s"
    found = [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]
    if problem:
        found.append({"ok": False, "group": group, "case": "(process)", "error": problem, "wall_s": time.perf_counter() - started})
    return found


def environment(device_name: str) -> dict[str, Any]:
    import monai
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "monai": monai.__version__,
             "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        found["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        found["commit"] = "unknown"
    if device_name.startswith("cuda") and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found.update({"device": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1), "gpus": torch.cuda.device_count()})
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            found["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            found["driver"] = "unknown"
    else:
        found.update({"device": f"CPU ({os.cpu_count()} cores)", "gpus": 0})
    return found


def report(env: dict[str, Any], results: list[dict[str, Any]], tiny: bool, command: str) -> str:
    def number(value, digits=2) -> str:
        return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    lines = [
        "# GPU check: every bundle at full size" + (" (here: --tiny, on the CPU: this only shows the script runs)" if tiny else ""),
        "",
        f"Command: `{command}`. " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        "Random weights and inputs, the bundles' own configs and trainers; LPIPS off in the VQ-GAN step (no weights "
        "download). Step times are medians after a warm-up step; memory is the peak during the case.",
        "",
        "## Training steps",
        "",
        "| bundle | step | dtype | batch (paper) | step time | volumes/s | peak allocated / reserved GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    failures = [r for r in results if not r.get("ok")]
    for r in results:
        if r.get("ok") and r["case"].startswith("train_"):
            _, stage, dtype = r["case"].split("_", 2)
            lines.append(f"| {r['group']} | {stage} | {dtype} | {r['batch']} ({r['paper_batch']}) | {number(r['step_s'], 3)} s "
                         f"| {number(r['volumes_per_s'])} | {number(r['peak_allocated_gib'])} / {number(r['peak_reserved_gib'])} |")
    lines += ["", "## Sampling (decoding included)", "", "| bundle | case | steps | seconds per volume | best batch | volumes/s | peak allocated GiB |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("ok") and r["case"].startswith("sample_"):
            lines.append(f"| {r['group']} | {r['case']} | {r['steps']} | {number(r.get('seconds_per_volume'), 3)} | {r.get('batch', 1)} "
                         f"| {number(r.get('volumes_per_s'))} | {number(r.get('peak_allocated_gib'))} |")
    lines += ["", "## TorchScript on the device, codebook search, several GPUs", ""]
    for r in results:
        if r.get("ok") and r["case"] in ("torchscript_on_device", "nearest_code_search", "torchrun_two_stages"):
            shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k not in ("ok", "group", "case", "trace")}
            lines.append(f"- {r['group']}, {r['case']}: {json.dumps(shown)}")
    lines += ["", f"## Failures ({len(failures)})", ""]
    lines += [f"- {r['group']}, {r['case']}: {r['error']}" for r in failures] or ["None."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --tiny: does the script run?)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and sizes, for the CPU")
    parser.add_argument("--groups", nargs="+", default=GROUPS, choices=GROUPS)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds for one bundle's process")
    parser.add_argument("--budget", type=float, help="seconds for the whole check: a group gets at most what is left, and "
                        "the groups after it are recorded as not run (for a machine lent for minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu.md")
    parser.add_argument("--group", help=argparse.SUPPRESS)  # internal: run one group in this process
    args = parser.parse_args()
    if args.group:
        run_group(args.group, args.device, args.tiny)
        return

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --device cpu --tiny to check that the script works.")
    command = " ".join(["python benchmarks/gpu_check.py", *sys.argv[1:]])
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    from common.io import write_text

    env, results, begun = environment(args.device), [], time.perf_counter()
    for group in args.groups:
        left = None if args.budget is None else args.budget - (time.perf_counter() - begun)
        if left is not None and left < 10:
            results.append({"ok": False, "group": group, "case": "(process)", "wall_s": 0.0,
                            "error": f"not run: the --budget of {args.budget:.0f} s was spent"})
            continue
        started = time.perf_counter()
        found = run_group_process(group, args.device, args.tiny, args.timeout if left is None else min(args.timeout, left))
        results += found
        print(f"{group}: {sum(r.get('ok', False) for r in found)} of {len(found)} cases ok in {time.perf_counter() - started:.0f} s", flush=True)
        # the report so far after every group: a run stopped from outside keeps what it measured
        write_text(report(env, results, args.tiny, command), args.out)
        write_text(json.dumps(results, indent=1) + "\n", args.out.with_suffix(".json"))
    text = report(env, results, args.tiny, command)
    write_text(text, args.out)
    write_text(json.dumps(results, indent=1) + "\n", args.out.with_suffix(".json"))
    print(text)


if __name__ == "__main__":
    main()

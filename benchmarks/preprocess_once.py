"""Preprocessing once for many processes, stages and runs: ``CheckedCacheDataset`` with ``cache_dir`` against
the in-memory cache every process fills on its own, side by side, for 1, 2 and 4 processes (gloo, as torchrun
starts them), and the second run (or the diffusion stage after the VQ-GAN stage) on a filled ``cache_dir``.

    python benchmarks/preprocess_once.py [--volumes 24] [--processes 1 2 4]   -> benchmarks/preprocess_once.md

Data: gzipped NIfTI brains of 160x192x160 voxels (benchmarks/dataset_check.py's), the brain bundle's own
preprocessing to 64^3 (its config). Each process uses one thread, as the bundles' processes on a shared machine
would. Time: from a barrier to the moment every process has its dataset ready (the slowest process). Memory,
summed over the processes: the preprocessed volumes each holds (exact bytes of its cache), and how far building
the dataset raised its peak resident memory (the loaded 160x192x160 volumes and the allocator's caches; the page
cache that reads from the store share is not a process's own).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(rank: int, world: int, port: int, data: str, cache_dir: str | None, out: str) -> None:
    import torch
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    from common.data import CheckedCacheDataset, nifti_datalist

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world)})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "brain_mri" / "configs" / "train_autoencoder.json"))
    transform = parser.get_parsed_content("train#preprocessing")
    datalist = nifti_datalist(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    dist.barrier()
    started = time.perf_counter()
    dataset = CheckedCacheDataset(datalist, transform, image_size=[64, 64, 64], cache_rate=1.0, num_workers=1,
                                  cache_dir=cache_dir, progress=False)
    ready = time.perf_counter() - started
    dataset[0]  # one item read, as the first step does
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    cached = [item for item in (dataset._cache or []) if item is not None]
    held = sum(v.numel() * v.element_size() for item in cached for v in item.values() if isinstance(v, torch.Tensor)) / 2**20
    Path(out, f"rank{rank}.json").write_text(json.dumps({"ready_s": ready, "held_mib": held, "peak_mib": peak}))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, data: Path, cache_dir: Path | None) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), str(data), str(cache_dir) if cache_dir else None, out), nprocs=world)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    return {"ready_s": max(r["ready_s"] for r in ranks), "held_mib": sum(r["held_mib"] for r in ranks),
            "peak_mib": sum(r["peak_mib"] for r in ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=24)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "preprocess_once.md")
    args = parser.parse_args()

    import torch

    from benchmarks.dataset_check import make_volumes
    from common.io import write_text

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        make_volumes(data, args.volumes)
        for world in args.processes:
            cache = Path(tmp) / f"cache{world}"
            memory = run(world, data, None)
            cold = run(world, data, cache)
            warm = run(world, data, cache)
            rows.append((world, memory, cold, warm))
            print(world, memory, cold, warm, flush=True)

    lines = [
        "# Preprocessing once: a disk store shared by processes, stages and runs",
        "",
        f"Command: `python benchmarks/preprocess_once.py --volumes {args.volumes}`. Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; one thread per process. {args.volumes} gzipped NIfTI "
        "brains of 160x192x160, the brain bundle's preprocessing to 64^3. Baseline, in the same run: the in-memory "
        "cache (`cache_rate` 1) each process fills on its own, as before. Single runs; expect about 10% noise.",
        "",
        "| processes | in memory: ready s | volumes held MiB | peak added MiB | `cache_dir`, first run: ready s | time ratio | volumes held MiB | peak added MiB | peak ratio | second run or stage: ready s | time ratio | peak added MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for world, memory, cold, warm in rows:
        lines.append(
            f"| {world} | {memory['ready_s']:.1f} | {memory['held_mib']:.0f} | {memory['peak_mib']:.0f} | {cold['ready_s']:.1f} | "
            f"{cold['ready_s'] / memory['ready_s']:.2f}x | {cold['held_mib']:.0f} | {cold['peak_mib']:.0f} | "
            f"{cold['peak_mib'] / max(memory['peak_mib'], 1):.2f}x | {warm['ready_s']:.2f} | {warm['ready_s'] / memory['ready_s']:.2f}x | "
            f"{warm['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "Each process of the in-memory cache preprocesses every volume and keeps all of them; with `cache_dir` each "
        "preprocesses 1/N of them once, and a second run or stage only checks that the files are there. With more "
        "processes than cores (4 on this 2-core machine) the processes share the cores, so the in-memory time grows "
        "with N while the store's stays about that of one pass.",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

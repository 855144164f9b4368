"""What every sampler of the collection does the same way: seeds, the random state, the work shared out over
processes, and the record of what was written.

A sample is fixed by its seed: its starting noise is drawn on the CPU from that seed (identical on every machine),
and the random draws of the sampling steps (DDPM adds noise at every step) come from the generators of the CPU and
of the sampling device, seeded with the same seed (for a batch: its first sample's). The caller's random state, CPU
and CUDA, is left as it was. Under ``torch.distributed`` (torchrun) job ``i`` goes to rank ``i % world_size``, and
rank 0 writes the record of every process's files (``samples.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from common.io import gather, process_rank, write_json

__all__ = ["SAMPLES_RECORD", "sample_shared_out", "seeded_random_state", "starting_noise"]

SAMPLES_RECORD = "samples.json"

Job = TypeVar("Job")


def starting_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Gaussian noise of ``shape`` from ``seed``, drawn on the CPU so that it is the same on every machine."""
    return torch.randn(tuple(int(s) for s in shape), generator=torch.Generator().manual_seed(int(seed)))


@contextmanager
def seeded_random_state(seed: int, device: torch.device) -> Iterator[None]:
    """Inside: the CPU generator and, sampling on CUDA, that device's generator are seeded with ``seed``; after: the
    caller's states of both are back as they were (no other generator is touched)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(int(seed))
        if devices:
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(int(seed))
        yield


def sample_shared_out(
    jobs: Sequence[Job],
    sample_and_write: Callable[[list[Job]], list[tuple]],
    output_dir: str | os.PathLike,
    record: Callable[[list[tuple]], dict[str, Any]],
    batch_size: int = 1,
) -> tuple[list[tuple], list[tuple]]:
    """Run this process's share of ``jobs`` through ``sample_and_write`` in batches of ``batch_size``; rank 0 then
    writes ``record(every process's results)`` as ``output_dir/samples.json``.

    ``sample_and_write`` takes a batch of jobs and returns one tuple per written sample, whose first item (the
    sample's index or seed) orders the record whatever the number of processes. Returns this process's results
    and every process's, in that order.
    """
    rank, world = process_rank()
    mine = list(jobs)[rank::world]
    results: list[tuple] = []
    for start in range(0, len(mine), batch_size):
        results.extend(sample_and_write(mine[start : start + batch_size]))
    everyone = sorted(gather(results), key=lambda result: result[0])
    if rank == 0:
        write_json(record(everyone), os.path.join(output_dir, SAMPLES_RECORD), indent=4)
    return results, everyone

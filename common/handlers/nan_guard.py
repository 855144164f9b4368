"""Stopping training at the first non-finite loss, before a checkpoint of broken weights can be written.

Both kinds of trainer are read: ``VQGANTrainer`` keeps its output as one dict (``loss`` and ``losses``, a dict of
every term), MONAI's ``SupervisedTrainer`` decollates its output into a list of per-volume dicts (each holding the
batch's ``loss``). The error names the loss term and, when the batch items carry their names (``source``, which
``common.data.CheckedCacheDataset`` adds), the files of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss", "batch_sources"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite."""


def _losses(output: Any) -> dict[str, float]:
    """Named scalar losses of an engine output: ``{"loss": ...}``, ``{"losses": {...}}``, a list of such dicts
    (a decollated ``SupervisedTrainer`` output: every item holds the batch's loss), or a bare scalar."""
    found: dict[str, float] = {}
    if isinstance(output, (list, tuple)):
        for item in output:
            found.update(_losses(item))
    elif isinstance(output, Mapping):
        for key in ("loss", "losses"):
            value = output.get(key)
            if isinstance(value, Mapping):
                found.update({f"{key}/{name}": float(v) for name, v in value.items() if _is_scalar(v)})
            elif _is_scalar(value):
                found[key] = float(value)
    elif _is_scalar(output):
        found["loss"] = float(output)
    return found


def batch_sources(batch: Any, key: str = "source") -> list[str]:
    """The names of the items of a batch: a collated dict (``{key: [names]}``) or a decollated list of dicts."""
    if isinstance(batch, Mapping):
        names = batch.get(key)
        return [str(n) for n in names] if isinstance(names, (list, tuple)) else ([str(names)] if names is not None else [])
    if isinstance(batch, (list, tuple)):
        return [name for item in batch for name in batch_sources(item, key)]
    return []


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)


class StopOnNonFiniteLoss:
    """Raise ``NonFiniteLossError`` at the first iteration whose loss is NaN or infinite.

    Unlike ignite's ``TerminateOnNan``, which ends the run normally (so a final checkpoint of the broken weights
    would be written), this raises: ``AtomicCheckpointSaver`` writes no final file after an exception, and the
    last periodic checkpoint, written before the loss broke, stays the newest. Attach it before the saver so it
    runs first at the same iteration.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        bad = {name: value for name, value in _losses(engine.state.output).items() if not math.isfinite(value)}
        if bad:
            described = ", ".join(f"{name} = {value}" for name, value in bad.items())
            sources = batch_sources(engine.state.batch)
            batch = f" The batch held: {', '.join(sources)}." if sources else ""
            raise NonFiniteLossError(
                f"training stopped at iteration {engine.state.iteration} (epoch {engine.state.epoch}): {described}.{batch} "
                "No checkpoint was written for this iteration; the newest checkpoint in the checkpoint folder is the "
                "last good one. Lower the learning rate, check the data, or resume from it with --resume true."
            )

"""Reading checkpoints with safe unpickling and errors that say which file and what is wrong.

Every load goes through ``read_checkpoint``, which uses ``torch.load(weights_only=True)``: a weights file can
hold tensors, numbers, strings and containers of them, never arbitrary pickled objects that would run code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "ModelSettings",
    "check_state_objects",
    "checkpoint_iteration",
    "find_latest_checkpoint",
    "load_state",
    "load_weights",
    "non_finite_entries",
    "periodic_iteration",
    "read_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the network."""


class ModelSettings:
    """Settings that define a trained model beyond its weights (for a diffusion model: its noise schedule, what it
    predicts, how its inputs are scaled). Saved in its checkpoint like any state (``state_dict``), and compared
    when a checkpoint is loaded (``load_state_dict``): a model sampled with another setting than it was trained
    with gives wrong volumes without any error, so a difference is refused, naming the setting and the value the
    checkpoint needs.

    Args:
        written_before: the settings of every checkpoint written before settings were stored (for the latent
            bundles, the paper's recipe, the only one before release 0.2.2), so that such a checkpoint is refused
            too when it is sampled with another; None lets it pass.
        settings: names and values: strings, numbers, booleans, None, and lists and string-keyed mappings of them
            (for a class-conditional model, its ``class_labels``); compared as JSON values, so a tuple equals a list.
    """

    def __init__(self, written_before: Mapping[str, Any] | None = None, **settings: Any) -> None:
        self.settings = {name: self._plain(name, value) for name, value in settings.items()}
        self.written_before = {name: self._plain(name, value) for name, value in (written_before or {}).items()}
        unknown = sorted(set(self.written_before) - set(settings))
        if unknown:
            raise ValueError(f"written_before names {unknown}, which are not settings ({sorted(settings)}).")

    @staticmethod
    def _plain(name: str, value: Any) -> Any:
        """``value`` as plain JSON data (what a checkpoint read with ``weights_only`` holds); ``TypeError`` otherwise."""
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise TypeError(f"setting '{name}' must be a string, number, boolean or None, or lists and mappings of "
                            f"them, got {value!r}.") from None

    def state_dict(self) -> dict[str, str | int | float | bool]:
        return dict(self.settings)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # a setting added after the checkpoint was written had, in it, the value every earlier checkpoint had
        state = {**{k: v for k, v in self.written_before.items() if k not in state}, **state}
        differ = [f"{name} {state[name]!r} (configured: {value!r})" for name, value in self.settings.items()
                  if name in state and self._plain(name, state[name]) != value]
        if differ:
            raise ValueError(
                f"the model was trained with {', '.join(differ)}; set {' and '.join(f'--{d.split()[0]}' for d in differ)} "
                "to the trained value"
            )

    def check(self, checkpoint: Any, path: str | os.PathLike, key: str = "model_settings") -> None:
        """Compare with the settings stored in ``checkpoint``, the content of the file ``path``; one written before
        settings were stored is compared with ``written_before``."""
        if isinstance(checkpoint, Mapping) and key in checkpoint:
            load_state(self, checkpoint[key], path, key)
        elif self.written_before:
            try:
                self.load_state_dict(self.written_before)
            except ValueError as error:
                raise CheckpointError(f"checkpoint {path} holds no settings, so it was written before they were stored "
                                      f"and {error}") from None


def check_state_objects(objects: Mapping[str, Any], method: str, argument: str) -> dict[str, Any]:
    """``objects`` (what a checkpoint holds, by name) as a dict, after checking that each has ``method``
    (``state_dict`` to save, ``load_state_dict`` to restore) and that none is named "trainer", the name under which
    the engine's own state is kept."""
    if "trainer" in objects:
        raise ValueError(f"{argument} must not have a 'trainer' entry: the engine's state is kept under that name.")
    for key, obj in objects.items():
        if not callable(getattr(obj, method, None)):
            raise TypeError(f"{argument}['{key}'] has no {method}().")
    return dict(objects)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The content of the checkpoint file ``path``, loaded to the CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train the model first or point to its weights.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, or disallowed pickled objects
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}).") from error


def _floating_tensors(entries: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, floating-point tensor) pairs anywhere in a nested state dict: "network/conv.weight" for the entry
    "conv.weight" of the entry "network"."""
    if isinstance(entries, torch.Tensor):
        if entries.is_floating_point():
            yield prefix, entries
        return
    items = entries.items() if isinstance(entries, Mapping) else enumerate(entries) if isinstance(entries, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{'/' if '/' not in prefix else '.'}{key}" if prefix else str(key)
        yield from _floating_tensors(value, name)


def non_finite_entries(state: Any) -> list[str]:
    """The names of the tensors of a (nested) state dict that hold NaN or infinite values."""
    return [name for name, value in _floating_tensors(state) if not torch.isfinite(value).all()]


def load_state(target: Any, state: Any, path: str | os.PathLike, key: str | None = None) -> None:
    """``target.load_state_dict(state)`` (a network wrapped in DDP is loaded unwrapped), with a clear error when
    the state does not fit, e.g. a checkpoint of another bundle or of other network settings, or holds NaN or
    infinite values (weights that would give NaN volumes)."""
    broken = non_finite_entries(state)
    if broken:
        raise CheckpointError(
            f"checkpoint {path}{f' [{key}]' if key else ''} holds NaN or infinite values in {', '.join(broken[:5])}"
            f"{f' and {len(broken) - 5} more' if len(broken) > 5 else ''}; the run that wrote it had diverged. Use an "
            "earlier checkpoint of that run (its periodic files, or earlier_runs/)."
        )
    target = getattr(target, "module", target) if isinstance(target, nn.Module) else target
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        summary = " ".join(line.strip() for line in str(error).splitlines()[:4])
        raise CheckpointError(
            f"checkpoint {path}{f' [{key}]' if key else ''} does not fit {type(target).__name__} "
            f"(was it trained with other settings or by another bundle?): {summary}"
        ) from error


def load_weights(
    network: nn.Module, path: str | os.PathLike, key: str | None = None, settings: ModelSettings | None = None
) -> nn.Module:
    """Load ``network``'s weights from ``path`` and return the network.

    Args:
        network: the network to fill.
        path: a checkpoint file: a state dict, or a dict of state dicts as ``AtomicCheckpointSaver`` writes.
        key: which entry of a dict of state dicts to load; ``None`` for a plain state dict.
        settings: what the network is used with; refused if the checkpoint's ``model_settings`` differ.
    """
    checkpoint = read_checkpoint(path)
    if settings is not None:
        settings.check(checkpoint, path)
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise CheckpointError(f"checkpoint {path} has no entry '{key}' (found: {found}).")
        checkpoint = checkpoint[key]
    load_state(network, checkpoint, path, key)
    return network


def periodic_iteration(path: str | os.PathLike, name: str) -> int | None:
    """The iteration in a periodic checkpoint's file name ``<name>_iteration=<n>.pt``, or None for other files."""
    match = re.fullmatch(rf"{re.escape(name)}_iteration=(\d+)\.pt", Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_iteration(path: str | os.PathLike, name: str) -> int:
    """Training iteration a checkpoint was written at: from a periodic file's name, or the final file's trainer state."""
    path = Path(path)
    periodic = periodic_iteration(path, name)
    if periodic is not None:
        return periodic
    trainer = read_checkpoint(path).get("trainer", {}) if path.name == f"{name}.pt" else {}
    return int(trainer.get("iteration", 0))


def find_latest_checkpoint(save_dir: str | os.PathLike, name: str) -> Path | None:
    """The checkpoint of ``name`` in ``save_dir`` written at the highest training iteration, or None.

    Looks at the periodic files ``<name>_iteration=<n>.pt`` and the final ``<name>.pt`` that
    ``AtomicCheckpointSaver`` writes; temporary files of an interrupted write are never candidates.
    """
    folder = Path(save_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob(f"{name}*.pt") if re.fullmatch(rf"{re.escape(name)}(_iteration=\d+)?\.pt", p.name)]
    return max(candidates, key=lambda p: checkpoint_iteration(p, name), default=None)

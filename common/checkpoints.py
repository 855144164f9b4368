"""Loading trained weights with safe unpickling and errors that say which file and what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "load_weights"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the network."""


def load_weights(network: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load ``network``'s weights from ``path`` (``torch.load(weights_only=True)``) and return the network.

    Args:
        network: the network to fill.
        path: a checkpoint file: a state dict, or a dict of state dicts as ``AtomicCheckpointSaver`` writes.
        key: which entry of a dict of state dicts to load; ``None`` for a plain state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train the model first or point to its weights.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, or disallowed pickled objects
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}).") from error
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise CheckpointError(f"checkpoint {path} has no entry '{key}' (found: {found}).")
        checkpoint = checkpoint[key]
    try:
        network.load_state_dict(checkpoint)
    except RuntimeError as error:
        summary = str(error).splitlines()
        raise CheckpointError(
            f"checkpoint {path}{f' [{key}]' if key else ''} does not fit {type(network).__name__} "
            f"(was it trained with other network settings?): {' '.join(s.strip() for s in summary[:4])}"
        ) from error
    return network

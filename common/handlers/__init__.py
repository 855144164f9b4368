"""Ignite handlers the bundles need beyond MONAI's: atomic checkpoints, resuming a killed run, stopping at a
non-finite loss, and the denoiser's EMA weights."""

from .checkpoint_saver import AtomicCheckpointSaver
from .ema import DelayedEMAHandler
from .nan_guard import NonFiniteLossError, StopOnNonFiniteLoss
from .resume import CheckpointResumer

__all__ = [
    "AtomicCheckpointSaver",
    "CheckpointResumer",
    "DelayedEMAHandler",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
]


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

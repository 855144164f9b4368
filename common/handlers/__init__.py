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

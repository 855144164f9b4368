"""Ignite handlers the bundles need beyond MONAI's: atomic checkpoints and the denoiser's EMA weights."""

from .checkpoint_saver import AtomicCheckpointSaver, save_atomically
from .ema import DelayedEMAHandler

__all__ = ["AtomicCheckpointSaver", "DelayedEMAHandler", "save_atomically"]

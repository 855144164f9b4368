"""Ignite handlers the bundles need beyond MONAI's: atomic checkpoints and the denoiser's EMA weights."""

from .checkpoint_saver import AtomicCheckpointSaver, save_atomically
from .ema import EMAHandler

__all__ = ["AtomicCheckpointSaver", "EMAHandler", "save_atomically"]

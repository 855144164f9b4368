"""Ignite handlers the bundles need beyond MONAI's: one run per checkpoint folder, refusing training that would do
nothing, atomic checkpoints (and the snapshot an autoguidance guide is), resuming a killed run, stopping at a
non-finite loss, the denoiser's EMA weights and a resume-safe learning rate decay, the latents the denoiser is
given (statistics and scale), and the VQ-GAN's held-out reconstruction quality and codebook health while it trains
(stopping it when its decoder has died)."""

from .checkpoint_saver import AtomicCheckpointSaver, IterationSnapshot
from .ema import DelayedEMAHandler
from .latent_statistics import LatentStatistics, measure_latents
from .lr_decay import LearningRateDecay
from .nan_guard import NonFiniteLossError, StopOnNonFiniteLoss
from .resume import CheckpointResumer
from .run_lock import CheckpointDirLock, CheckpointDirLockedError
from .training_length import TrainingLengthCheck
from .vqgan_monitor import CodebookCollapseWarning, ConstantReconstructionError, HeldoutReconstruction, StopOnConstantReconstruction

__all__ = [
    "AtomicCheckpointSaver",
    "CheckpointDirLock",
    "CheckpointDirLockedError",
    "CheckpointResumer",
    "CodebookCollapseWarning",
    "ConstantReconstructionError",
    "DelayedEMAHandler",
    "HeldoutReconstruction",
    "IterationSnapshot",
    "LatentStatistics",
    "LearningRateDecay",
    "NonFiniteLossError",
    "StopOnConstantReconstruction",
    "StopOnNonFiniteLoss",
    "TrainingLengthCheck",
    "measure_latents",
]


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

"""The two training stages on MONAI's ignite engines."""

from .latent_diffusion import LatentDiffusionPrepareBatch
from .vqgan_trainer import VQGANTrainer

__all__ = ["LatentDiffusionPrepareBatch", "VQGANTrainer"]

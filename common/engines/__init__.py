"""The training stages on MONAI's ignite engines: VQ-GAN, latent diffusion, and mask-conditioned diffusion."""

from .conditional_diffusion import ConcatConditionPrepareBatch
from .latent_diffusion import LatentDiffusionPrepareBatch
from .vqgan_trainer import VQGANTrainer

__all__ = ["ConcatConditionPrepareBatch", "LatentDiffusionPrepareBatch", "VQGANTrainer"]

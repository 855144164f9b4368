"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": the DDPM learns the VQ-GAN's unquantized,
codebook-range normalised latents.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, default_prepare_batch
from monai.utils import CommonKeys as Keys

from common.networks import CodebookRangeAutoencoder

__all__ = ["LatentDiffusionPrepareBatch"]

logger = logging.getLogger(__name__)


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer``: the trainer then sees (latent, noise target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch (rather than caching
    latents) keeps the image-space flip augmentation of the paper.

    The first batch's latents are checked once: if they spread over less than ``min_latent_std`` (standard
    deviation, on the [-1, 1] scale), a warning says so. That happens when a few stale codes far from the
    encoder's outputs stretch the codebook range; the diffusion model then sees almost constant inputs and
    learns little. Training the VQ-GAN longer (stale codes decay and are restarted) is the cure.

    Args:
        autoencoder: the wrapped VQ-GAN that maps images to normalised latents.
        num_train_timesteps: number of diffusion steps T (the paper: 300).
        min_latent_std: spread below which the first batch triggers the warning.
    """

    def __init__(
        self, autoencoder: CodebookRangeAutoencoder, num_train_timesteps: int, min_latent_std: float = 0.05
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        self.autoencoder = autoencoder
        self.min_latent_std = min_latent_std
        self._checked = False

    def check_spread(self, latents: torch.Tensor) -> None:
        """Warn (once) when normalised latents fill only a sliver of [-1, 1]."""
        self._checked = True
        std, low, high = float(latents.std()), float(latents.min()), float(latents.max())
        if std < self.min_latent_std:
            logger.warning(
                "normalised latents of the first batch span [%.3f, %.3f] with std %.4f: a few codebook entries far "
                "from the encoder's outputs stretch the codebook range, and the diffusion model will see nearly "
                "constant inputs. Train the VQ-GAN longer (or with a lower codebook decay) before this stage.",
                low,
                high,
                std,
            )

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(torch.as_tensor(images))
        if not self._checked:
            self.check_spread(latents)
        return super().__call__({Keys.IMAGE: latents}, device, non_blocking, **kwargs)

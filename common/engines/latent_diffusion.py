"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, default_prepare_batch
from monai.utils import CommonKeys as Keys

from common.latent import CodebookRangeAutoencoder

__all__ = ["LatentDiffusionPrepareBatch"]


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer``: the trainer then sees (latent, noise target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch (rather than caching
    latents) keeps the image-space flip augmentation of the paper.

    Args:
        autoencoder: the wrapped VQ-GAN that maps images to normalised latents.
        num_train_timesteps: number of diffusion steps T (the paper: 300).
    """

    def __init__(self, autoencoder: CodebookRangeAutoencoder, num_train_timesteps: int) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        self.autoencoder = autoencoder

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(torch.as_tensor(images))
        return super().__call__({Keys.IMAGE: latents}, device, non_blocking, **kwargs)

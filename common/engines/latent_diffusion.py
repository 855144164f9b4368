"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": the DDPM learns the VQ-GAN's unquantized,
codebook-range normalised latents.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from monai.networks.schedulers import Scheduler
from monai.utils import CommonKeys as Keys

from common.engines.prediction_target import PREDICTION_TYPES, PredictionTargetPrepareBatch
from common.networks import CodebookRangeAutoencoder

__all__ = ["PREDICTION_TYPES", "LatentDiffusionPrepareBatch"]


class LatentDiffusionPrepareBatch(PredictionTargetPrepareBatch):
    """``PredictionTargetPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer``: the trainer then sees (latent, target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch (rather than caching
    latents) keeps the image-space flip augmentation of the paper. The target is the scheduler's ``prediction_type``
    (the paper's: the noise).

    Args:
        autoencoder: the wrapped VQ-GAN that maps images to normalised latents.
        num_train_timesteps: number of diffusion steps T (the paper: 300).
        scheduler: the training noise scheduler; None: epsilon prediction.
    """

    def __init__(
        self, autoencoder: CodebookRangeAutoencoder, num_train_timesteps: int, scheduler: Scheduler | None = None
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, scheduler=scheduler)
        self.autoencoder = autoencoder

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(torch.as_tensor(images))
        return super().__call__({Keys.IMAGE: latents}, device, non_blocking, **kwargs)

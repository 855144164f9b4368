"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": the DDPM learns the VQ-GAN's unquantized,
codebook-range normalised latents.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, default_prepare_batch
from monai.networks.schedulers import Scheduler
from monai.utils import CommonKeys as Keys

from common.networks import CodebookRangeAutoencoder

__all__ = ["PREDICTION_TYPES", "LatentDiffusionPrepareBatch"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer``: the trainer then sees (latent, target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch (rather than caching
    latents) keeps the image-space flip augmentation of the paper. What the network learns to predict is the
    scheduler's ``prediction_type``, so training and sampling read it from one place: the noise (``"epsilon"``,
    the paper's), the velocity alpha_t * noise - sigma_t * latent (``"v_prediction"``, Salimans & Ho, ICLR 2022,
    as MONAI's ``VPredictionPrepareBatch``), or the clean latent (``"sample"``).

    Args:
        autoencoder: the wrapped VQ-GAN that maps images to normalised latents.
        num_train_timesteps: number of diffusion steps T (the paper: 300).
        scheduler: the training noise scheduler; None: epsilon prediction.
    """

    def __init__(
        self, autoencoder: CodebookRangeAutoencoder, num_train_timesteps: int, scheduler: Scheduler | None = None
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        prediction_type = "epsilon" if scheduler is None else getattr(scheduler, "prediction_type", None)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"the scheduler's prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if scheduler is not None and scheduler.num_train_timesteps != num_train_timesteps:
            raise ValueError(
                f"the scheduler has {scheduler.num_train_timesteps} training timesteps but num_train_timesteps is "
                f"{num_train_timesteps}."
            )
        self.autoencoder = autoencoder
        self.scheduler = scheduler
        self.prediction_type = prediction_type

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return images if self.prediction_type == "sample" else noise

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(torch.as_tensor(images))
        return super().__call__({Keys.IMAGE: latents}, device, non_blocking, **kwargs)

"""What a denoiser learns to predict, read from its noise scheduler, so that training and sampling agree.

The noise (``"epsilon"``: Ho et al., NeurIPS 2020, and both papers this project reproduces), the velocity
alpha_t * noise - sigma_t * x0 (``"v_prediction"``: Salimans & Ho, ICLR 2022, as MONAI's ``VPredictionPrepareBatch``),
or the clean input (``"sample"``).
"""

from __future__ import annotations

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler

__all__ = ["PREDICTION_TYPES", "PredictionTargetPrepareBatch"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class PredictionTargetPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` whose training target is the scheduler's ``prediction_type``.

    Args:
        num_train_timesteps: number of diffusion steps T.
        scheduler: the training noise scheduler (the one the sampler's is built like); None: epsilon prediction.
        condition_name: the batch entry passed to the inferer as ``condition``, as in MONAI's class.
    """

    def __init__(self, num_train_timesteps: int, scheduler: Scheduler | None = None, condition_name: str | None = None) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        prediction_type = "epsilon" if scheduler is None else getattr(scheduler, "prediction_type", None)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"the scheduler's prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if scheduler is not None and scheduler.num_train_timesteps != num_train_timesteps:
            raise ValueError(
                f"the scheduler has {scheduler.num_train_timesteps} training timesteps but num_train_timesteps is "
                f"{num_train_timesteps}."
            )
        self.scheduler = scheduler
        self.prediction_type = prediction_type

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return images if self.prediction_type == "sample" else noise

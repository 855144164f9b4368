"""What a denoiser learns to predict, read from its noise scheduler, so that training and sampling agree.

The noise (``"epsilon"``: Ho et al., NeurIPS 2020, and both papers this project reproduces), the velocity
alpha_t * noise - sigma_t * x0 (``"v_prediction"``: Salimans & Ho, ICLR 2022, as MONAI's ``VPredictionPrepareBatch``),
or the clean input (``"sample"``); and at which timesteps it learns (``common.engines.timestep_sampling``). With
rectified flow (``common.networks.RectifiedFlowScheduler``) the velocity is x0 - noise and the timesteps are 1 to T.
"""

from __future__ import annotations

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler

from common.engines.timestep_sampling import (
    RECTIFIED_FLOW_SAMPLINGS, TIMESTEP_SAMPLINGS, logit_normal_probabilities, timestep_probabilities,
)
from common.networks import RectifiedFlowScheduler

__all__ = ["PREDICTION_TYPES", "PredictionTargetPrepareBatch"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class PredictionTargetPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` whose training target is the scheduler's ``prediction_type``.

    Args:
        num_train_timesteps: number of diffusion steps T.
        scheduler: the training noise scheduler (the one the sampler's is built like); None: epsilon prediction.
        condition_name: the batch entry passed to the inferer as ``condition``, as in MONAI's class.
        timestep_sampling: ``"uniform"`` (the papers); ``"min_snr"``: timesteps drawn in proportion to their
            min-SNR-gamma weight at the batch's own variance; ``"variance_shifted"``: half of them moved to where the
            batch's real SNR is the schedule's (``common.engines.timestep_sampling``); ``"logit_normal"``: the noise share
            from a logit-normal density, for rectified flow only (which takes uniform or it). All but uniform need
            ``scheduler``.
        snr_gamma: gamma of ``"min_snr"`` (Hang et al.: 5).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        scheduler: Scheduler | None = None,
        condition_name: str | None = None,
        timestep_sampling: str = "uniform",
        snr_gamma: float = 5.0,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {timestep_sampling!r}.")
        if timestep_sampling != "uniform" and scheduler is None:
            raise ValueError(f"timestep_sampling {timestep_sampling!r} needs the scheduler (its noise levels).")
        if isinstance(snr_gamma, bool) or not float(snr_gamma) > 0:
            raise ValueError(f"snr_gamma must be a positive number, got {snr_gamma!r}.")
        prediction_type = "epsilon" if scheduler is None else getattr(scheduler, "prediction_type", None)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"the scheduler's prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if scheduler is not None and scheduler.num_train_timesteps != num_train_timesteps:
            raise ValueError(
                f"the scheduler has {scheduler.num_train_timesteps} training timesteps but num_train_timesteps is "
                f"{num_train_timesteps}."
            )
        self.rectified_flow = isinstance(scheduler, RectifiedFlowScheduler)
        if self.rectified_flow and timestep_sampling not in RECTIFIED_FLOW_SAMPLINGS:
            raise ValueError(f"timestep_sampling {timestep_sampling!r} reads a DDPM schedule's noise levels; with "
                             f"noise_schedule 'rectified_flow' choose one of {RECTIFIED_FLOW_SAMPLINGS}.")
        if timestep_sampling == "logit_normal" and not self.rectified_flow:
            raise ValueError("timestep_sampling 'logit_normal' is for noise_schedule 'rectified_flow'.")
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.timestep_sampling, self.snr_gamma = timestep_sampling, float(snr_gamma)
        # fixed by T alone, so drawn from once per batch rather than computed again
        self.logit_normal = (logit_normal_probabilities(num_train_timesteps).float()
                             if timestep_sampling == "logit_normal" else None)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        if self.rectified_flow and self.timestep_sampling == "uniform":
            return self.scheduler.sample_timesteps(images)
        if self.rectified_flow:  # logit-normal over 1 to T
            return torch.multinomial(self.logit_normal, images.shape[0], replacement=True).to(images.device) + 1
        if self.timestep_sampling == "uniform":
            return super().get_timesteps(images)
        variance = float(images.detach().float().var())
        probabilities = timestep_probabilities(
            self.timestep_sampling, self.scheduler.alphas_cumprod, variance, self.prediction_type, self.snr_gamma
        )
        return torch.multinomial(probabilities.float(), images.shape[0], replacement=True).to(images.device)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return images if self.prediction_type == "sample" else noise

"""Diffusion training conditioned on a mask concatenated to the noisy image at every step.

Med-DDPM (Dorjsembe et al., Sec. II, Algorithm 1): the one-hot label mask joins the noisy image as extra input
channels of the denoiser at every timestep.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers import Scheduler

from common.engines.prediction_target import PredictionTargetPrepareBatch

__all__ = ["ConcatConditionPrepareBatch"]


class ConcatConditionPrepareBatch(PredictionTargetPrepareBatch):
    """``DiffusionPrepareBatch`` for ``DiffusionInferer`` in "concat" mode: the batch's ``condition_name`` entry
    (the one-hot mask, background dropped) is concatenated to the noisy image as extra input channels.

    MONAI's class passes the condition but not the mode, and the inferer's default mode would treat it as a
    cross-attention context. The target is the scheduler's ``prediction_type`` (the paper's: the noise).

    Args:
        num_train_timesteps: number of diffusion steps T (the paper: 250).
        condition_name: the batch entry holding the mask.
        scheduler: the training noise scheduler; None: epsilon prediction.
    """

    def __init__(self, num_train_timesteps: int, condition_name: str = "label", scheduler: Scheduler | None = None) -> None:
        super().__init__(num_train_timesteps, scheduler=scheduler, condition_name=condition_name)

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        if self.condition_name not in batchdata:
            raise KeyError(f"the batch has no '{self.condition_name}' to condition on (keys: {sorted(batchdata)}).")
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        infer_kwargs["mode"] = "concat"
        return images, target, args, infer_kwargs

"""Sampling a self-conditioned denoiser: each step is given the clean-latent estimate of the step before.

Self-conditioning (Chen, Zhang and Hinton, "Analog Bits", ICLR 2023; a part of continuous diffusion for categorical
data, Dieleman et al., 2022): the denoiser takes, beside the noisy latent, an estimate of the clean latent x0
(``DepthAttentionUNet``'s ``self_conditioning``). It is trained to use its own estimate of the same input, made
without one, half of the time (``common.engines.SampledVoxelsInferer``), and sampled with the estimate of the
previous step, so that it refines what it drew rather than deciding every voxel anew at each step. Not in Medical
Diffusion. The estimate is read from whatever the scheduler is given (after code expectation, autoguidance and
particle guidance), clipped as the scheduler clips it.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.networks import clean_estimate

__all__ = ["SelfConditionedDenoiser"]


class SelfConditionedDenoiser(nn.Module):
    """A denoiser called like the network it wraps (``net(x, timesteps, context=None)``), which hands the network
    ``self_condition``: the clean-latent estimate of its previous call in the same sampling run, zeros at the first.

    Args:
        network: the denoiser as sampled (code expectation, autoguidance and particle guidance applied), passing
            ``self_condition`` on to a ``DepthAttentionUNet`` built with ``self_conditioning``.
        scheduler: the sampling scheduler, for its prediction type, noise schedule and clipping.
    """

    def __init__(self, network: nn.Module, scheduler: Scheduler) -> None:
        super().__init__()
        self.network = network
        self.scheduler = scheduler
        self.previous: torch.Tensor | None = None

    @property
    def class_embedding(self) -> nn.Module | None:
        """The network's label embedding (None for an unconditional one), as ``LatentSampler`` checks it."""
        return getattr(self.network, "class_embedding", None)

    def reset(self) -> None:
        """Forget the last estimate: the next call starts a new sampling run."""
        self.previous = None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        estimate = self.previous if self.previous is not None and self.previous.shape == x.shape else None
        prediction = self.network(x, timesteps, context, self_condition=estimate)
        # a doubled batch (MONAI's classifier-free guidance, [unconditional, conditional]) keeps each half's own
        self.previous = clean_estimate(self.scheduler, x, prediction, timesteps).detach()
        return prediction

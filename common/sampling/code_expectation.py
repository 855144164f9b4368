"""Sampling a denoiser that classifies each latent voxel's codebook entry instead of regressing its value.

Continuous diffusion for categorical data (CDCD: Dieleman et al., "Continuous diffusion for categorical data",
2022) applied to the VQ-GAN's codes; not in Medical Diffusion. The latent the decoder reads is discrete (every voxel
is snapped to its nearest code), so with ``code_classification`` the denoiser gives one logit per code at every
voxel, trained with the cross entropy against the code of the clean latent there
(``common.engines.LatentDiffusionPrepareBatch``). A sampler needs an estimate of the clean latent: the
softmax-weighted mean of the codes, which for a calibrated classifier is the posterior mean (the least-squares x0)
and which the scheduler takes as ``prediction_type "sample"``. A temperature below 1 leans the estimate towards the
most likely code; 0 takes that code (``benchmarks/code_prediction.md``). A classifier trained with
``code_likelihood`` gives logits to be added to every code's log-likelihood at the noisy voxel
(``common.networks.code_log_likelihood``); it is sampled with the scheduler that says the noise at each step.
"""

from __future__ import annotations

import math
import numbers

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.networks import code_log_likelihood, expected_codes, noising_line

__all__ = ["CodeExpectation", "checked_code_temperature", "expected_codes"]  # expected_codes: common.networks'


def checked_code_temperature(temperature: object) -> float:
    """A softmax temperature as a float: a finite number >= 0 (``ValueError`` naming it otherwise)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(float(temperature)) \
            or temperature < 0:
        raise ValueError(
            f"code_temperature must be a number >= 0 (1: the posterior mean of the codes, below 1: closer to the most "
            f"likely code, 0: that code), got {temperature!r}."
        )
    return float(temperature)


class CodeExpectation(nn.Module):
    """A code-classifying denoiser called like a regressing one: ``net(x, timesteps, context)`` returns the
    softmax-weighted mean of ``codes``, an x0 estimate (B, C, spatial...), from the classifier's logits
    (B, K, spatial...).

    Args:
        classifier: the denoiser; its output has one channel per code.
        codes: the codes (K, C) in the diffusion model's latent space (``CodebookRangeAutoencoder.codes``).
        temperature: of the softmax (of the logits with the likelihood, if added): 1 the posterior mean, below 1
            sharper, 0 the most likely code.
        likelihood: for a classifier trained with ``code_likelihood``, the sampling scheduler (its noise at each
            timestep): every code's log-likelihood at the noisy voxel is added to the logits. None: the logits alone.
    """

    def __init__(
        self, classifier: nn.Module, codes: torch.Tensor, temperature: float = 1.0, likelihood: Scheduler | None = None
    ) -> None:
        super().__init__()
        if codes.ndim != 2:
            raise ValueError(f"codes must be (K, C), got shape {tuple(codes.shape)}.")
        self.classifier = classifier
        self.register_buffer("codes", codes.detach().clone())
        self.temperature = checked_code_temperature(temperature)
        if likelihood is not None and not isinstance(likelihood, Scheduler):
            raise TypeError(f"likelihood must be the sampling scheduler or None, got {type(likelihood).__name__}.")
        self.likelihood = likelihood

    @property
    def class_embedding(self) -> nn.Module | None:
        """The classifier's label embedding (None for an unconditional one), as ``LatentSampler`` checks it."""
        return getattr(self.classifier, "class_embedding", None)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs: torch.Tensor
    ) -> torch.Tensor:
        """The expected code; ``kwargs`` (a self-conditioned classifier's ``self_condition``) reach the classifier."""
        logits = self.classifier(x, timesteps, context, **kwargs)
        if logits.shape[1] != self.codes.shape[0] or logits.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the denoiser gives {tuple(logits.shape[1:])} for a latent of {tuple(x.shape[1:])}, not one logit per "
                f"code ({self.codes.shape[0]} codes) at every voxel: was it trained with code_classification?"
            )
        if self.likelihood is not None:
            signal, noise = noising_line(self.likelihood, torch.as_tensor(timesteps, device=x.device).expand(x.shape[0]))
        estimate = torch.empty_like(x)
        for index in range(x.shape[0]):  # one volume at a time: K weights a voxel
            volume = logits[index]
            if self.likelihood is not None:
                volume = volume + code_log_likelihood(x[index:index + 1], self.codes, signal[index:index + 1],
                                                      noise[index:index + 1])[0]
            estimate[index] = expected_codes(volume, self.codes, self.temperature)
        return estimate

"""Autoguidance: the denoiser guided by an earlier, worse checkpoint of itself.

Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself" (NeurIPS 2024): at every sampling step the
prediction is ``guide + w * (network - guide)``, where the guide is a less-trained version of the same model. What
the network learned beyond the guide (finer anatomy, sharper edges) is amplified by ``w``; what both got wrong is
not. Not in Medical Diffusion: the latent bundles' samples are blurrier than real, and this recovers detail from
the model as trained (``benchmarks/autoguidance.md``), at twice the denoiser's cost per sampling step.

The guide is a checkpoint of the same network definition and model settings, trained on the same latents (its
latent scale must equal the network's): the diffusion training writes one at ``guide_iteration``
(``train_diffusion.json``, ``guide.pt``). Any prediction type works, because the combination is linear in the
network's output and the scheduler's x0 estimate is linear in it too. A code classifier (``code_classification``) is
guided on its estimate of the clean latent, the expected code (``CodeExpectation``), as Karras et al. guide the
denoised estimate: ``LatentSampler`` applies the expectation to the network and its guide (``applied_to``) before
they are combined. Combining their logits instead, before the softmax, raised codes that both networks found
unlikely and drew bright blobs around the 64^3 brains (``benchmarks/convergence_64_codes_autoguidance.md``).

``interval`` limits the guidance to a band of noise levels (Kynkäänniemi et al., "Applying Guidance in a Limited
Interval Improves Sample and Distribution Quality in Diffusion Models", NeurIPS 2024): at the steps outside it the
network is evaluated alone, and the guide not at all. Their finding, for classifier-free guidance on images:
guidance at the highest noise levels pulls samples towards few layouts, and at the lowest does little.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common.checkpoints import ModelSettings, load_weights, read_checkpoint
from common.networks import LatentScale

__all__ = ["AutoGuidedDenoiser", "autoguided", "checked_autoguidance_interval", "checked_autoguidance_scale"]

logger = logging.getLogger(__name__)


def checked_autoguidance_scale(scale: object) -> float:
    """An autoguidance scale as a float: a finite number >= 1 (``ValueError`` naming it otherwise)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)) or scale < 1:
        raise ValueError(
            f"autoguidance_scale must be a number >= 1 (1: the network alone, larger: further from its guide), got {scale!r}."
        )
    return float(scale)


def checked_autoguidance_interval(interval: object) -> tuple[float, float] | None:
    """An autoguidance interval as ``(low, high)`` noise shares with 0 <= low < high <= 1, or None (every step);
    ``ValueError`` naming it otherwise."""
    if interval is None:
        return None
    numbers_given = (
        isinstance(interval, (list, tuple)) and len(interval) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)) for v in interval)
    )
    if not numbers_given or not 0 <= interval[0] < interval[1] <= 1:
        raise ValueError(
            "autoguidance_interval must be null (guidance at every step) or [low, high], the noise shares t / "
            f"num_train_timesteps between which the guide is applied, 0 <= low < high <= 1; got {interval!r}."
        )
    return float(interval[0]), float(interval[1])


class AutoGuidedDenoiser(nn.Module):
    """``guide + scale * (network - guide)``, called like the network (``net(x, timesteps, context=None)``).

    Args:
        network: the trained (EMA) denoiser.
        guide: the same network definition with the weights of an earlier checkpoint.
        scale: the guidance scale w >= 1; 1 evaluates the network alone.
        guide_source: where the guide's weights came from, for the record of the samples (``samples.json``).
        interval: ``(low, high)``: guide only the steps whose timestep t has ``low <= t / num_train_timesteps <=
            high``; None guides every step.
        num_train_timesteps: the noise schedule's T, needed with ``interval``.
    """

    def __init__(
        self,
        network: nn.Module,
        guide: nn.Module,
        scale: float,
        guide_source: str | None = None,
        interval: tuple[float, float] | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        super().__init__()
        if guide is network:
            raise ValueError("the guide must be another network than the one it guides.")
        self.network = network
        self.guide = guide
        self.scale = checked_autoguidance_scale(scale)
        self.guide_source = guide_source
        self.interval = checked_autoguidance_interval(interval)
        if self.interval is not None and (isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int)
                                          or num_train_timesteps < 1):
            raise ValueError(f"an autoguidance interval needs num_train_timesteps, a positive integer; got {num_train_timesteps!r}.")
        self.num_train_timesteps = num_train_timesteps

    @property
    def class_embedding(self) -> nn.Module | None:
        """The network's label embedding (None for an unconditional one), as ``LatentSampler`` checks it."""
        return getattr(self.network, "class_embedding", None)

    def in_interval(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """Whether each of ``timesteps`` lies in the interval (every one without an interval), as a bool tensor."""
        timesteps = torch.as_tensor(timesteps)
        if self.interval is None:
            return torch.ones(timesteps.shape, dtype=torch.bool, device=timesteps.device)
        share = timesteps.float() / self.num_train_timesteps
        return (share >= self.interval[0]) & (share <= self.interval[1])

    def applied_to(self, wrap: Callable[[nn.Module], nn.Module]) -> AutoGuidedDenoiser:
        """The same guidance of ``wrap(network)`` by ``wrap(guide)``: for a code classifier, its expected code's
        (``CodeExpectation``) in place of its logits."""
        return AutoGuidedDenoiser(wrap(self.network), wrap(self.guide), self.scale, self.guide_source, self.interval,
                                  self.num_train_timesteps)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs: torch.Tensor
    ) -> torch.Tensor:
        """The guided prediction; ``kwargs`` (a self-conditioned denoiser's ``self_condition``) reach both networks."""
        prediction = self.network(x, timesteps, context, **kwargs)
        if self.scale == 1.0:
            return prediction
        if self.interval is None:
            return torch.lerp(self.guide(x, timesteps, context, **kwargs), prediction, self.scale)
        inside = self.in_interval(torch.as_tensor(timesteps, device=x.device).expand(x.shape[0]))
        if not bool(inside.any()):
            return prediction
        guided = torch.lerp(self.guide(x, timesteps, context, **kwargs), prediction, self.scale)
        return torch.where(inside.view(-1, *([1] * (prediction.dim() - 1))), guided, prediction)


def autoguided(
    network: nn.Module,
    guide_path: str | os.PathLike | None,
    scale: float,
    settings: ModelSettings,
    latent_scale: LatentScale,
    diffusion_path: str | os.PathLike,
    interval: tuple[float, float] | None = None,
    num_train_timesteps: int | None = None,
) -> nn.Module:
    """The network to sample with: ``network`` itself without a guide, else an ``AutoGuidedDenoiser`` (guiding the
    steps of ``interval`` only, when given: noise shares of the schedule's ``num_train_timesteps``).

    The guide is a copy of ``network`` filled with ``guide_path``'s ``ema_network`` weights; the checkpoint must
    have been written with the same ``settings`` and latent scale as ``diffusion_path`` (``ValueError`` naming
    both otherwise), must be another file and, where both record their training iteration (packages keep none),
    an earlier one.
    """
    scale = checked_autoguidance_scale(scale)
    interval = checked_autoguidance_interval(interval)
    if interval is not None and (guide_path is None or scale == 1.0):
        logger.warning("autoguidance_interval %s is set but nothing is guided (guide_path %s, autoguidance_scale %s).",
                       list(interval), guide_path, scale)
    if guide_path is None:
        if scale != 1.0:
            raise ValueError(
                f"autoguidance_scale is {scale} but no guide_path is set: give the guide checkpoint (the diffusion "
                "training writes models/guide.pt when guide_iteration is set), or autoguidance_scale 1."
            )
        return network
    guide_path = Path(guide_path)
    if not guide_path.is_file():
        raise FileNotFoundError(
            f"guide_path {guide_path} is not a file: train the denoiser with guide_iteration set (it writes guide.pt "
            "beside diffusion.pt), or point guide_path at an earlier checkpoint of the same training."
        )
    if guide_path.resolve() == Path(diffusion_path).resolve():
        raise ValueError(f"guide_path is the denoiser's own checkpoint {diffusion_path}: the guide must be an earlier one.")
    if scale == 1.0:
        logger.warning("guide_path %s is set but autoguidance_scale is 1: sampling with the network alone.", guide_path)
        return network
    trained = [read_checkpoint(path).get("trainer", {}).get("iteration") for path in (guide_path, diffusion_path)]
    if None not in trained and trained[0] >= trained[1]:
        raise ValueError(
            f"the guide {guide_path} was written at iteration {trained[0]}, the denoiser {diffusion_path} at "
            f"{trained[1]}: the guide must be an earlier checkpoint of the training (guide_iteration below its end)."
        )
    guide_scale = LatentScale.from_checkpoint(guide_path, latent_scale.scaling)
    if not torch.allclose(guide_scale.factor(), latent_scale.factor()):
        raise ValueError(
            f"the guide {guide_path} was trained on latents scaled by {float(guide_scale.factor()):.6g}, the denoiser "
            f"{diffusion_path} on latents scaled by {float(latent_scale.factor()):.6g}: the guide must come from a "
            "training on the same autoencoder and data."
        )
    guide = load_weights(copy.deepcopy(network), guide_path, "ema_network", settings).eval()
    return AutoGuidedDenoiser(network, guide, scale, str(guide_path), interval, num_train_timesteps)

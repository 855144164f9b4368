"""The denoiser's estimate of the clean latent x0, from what it predicts, for every schedule the bundles train.

Every prediction type is a line in the noisy input x and the prediction p: x0 = a * x + b * p, with a and b fixed by
the timestep. For the DDPM/DDIM schedules (Ho et al., 2020; Salimans and Ho, ICLR 2022, for v), with alpha_bar the
signal's share of the variance: epsilon gives (x - sqrt(1 - alpha_bar) p) / sqrt(alpha_bar), v gives
sqrt(alpha_bar) x - sqrt(1 - alpha_bar) p, and sample is p itself. For rectified flow
(``common.networks.RectifiedFlowScheduler``, x = (1 - u) x0 + u noise with u = t / T, v = x0 - noise) v gives
x + u p. Samplers that act on the estimate (particle guidance) and denoisers fed their own last estimate
(self-conditioning) read it here, in training with one timestep per volume and in sampling with one per step.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler

from .rectified_flow import RectifiedFlowScheduler

__all__ = ["clean_estimate", "clean_estimate_line", "noising_line"]


def _signal_and_noise(scheduler: Scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``noising_line`` in float64, which ``clean_estimate_line`` divides by."""
    timesteps = torch.as_tensor(timesteps)
    if isinstance(scheduler, RectifiedFlowScheduler):
        u = timesteps.double() / scheduler.num_train_timesteps
        return 1 - u, u
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device).double()[timesteps.long()]
    return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()


def noising_line(scheduler: Scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signal, noise)`` at ``timesteps`` (float32 tensors of their shape): the noisy input is
    ``signal * x0 + noise * epsilon``. DDPM/DDIM: sqrt(alpha_bar) and sqrt(1 - alpha_bar); rectified flow: 1 - u and u."""
    signal, noise = _signal_and_noise(scheduler, timesteps)
    return signal.float(), noise.float()


def clean_estimate_line(scheduler: Scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, share)`` at ``timesteps`` (any shape, float32 tensors of that shape): the clean estimate is
    ``a * x + b * prediction`` for the ``scheduler``'s prediction type, and ``share`` is the noise's share of the
    variance there (1 - alpha_bar; for rectified flow the same ratio on its straight line)."""
    kind = scheduler.prediction_type
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"the clean estimate reads prediction_type epsilon, v_prediction or sample, not {kind!r}.")
    signal, noise = _signal_and_noise(scheduler, timesteps)
    share = noise * noise / (signal * signal + noise * noise)
    if kind == "sample":
        a, b = torch.zeros_like(signal), torch.ones_like(signal)
    elif isinstance(scheduler, RectifiedFlowScheduler):  # its velocity x0 - noise: x0 = x + u v
        a, b = torch.ones_like(signal), noise
    elif kind == "epsilon":
        a, b = 1.0 / signal, -noise / signal
    else:
        a, b = signal, -noise
    return a.float(), b.float(), share.float()


def clean_estimate(
    scheduler: Scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor, clip: bool = True
) -> torch.Tensor:
    """x0 estimated from a batch ``noisy`` (B, C, spatial...) and the denoiser's ``prediction`` of the same shape, at
    ``timesteps`` (one for the batch, or one per volume); with ``clip``, clipped to ``clip_sample_values`` as the
    scheduler's step clips it when it does (a sampling scheduler: ``LatentSampler`` sets the range)."""
    timesteps = torch.as_tensor(timesteps, device=noisy.device).flatten()
    if timesteps.numel() not in (1, noisy.shape[0]):
        raise ValueError(f"timesteps must hold one value or one per volume ({noisy.shape[0]}), got {timesteps.numel()}.")
    a, b, _ = clean_estimate_line(scheduler, timesteps)
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    estimate = a.view(shape).to(noisy.dtype) * noisy + b.view(shape).to(noisy.dtype) * prediction
    if clip and getattr(scheduler, "clip_sample", False):
        estimate = estimate.clamp(*scheduler.clip_sample_values)
    return estimate

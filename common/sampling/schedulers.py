"""The noise scheduler of a diffusion model, for training and for sampling, latent (Khader et al., Sec. 2.3) or
mask-conditioned (Dorjsembe et al., Sec. II): the papers' ancestral DDPM over all steps, or DDIM (Song et al., ICLR
2021) in fewer, deterministic (eta 0) or with fresh noise at every step (eta above 0); or, for the latent bundles'
``noise_schedule "rectified_flow"`` (not in the papers), Euler steps along straight lines
(``common.networks.RectifiedFlowScheduler``)."""

from __future__ import annotations

import math
import numbers

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from common.networks import RECTIFIED_FLOW, RectifiedFlowScheduler

__all__ = ["StochasticDDIMScheduler", "make_noise_scheduler", "make_sampling_scheduler"]


class StochasticDDIMScheduler(DDIMScheduler):
    """MONAI's ``DDIMScheduler`` with two changes to ``step``.

    - Its ``eta`` (Song et al., Eq. 16) comes from the constructor, because MONAI's inferers call
      ``step(model_output, t, sample)`` without one: 0 is deterministic DDIM, 1 adds as much fresh noise at every step
      as DDPM's posterior does. The noise comes from the default generator of the sample's device, which the samplers
      seed per sample (``common.sampling.loop.seeded_random_state``).
    - A step moves the sample to the next of ``timesteps``, the one the network is told at the next call. MONAI's
      step moves it to ``t - T // N`` while its timesteps are rounded from an even ``linspace`` over [0, T - 1], so
      the two drift apart: with T 300 and 10 steps the last call is told t 0 for a sample still at t 3 (about 6 times
      the noise variance it is told), and with 3 steps about 480 times. The DDIM update itself (Song et al., Eq. 12)
      is MONAI's, with its prediction types and x0 clipping.
    """

    def __init__(self, eta: float = 0.0, **settings) -> None:
        super().__init__(**settings)
        self.eta = float(eta)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep a step from ``timestep`` moves the sample to: the next of ``timesteps`` below it, or -1 (the
        clean latent, ``final_alpha_cumprod``) from the last."""
        below = self.timesteps[self.timesteps < int(timestep)]
        return int(below.max()) if below.numel() else -1

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sample at the next timestep, clipped x0 estimate)``, as MONAI's ``DDIMScheduler.step`` returns them."""
        eta = self.eta if eta is None else eta
        timestep = int(timestep)
        previous = self.previous_timestep(timestep)
        alpha_bar = self.alphas_cumprod[timestep]
        alpha_bar_previous = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha_cumprod
        if self.prediction_type == "epsilon":
            estimate, epsilon = (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt(), model_output
        elif self.prediction_type == "sample":
            estimate, epsilon = model_output, (sample - alpha_bar.sqrt() * model_output) / (1 - alpha_bar).sqrt()
        else:  # v_prediction
            estimate = alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
            epsilon = alpha_bar.sqrt() * model_output + (1 - alpha_bar).sqrt() * sample
        if self.clip_sample:
            estimate = estimate.clamp(*self.clip_sample_values)
        std = eta * self._get_variance(timestep, previous).sqrt()
        following = alpha_bar_previous.sqrt() * estimate + (1 - alpha_bar_previous - std**2).sqrt() * epsilon
        if eta > 0:
            noise = torch.randn(model_output.shape, dtype=model_output.dtype, generator=generator, device=model_output.device)
            following = following + std * noise
        return following, estimate


def make_sampling_scheduler(
    num_train_timesteps: int = 300,
    num_inference_steps: int | None = None,
    schedule: str = "cosine",
    prediction_type: str = "epsilon",
    eta: float = 0.0,
) -> Scheduler:
    """The paper's ancestral DDPM over all ``num_train_timesteps`` steps, or DDIM when fewer steps are asked for;
    with ``schedule`` ``"rectified_flow"``, that many Euler steps (deterministic: an ``eta`` above 0 is refused).

    ``schedule`` and ``prediction_type`` must be what the model was trained with (the bundles read both from one
    config id each). The predicted x0 is clipped, to [-1, 1] as the paper does unless ``LatentSampler`` sets
    another range (``clip_sample_range``). ``eta`` (DDIM only, 0 to 1): the share of DDPM's noise added back at
    every DDIM step; DDPM over all steps adds its own, so an ``eta`` above 0 there is refused rather than ignored.
    """
    steps = num_train_timesteps if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}.")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (math.isfinite(eta) and 0 <= eta <= 1):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}.")
    if eta > 0 and schedule == RECTIFIED_FLOW:
        raise ValueError(f"eta {eta} adds noise along the way; rectified flow samples deterministically (eta 0).")
    if eta > 0 and steps == num_train_timesteps:
        raise ValueError(f"eta {eta} is for DDIM (num_inference_steps below {num_train_timesteps}); DDPM over all "
                         f"{num_train_timesteps} steps already adds noise at every step.")
    if schedule == RECTIFIED_FLOW or steps == num_train_timesteps:
        scheduler: Scheduler = make_noise_scheduler(num_train_timesteps, schedule, prediction_type)
    else:
        scheduler = StochasticDDIMScheduler(eta=eta, num_train_timesteps=num_train_timesteps, schedule=schedule,
                                            prediction_type=prediction_type, clip_sample=True)
    scheduler.set_timesteps(steps)
    return scheduler


def make_noise_scheduler(
    num_train_timesteps: int = 300, schedule: str = "cosine", prediction_type: str = "epsilon", clip_sample: bool = True,
) -> Scheduler:
    """The training scheduler (what noises a batch and defines the target; the paper's DDPM, Khader et al.: cosine,
    epsilon, 300 steps), which is also the sampling scheduler over all steps. ``schedule`` is one of MONAI's DDPM
    schedules or ``"rectified_flow"`` (``RectifiedFlowScheduler``: ``prediction_type`` "v_prediction" or "sample")."""
    if schedule == RECTIFIED_FLOW:
        return RectifiedFlowScheduler(num_train_timesteps, prediction_type, clip_sample)
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule, prediction_type=prediction_type,
                         clip_sample=clip_sample)

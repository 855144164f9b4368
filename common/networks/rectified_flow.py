"""Rectified flow (Liu et al., "Flow Straight and Fast", ICLR 2023; Esser et al., "Scaling Rectified Flow
Transformers", ICML 2024) as a noise schedule of the latent bundles: not in Medical Diffusion, which uses DDPM.

The noisy input is the straight line ``x_t = (1 - t / T) * x0 + (t / T) * noise`` between the clean latent and the
noise, and the denoiser learns the velocity along it, ``x0 - noise`` (MONAI's ``RFlowScheduler``, which MAISI samples
in about 30 steps). Sampling follows the line from the noise by Euler steps. MONAI's scheduler predicts the velocity
only and never clips; this one also takes a denoiser that estimates the clean latent (``prediction_type "sample"``,
which a code-classifying denoiser needs: ``common.sampling.CodeExpectation``) and clips that estimate as the bundles'
DDPM and DDIM do (``clip_sample_values``, set by ``LatentSampler`` from ``clip_sample_range``). The step is the
same Euler step when nothing is clipped.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import RFlowScheduler

__all__ = ["RECTIFIED_FLOW", "RectifiedFlowScheduler"]

RECTIFIED_FLOW = "rectified_flow"  # the noise_schedule id that selects it

_PREDICTION_TYPES = ("v_prediction", "sample")


class RectifiedFlowScheduler(RFlowScheduler):
    """MONAI's ``RFlowScheduler`` with integer timesteps 1 to ``num_train_timesteps`` (T: pure noise), the velocity
    or the clean sample as the denoiser's target, and the clean-sample estimate clipped at every step.

    Args:
        num_train_timesteps: T; a timestep t is the noise share t / T.
        prediction_type: ``"v_prediction"``: the velocity x0 - noise (MONAI's sign: the direction from the noise to
            the data); ``"sample"``: the clean latent. Epsilon prediction is not offered: near t = T the clean
            latent it implies divides by a vanishing 1 - t / T.
        clip_sample: clip the clean-sample estimate to ``clip_sample_values`` at every sampling step.
        clip_sample_min, clip_sample_max: the clipping range (the bundles' sampler sets it from ``clip_sample_range``).
    """

    def __init__(
        self,
        num_train_timesteps: int = 300,
        prediction_type: str = "v_prediction",
        clip_sample: bool = True,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
    ) -> None:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}.")
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"rectified flow learns the velocity ('v_prediction') or the clean latent ('sample'), not "
                f"{prediction_type!r}."
            )
        torch.nn.Module.__init__(self)  # MONAI's RFlowScheduler skips it: without it the module cannot even be printed
        super().__init__(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=True, sample_method="uniform")
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.clip_sample_values = [float(clip_sample_min), float(clip_sample_max)]

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The velocity target of ``sample`` noised with ``noise`` (the same at every timestep on a straight line)."""
        return sample - noise

    def sample_timesteps(self, x_start: torch.Tensor) -> torch.Tensor:
        """Training timesteps drawn uniformly from 1 to T: the noise shares the sampler visits (t = 0, the clean
        latent itself, has no velocity to learn)."""
        return torch.randint(1, self.num_train_timesteps + 1, (x_start.shape[0],), device=x_start.device).long()

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
        next_timestep: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from ``timestep`` to ``next_timestep`` (by default one inference step on, at least 0);
        returns the next sample and the (clipped) clean-sample estimate."""
        if not hasattr(self, "num_inference_steps"):
            raise RuntimeError("set_timesteps(num_inference_steps) must be called before step().")
        share = float(timestep) / self.num_train_timesteps
        if next_timestep is None:
            next_share = max(share - 1.0 / self.num_inference_steps, 0.0)
        else:
            next_share = float(next_timestep) / self.num_train_timesteps
        clean = sample + share * model_output if self.prediction_type == "v_prediction" else model_output
        if self.clip_sample:
            clean = clean.clamp(*self.clip_sample_values)
        if share == 0:
            return clean, clean
        noise = (sample - (1.0 - share) * clean) / share  # the noise the estimate implies, on the same line
        return (1.0 - next_share) * clean + next_share * noise, clean

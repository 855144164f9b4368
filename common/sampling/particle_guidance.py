"""Particle guidance: the samples of one batch pushed apart while they are drawn.

After Corso et al., "Particle Guidance: non-I.I.D. Diverse Sampling with Diffusion Models" (ICLR 2024): samples drawn
together are made to repel each other through a kernel of their distances, so that a finite set covers more of the
distribution than independent draws do. Not in Medical Diffusion: the 64^3 brain denoisers that reach anatomy within
an hour on a CPU draw brains more alike than real ones (``benchmarks/convergence_64_codes_diversity.md``).

A simplified form, not the paper's gradient of a joint density: the repulsion acts on the denoiser's estimates of
the clean latent x0 at every step (clipped as the scheduler clips them), with a Gaussian kernel ``k_ij =
exp(-|x0_i - x0_j|^2 / h)`` whose bandwidth h is the median squared distance between the batch's estimates; each
estimate moves away from the kernel-weighted mean of the others, ``x0_i += scale * s(t) * (x0_i - sum_j k_ij x0_j /
sum_j k_ij)``, where s(t) is the noise's share of the variance (1 - alpha_bar_t; for rectified flow the same share
on its straight line). So the push acts at high noise and vanishes as the sample becomes clean. Compared voxel by
voxel, the estimates of the 64^3 brains differ most in their texture, which is what the push then spreads
(``benchmarks/convergence_64_particles.md``); with ``pool`` they are compared and pushed as averages over cubes of
latent voxels, their layout. The network is not differentiated: the moved estimate is carried into the prediction
type the scheduler reads (epsilon, v or the sample itself), at the cost of a few tensor operations a step. A sample
then depends on the others of its batch, not on its seed alone.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from monai.networks.schedulers import Scheduler
from torch import nn

from common.networks import clean_estimate_line

__all__ = ["ParticleGuidedDenoiser", "checked_particle_guidance_pool", "checked_particle_guidance_scale", "repulsion"]


def checked_particle_guidance_scale(scale: object) -> float:
    """A particle guidance scale as a float: a finite number >= 0 (``ValueError`` naming it otherwise)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)) or scale < 0:
        raise ValueError(
            f"particle_guidance_scale must be a number >= 0 (0: independent samples, larger: the samples of a batch "
            f"pushed further apart), got {scale!r}."
        )
    return float(scale)


def checked_particle_guidance_pool(pool: object) -> int:
    """A particle guidance pooling factor as an int >= 1 (``ValueError`` naming it otherwise)."""
    if isinstance(pool, bool) or not isinstance(pool, numbers.Integral) or pool < 1:
        raise ValueError(
            f"particle_guidance_pool must be a whole number >= 1 (1: the estimates compared voxel by voxel, larger: "
            f"averaged over cubes of that many latent voxels a side first), got {pool!r}."
        )
    return int(pool)


def repulsion(estimates: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """For a batch (N, ...) of N >= 2 estimates, each one's offset from the kernel-weighted mean of the others
    (Gaussian kernel, the median squared distance as bandwidth): the direction that moves it away from its nearest
    neighbours. With ``pool`` above 1 the volumes (N, C, H, W, D) are averaged over cubes of ``pool`` voxels first
    and the offsets interpolated back: only their coarse differences, the layout, are pushed apart."""
    if pool > 1:
        coarse = F.avg_pool3d(estimates.float(), pool, ceil_mode=True, count_include_pad=False)
        return F.interpolate(repulsion(coarse), size=estimates.shape[2:], mode="trilinear").to(estimates.dtype)
    if estimates.shape[0] < 2:
        raise ValueError(f"particle guidance needs at least 2 samples in a batch, got {estimates.shape[0]}.")
    flat = estimates.flatten(1).float()
    squared = torch.cdist(flat, flat).square()
    others = ~torch.eye(flat.shape[0], dtype=torch.bool, device=flat.device)
    bandwidth = squared[others].median().clamp_min(torch.finfo(flat.dtype).tiny)
    weights = torch.exp(-squared / bandwidth) * others
    neighbours = weights @ flat / weights.sum(dim=1, keepdim=True)
    return (flat - neighbours).view_as(estimates).to(estimates.dtype)


class ParticleGuidedDenoiser(nn.Module):
    """A denoiser called like the network it wraps (``net(x, timesteps, context=None)``) whose predictions carry the
    repulsion of each batch's x0 estimates (``repulsion``), converted to the ``scheduler``'s prediction type.

    Args:
        network: the denoiser as sampled (code expectation and autoguidance applied).
        scheduler: the sampling scheduler, for its prediction type and noise schedule.
        scale: how far each estimate moves from its neighbours' mean at the noisiest step (0: not at all).
        pool: compare and push the estimates averaged over cubes of this many latent voxels a side (1: voxel by
            voxel), so that the push reaches the layout rather than the texture.
        cfg_scale: MONAI's classifier-free guidance scale when the inferer stacks each batch as [unconditional,
            conditional] and combines the two (``LatentSampler`` sets it per batch); None without.
    """

    def __init__(self, network: nn.Module, scheduler: Scheduler, scale: float, pool: int = 1,
                 cfg_scale: float | None = None) -> None:
        super().__init__()
        if scheduler.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"particle guidance reads prediction_type epsilon, v_prediction or sample, not {scheduler.prediction_type!r}."
            )
        self.network = network
        self.scheduler = scheduler
        self.scale = checked_particle_guidance_scale(scale)
        self.pool = checked_particle_guidance_pool(pool)
        self.cfg_scale = cfg_scale

    @property
    def class_embedding(self) -> nn.Module | None:
        """The network's label embedding (None for an unconditional one), as ``LatentSampler`` checks it."""
        return getattr(self.network, "class_embedding", None)

    def line(self, timestep: float) -> tuple[float, float, float]:
        """``(a, b, s)`` at ``timestep``: the clean estimate is ``a * x + b * prediction`` and s is the noise's share
        of the variance there (``common.networks.clean_estimate_line``)."""
        return tuple(float(v) for v in clean_estimate_line(self.scheduler, torch.tensor(timestep)))

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs: torch.Tensor
    ) -> torch.Tensor:
        """The repelled prediction; ``kwargs`` (a self-conditioned denoiser's ``self_condition``) reach the network."""
        prediction = self.network(x, timesteps, context, **kwargs)
        a, b, share = self.line(float(torch.as_tensor(timesteps).flatten()[0]))
        if self.scale == 0 or share == 0 or b == 0:
            return prediction
        # MONAI's classifier-free guidance stacks [unconditional, conditional] and then combines them as
        # u + w (c - u): the guided estimates are repelled, and the same move given to both halves reaches them
        guided = prediction if self.cfg_scale is None else torch.lerp(*prediction.chunk(2), self.cfg_scale)
        inputs = x if self.cfg_scale is None else x.chunk(2)[1]
        if guided.shape[0] < 2:
            return prediction
        estimates = a * inputs + b * guided
        if getattr(self.scheduler, "clip_sample", False):  # moved from where the scheduler will clip them to
            estimates = estimates.clamp(*self.scheduler.clip_sample_values)
        moved = estimates + self.scale * share * repulsion(estimates, self.pool)
        if getattr(self.scheduler, "clip_sample", False):
            moved = moved.clamp(*self.scheduler.clip_sample_values)
        if not bool(torch.isfinite(moved).all()):  # a broken sample is left to the NaN checks, not spread to its batch
            return prediction
        change = (moved - (a * inputs + b * guided)) / b
        return prediction + (change if self.cfg_scale is None else torch.cat([change, change]))

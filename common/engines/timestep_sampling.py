"""Which diffusion timesteps a training batch is noised to: uniformly (the papers), more often where the loss is
worth more (min-SNR-gamma as a sampling density), or half of them where the SNR is what the schedule was designed
for (``variance_shifted``).

Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023) weights each
timestep's loss by ``min(SNR, gamma) / SNR`` for epsilon prediction, ``min(SNR, gamma) / (SNR + 1)`` for velocity
prediction and ``min(SNR, gamma)`` for the clean sample, so that the many nearly noise-free steps (high SNR) and
the many nearly pure-noise steps (low SNR) pull less against each other. Drawing the timesteps with probability
proportional to that weight has the same expected objective (Esser et al., "Scaling Rectified Flow Transformers",
ICML 2024, Sec. 3.1, treat weighting and timestep density as one choice) without changing the loss the trainer
computes, so MONAI's ``SupervisedTrainer`` and its L1 loss stay as they are.

The SNR is the one the denoiser sees: ``variance * alpha_bar / (1 - alpha_bar)``, with ``variance`` the clean
inputs' variance, not the scheduler's ``alpha_bar / (1 - alpha_bar)``, which assumes unit variance. The
codebook-range latents of Khader et al. have a standard deviation near 0.17 (``LatentStatistics`` logs it), so
their real SNR is about 30 times below the schedule's: without this correction the weighting would act on the
wrong steps.

``variance_shifted`` (not in the papers) draws half the timesteps uniformly and half so that the SNR the denoiser sees
is distributed as the schedule's own SNR is for unit-variance inputs under uniform draws: each uniformly drawn step is
moved to the step where the inputs' real SNR equals the schedule's SNR there. Where that SNR lies beyond the
schedule's range the step goes to its end: for inputs of variance 0.03, step 0 gets 2.5% of all draws (7.5 times the
uniform share); the smaller the variance, the more. Codebook-range latents (variance near 0.03) get about three times
the uniform share of the least noisy steps, where a 64^3 brain's grey/white pattern is decided
(``benchmarks/latent_detail.md``), while the uniform half keeps the noisy steps where the outline is decided (min-SNR
moved nearly all draws to the less noisy half, and the outlines fell apart: ``benchmarks/convergence_64_gpu.md``). On
unit-variance inputs it is uniform. In the spirit of the resolution-dependent schedule shift of simple diffusion
(Hoogeboom et al., ICML 2023), applied to the timestep density instead of the schedule, so sampling is unchanged.
At 64^3 it learned the outline slower and was level with uniform draws after 600 iterations, without the grey/white
pattern (``benchmarks/convergence_64_levers.md``).

``logit_normal`` is for rectified flow (``noise_schedule "rectified_flow"``) only: the noise share t / T drawn from a
logit-normal(0, 1) density, which puts most draws at the middle of the straight line from the latent to the noise,
where the velocity is hardest to tell (Esser et al., Sec. 3.1 and 5.1: the best of their densities), discretised to
the timesteps 1 to T. Uniform draws with rectified flow are over 1 to T as well.
"""

from __future__ import annotations

import torch

__all__ = [
    "RECTIFIED_FLOW_SAMPLINGS", "TIMESTEP_SAMPLINGS", "logit_normal_probabilities", "min_snr_weights", "timestep_probabilities",
    "variance_shifted_probabilities",
]

TIMESTEP_SAMPLINGS = ("uniform", "min_snr", "variance_shifted", "logit_normal")
RECTIFIED_FLOW_SAMPLINGS = ("uniform", "logit_normal")  # the others read a DDPM schedule's noise levels


def _check_variance(variance: float) -> None:
    """``ValueError`` unless the inputs' variance is positive (a NaN is not): neither density is defined without it."""
    if not variance > 0:
        raise ValueError(f"the inputs' variance must be positive, got {variance!r}: are the training inputs constant?")


def min_snr_weights(alphas_cumprod: torch.Tensor, variance: float, prediction_type: str, gamma: float) -> torch.Tensor:
    """The min-SNR-gamma loss weight of every timestep (module docstring) for inputs of ``variance``."""
    _check_variance(variance)
    if not gamma > 0:
        raise ValueError(f"snr_gamma must be positive, got {gamma!r}.")
    alphas_cumprod = alphas_cumprod.double()
    snr = variance * alphas_cumprod / (1 - alphas_cumprod).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr.clamp_min(1e-12)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose from epsilon, v_prediction, sample.")


def variance_shifted_probabilities(alphas_cumprod: torch.Tensor, variance: float) -> torch.Tensor:
    """The ``variance_shifted`` density (module docstring) of every timestep for inputs of ``variance``."""
    _check_variance(variance)
    alphas_cumprod = alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
    log_snr = alphas_cumprod.log() - (1 - alphas_cumprod).log()  # the schedule's, falling with the timestep
    steps = len(log_snr)
    # the step whose real SNR (variance * the schedule's) is nearest to the schedule's SNR at each step
    wanted = log_snr - torch.log(torch.tensor(variance, dtype=torch.float64))
    after = torch.searchsorted(-log_snr, -wanted).clamp(1, steps - 1)
    nearer_before = (log_snr[after - 1] - wanted).abs() <= (log_snr[after] - wanted).abs()
    moved = torch.where(nearer_before, after - 1, after)
    shifted = torch.bincount(moved, minlength=steps).double() / steps
    return 0.5 * shifted + 0.5 / steps


def logit_normal_probabilities(num_train_timesteps: int) -> torch.Tensor:
    """The probability of each timestep 1 to T (index t - 1) when t / T is drawn from a logit-normal(0, 1) density:
    the density's mass over ((t - 1) / T, t / T]."""
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}.")
    edges = torch.linspace(0, 1, num_train_timesteps + 1, dtype=torch.float64)
    logits = torch.log(edges) - torch.log1p(-edges)  # -inf and +inf at the ends
    cumulative = 0.5 * (1 + torch.erf(logits / 2 ** 0.5))
    return cumulative[1:] - cumulative[:-1]


def timestep_probabilities(
    sampling: str, alphas_cumprod: torch.Tensor, variance: float, prediction_type: str, gamma: float = 5.0
) -> torch.Tensor:
    """The probability of drawing each of the ``len(alphas_cumprod)`` timesteps under ``sampling``."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"unknown timestep_sampling {sampling!r}; choose from {', '.join(TIMESTEP_SAMPLINGS)}.")
    if sampling == "uniform":
        return torch.full((len(alphas_cumprod),), 1.0 / len(alphas_cumprod), dtype=torch.float64)
    if sampling == "variance_shifted":
        return variance_shifted_probabilities(alphas_cumprod, variance)
    if sampling == "logit_normal":
        raise ValueError("timestep_sampling 'logit_normal' is for noise_schedule 'rectified_flow'; a DDPM schedule takes "
                         f"one of {', '.join(s for s in TIMESTEP_SAMPLINGS if s != 'logit_normal')}.")
    weights = min_snr_weights(alphas_cumprod, variance, prediction_type, gamma)
    return weights / weights.sum()

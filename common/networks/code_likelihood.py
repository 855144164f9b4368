"""What a noisy latent voxel alone says about its code: the exact Gaussian log-likelihood of every code.

A code-classifying denoiser (``code_classification``; continuous diffusion for categorical data, Dieleman et al.,
2022) names each latent voxel's code from the noisy latent. Its noise is independent across voxels, so the
posterior of voxel v's code factorises: p(k | x_t) is proportional to N(x_t[v]; s c_k, n^2 I) times p(k | the other
voxels), where ``s`` and ``n`` are the schedule's signal and noise at t. The first factor is known in closed form;
with ``code_likelihood`` the denoiser's logits are added to it, so the network has to learn only what the context
says. Not in Medical Diffusion.
"""

from __future__ import annotations

import torch

__all__ = ["code_log_likelihood"]


def code_log_likelihood(noisy: torch.Tensor, codes: torch.Tensor, signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log N(``noisy``[b, :, v]; ``signal``[b] * codes[k], ``noise``[b]^2 I) for every code k, up to a constant per
    voxel (which no softmax over the codes sees): ``(signal x.c_k - signal^2 |c_k|^2 / 2) / noise^2``, in float32
    whatever autocast is on (half precision loses whole units of these logits at low noise).

    Args:
        noisy: (B, C, voxels...), the noisy latent (any spatial shape: a volume, or a sample of its voxels).
        codes: (K, C), the codes in the same latent space (``CodebookRangeAutoencoder.codes``).
        signal, noise: (B,) the schedule's coefficients at each volume's timestep (``noising_line``).

    Returns:
        (B, K, voxels...) float32 logits, made in one allocation of that size.
    """
    if noisy.dim() < 3 or codes.dim() != 2 or noisy.shape[1] != codes.shape[1]:
        raise ValueError(
            f"need a noisy latent (B, C, voxels...) and codes (K, C) with the same C, got {tuple(noisy.shape)} and "
            f"{tuple(codes.shape)}."
        )
    signal, noise = signal.flatten(), noise.flatten()
    if signal.numel() != noisy.shape[0] or noise.numel() != noisy.shape[0]:
        raise ValueError(f"need one signal and noise coefficient per volume ({noisy.shape[0]}), got {signal.numel()} and {noise.numel()}.")
    with torch.autocast(noisy.device.type, enabled=False):
        codes = codes.float().to(noisy.device)
        signal, noise = signal.float().to(noisy.device), noise.float().to(noisy.device)
        precision = 1.0 / (noise * noise).clamp_min(1e-12)  # (B,)
        weights = codes[None] * (signal * precision)[:, None, None]  # (B, K, C)
        bias = -0.5 * (signal * signal * precision)[:, None, None] * (codes * codes).sum(dim=1)[None, :, None]  # (B, K, 1)
        logits = torch.baddbmm(bias, weights, noisy.float().flatten(2))
    return logits.reshape(noisy.shape[0], codes.shape[0], *noisy.shape[2:])

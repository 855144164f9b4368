"""The softmax-weighted mean of the codebook: a code-classifying denoiser's estimate of the clean latent.

Continuous diffusion for categorical data (Dieleman et al., 2022) applied to the VQ-GAN's codes; not in Medical
Diffusion. A denoiser trained with ``code_classification`` gives one logit per code at every latent voxel; the
softmax-weighted mean of the codes is, for a calibrated classifier, the posterior mean of the clean latent. The
sampler reads it (``common.sampling.CodeExpectation``) and so does a self-conditioned classifier's training
(``common.engines.SampledVoxelsInferer``).
"""

from __future__ import annotations

import torch

__all__ = ["expected_codes"]


def expected_codes(logits: torch.Tensor, codes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The softmax(``logits`` / ``temperature``)-weighted mean of ``codes`` (K, C) for channel-first logits
    (K, spatial...): (C, spatial...), in the codes' dtype; ``temperature`` 0 gives each voxel's most likely code.

    The softmax runs over the channel axis of the logits as the network gives them, and the mean is one (C, K) x
    (K, voxels) product: no transposed copy of the K logits of every voxel (``benchmarks/code_expectation_speed.md``).
    """
    if logits.shape[0] != codes.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits a voxel for {codes.shape[0]} codes: one logit per code is needed.")
    flat = logits.flatten(1)
    if temperature == 0:
        chosen = codes.T[:, flat.argmax(dim=0)]
    else:
        chosen = (codes.float().T @ (flat.float() / temperature).softmax(dim=0)).to(codes.dtype)
    return chosen.reshape(codes.shape[1], *logits.shape[1:])

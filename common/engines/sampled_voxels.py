"""A training inferer that asks the denoiser for its prediction at a sample of voxels only.

A code-classifying denoiser (``code_classification``: continuous diffusion for categorical data, Dieleman et al.,
2022; not in Medical Diffusion) gives one logit per codebook entry at every latent voxel: at the paper's 16,384
codes and 32^3 latents, 2 GiB of logits a volume and as much for their gradient. Its cross entropy taken at a random
sample of voxels each step (as Dieleman et al. and ``benchmarks/code_prediction.py`` do) needs the logits there only.
MONAI's ``DiffusionInferer`` passes the network nothing but the noisy input, the timesteps and the condition; this
one also passes the ``voxels`` that ``LatentDiffusionPrepareBatch`` drew (with ``code_voxels``), and is MONAI's own
call when none are given.
"""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer

__all__ = ["SampledVoxelsInferer"]


class SampledVoxelsInferer(DiffusionInferer):
    """``DiffusionInferer`` whose training call hands ``voxels`` (B, N) to the network (``DepthAttentionUNet``'s
    ``voxels``: its prediction at those voxels only, (B, out_channels, N)). Sampling is MONAI's."""

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        seg: torch.Tensor | None = None,
        voxels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if voxels is None:
            return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        if mode != "crossattn" or seg is not None:
            raise ValueError("voxels are passed to a network conditioned by cross-attention (mode 'crossattn', no seg) only.")
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return diffusion_model(x=noisy, timesteps=timesteps, context=condition, voxels=voxels)

"""A training inferer that hands the denoiser what the batch preparation drew beyond MONAI's inputs: a sample of
voxels to predict, and a cropped latent's coordinates.

A code-classifying denoiser (``code_classification``: continuous diffusion for categorical data, Dieleman et al.,
2022; not in Medical Diffusion) gives one logit per codebook entry at every latent voxel: at the paper's 16,384
codes and 32^3 latents, 2 GiB of logits a volume and as much for their gradient. Its cross entropy taken at a random
sample of voxels each step (as Dieleman et al. and ``benchmarks/code_prediction.py`` do) needs the logits there only.
A denoiser trained on random crops of the latents (``latent_crop_size``: Patch Diffusion, Wang et al., NeurIPS 2023;
not in Medical Diffusion) needs to know where each crop lies in the whole latent. MONAI's ``DiffusionInferer``
passes the network nothing but the noisy input, the timesteps and the condition; this one also passes the
``voxels`` and ``coordinates`` that ``LatentDiffusionPrepareBatch`` drew, and is MONAI's own call when neither is given.
"""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer

__all__ = ["SampledVoxelsInferer"]


class SampledVoxelsInferer(DiffusionInferer):
    """``DiffusionInferer`` whose training call hands ``voxels`` (B, N) and ``coordinates`` (B, 3, H, W, D) to the
    network (``DepthAttentionUNet``'s: its prediction at those voxels only, (B, out_channels, N); the input's voxel
    coordinates when it is a crop). Sampling is MONAI's."""

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
        coordinates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if voxels is None and coordinates is None:
            return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        if mode != "crossattn" or seg is not None:
            raise ValueError(
                "voxels and coordinates are passed to a network conditioned by cross-attention (mode 'crossattn', no seg) only."
            )
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        given = {"voxels": voxels} if voxels is not None else {}
        if coordinates is not None:
            given["coordinates"] = coordinates
        return diffusion_model(x=noisy, timesteps=timesteps, context=condition, **given)

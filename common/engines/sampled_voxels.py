"""The training inferer of the latent bundles' denoiser: MONAI's call, with sampled voxels, self-conditioning and
the codes' likelihood.

A code-classifying denoiser (``code_classification``: continuous diffusion for categorical data, Dieleman et al.,
2022) gives one logit per codebook entry at every latent voxel: at the paper's 16,384 codes and 32^3 latents, 2 GiB
of logits a volume and as much for their gradient. Its cross entropy taken at a random sample of voxels each step
(as Dieleman et al. and ``benchmarks/code_prediction.py`` do) needs the logits there only. MONAI's
``DiffusionInferer`` passes the network nothing but the noisy input, the timesteps and the condition; this one also
passes the ``voxels`` that ``LatentDiffusionPrepareBatch`` drew (with ``code_voxels``).

A self-conditioned denoiser (``DepthAttentionUNet``'s ``self_conditioning``; Chen et al., "Analog Bits", ICLR
2023) is trained as Chen et al. train it: for half of the batches the network first estimates the clean latent of
the same noisy input without an estimate, with no gradient, and is then trained given that estimate; for the other
half it is given none (zeros), as at the first sampling step.

A code classifier with ``code_likelihood`` gives logits that are added to the exact log-likelihood of every code at
each noisy voxel (``common.networks.code_log_likelihood``) before the loss sees them. None of the three is in Medical
Diffusion: without them, the call is MONAI's own.
"""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler

from common.networks import CodebookRangeAutoencoder, clean_estimate, code_log_likelihood, expected_codes, noising_line

__all__ = ["SampledVoxelsInferer"]


class SampledVoxelsInferer(DiffusionInferer):
    """``DiffusionInferer`` whose training call hands the network ``voxels`` (B, N) (``DepthAttentionUNet``'s
    ``voxels``: its prediction at those voxels only, (B, out_channels, N)) and, with ``self_conditioning``, its own
    estimate of the clean latent as ``self_condition`` half of the time, and, with ``code_likelihood``, returns its
    logits plus every code's log-likelihood at the noisy voxels. Sampling is MONAI's.

    Args:
        scheduler: the training noise scheduler.
        self_conditioning: the network is built with ``self_conditioning`` (the bundles' ``self_conditioning`` id).
        autoencoder: the latent wrapper whose codes (``CodebookRangeAutoencoder.codes``) turn a code classifier's
            logits into its estimate (the expected code, at temperature 1); needed with ``code_classification``.
        code_classification: the network gives one logit per code (the bundles' ``code_classification``).
        code_likelihood: the code classifier's logits are added to each code's log-likelihood at the noisy voxel
            (the bundles' ``code_likelihood``); needs ``code_classification`` and the autoencoder.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        self_conditioning: bool = False,
        autoencoder: CodebookRangeAutoencoder | None = None,
        code_classification: bool = False,
        code_likelihood: bool = False,
    ) -> None:
        super().__init__(scheduler)
        for name, value in (("self_conditioning", self_conditioning), ("code_classification", code_classification),
                            ("code_likelihood", code_likelihood)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}.")
        if code_likelihood and not code_classification:
            raise ValueError("code_likelihood adds every code's likelihood to a code classifier's logits: it needs "
                             "code_classification true.")
        if (self_conditioning or code_likelihood) and code_classification and autoencoder is None:
            raise ValueError("a self-conditioned code classifier, or one with code_likelihood, needs the autoencoder, "
                             "whose codes make its estimate and their likelihood.")
        self.self_conditioning = self_conditioning
        self.autoencoder = autoencoder
        self.code_classification = code_classification
        self.code_likelihood = code_likelihood

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
        if voxels is None and not self.self_conditioning and not self.code_likelihood:
            return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        if mode != "crossattn" or seg is not None:
            raise ValueError(
                "voxels, self-conditioning and code_likelihood are for a network conditioned by cross-attention (mode "
                "'crossattn', no seg) only."
            )
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        extra = {} if voxels is None else {"voxels": voxels}
        if self.self_conditioning and bool(torch.rand(()) < 0.5):
            extra["self_condition"] = self.own_estimate(diffusion_model, noisy, timesteps, condition)
        prediction = diffusion_model(x=noisy, timesteps=timesteps, context=condition, **extra)
        if not self.code_likelihood:
            return prediction
        chosen = noisy.flatten(2) if voxels is None else noisy.flatten(2).gather(2, voxels[:, None].expand(-1, noisy.shape[1], -1))
        return prediction + self.likelihood(chosen, timesteps).reshape(prediction.shape)

    def likelihood(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Every code's log-likelihood (B, K, voxels...) at the voxels of ``noisy`` (B, C, voxels...)."""
        signal, noise = noising_line(self.scheduler, timesteps.to(noisy.device))
        return code_log_likelihood(noisy, self.autoencoder.codes().to(noisy.device), signal, noise)

    @torch.no_grad()
    def own_estimate(
        self, diffusion_model: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None
    ) -> torch.Tensor:
        """The network's estimate of the clean latent of ``noisy`` given none, at every voxel, without a gradient:
        the expected code of a code classifier, otherwise the line its prediction type gives (not clipped)."""
        prediction = diffusion_model(x=noisy, timesteps=timesteps, context=condition)
        if self.code_classification:
            codes = self.autoencoder.codes().to(noisy.device)
            if self.code_likelihood:  # one volume at a time: the likelihood of every code at every voxel is large
                timesteps = timesteps.expand(noisy.shape[0])
                return torch.stack([
                    expected_codes(logits + self.likelihood(noisy[index:index + 1], timesteps[index:index + 1])[0], codes)
                    for index, logits in enumerate(prediction)]).to(noisy.dtype)
            return torch.stack([expected_codes(logits, codes) for logits in prediction]).to(noisy.dtype)
        return clean_estimate(self.scheduler, noisy, prediction, timesteps, clip=False)

"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": the DDPM learns the VQ-GAN's unquantized,
codebook-range normalised latents. For a class-conditional denoiser (not in the paper) the batch's labels go with
them, dropped at a rate so that the same network also learns the unconditional model that classifier-free
guidance needs (Ho & Salimans, 2022). For a code-classifying denoiser (not in the paper: continuous diffusion for
categorical data, Dieleman et al., 2022) the latents are snapped to their nearest codes and the target is each
voxel's code index (``common.sampling.code_expectation``).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from monai.networks.schedulers import Scheduler
from monai.utils import CommonKeys as Keys

from common.engines.latent_cache import LatentCache
from common.engines.prediction_target import PREDICTION_TYPES, PredictionTargetPrepareBatch
from common.networks import NULL_LABEL, CodebookRangeAutoencoder

__all__ = ["PREDICTION_TYPES", "LatentDiffusionPrepareBatch"]


class LatentDiffusionPrepareBatch(PredictionTargetPrepareBatch):
    """``PredictionTargetPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer``: the trainer then sees (latent, target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch keeps the image-space
    flip augmentation of the paper; ``latent_cache_mb`` keeps the encoding of every input seen before, by content,
    so that each flipped or unflipped volume is encoded once (``LatentCache``). The target is the scheduler's
    ``prediction_type`` (the paper's: the noise).

    Args:
        autoencoder: the wrapped VQ-GAN that maps images to normalised latents.
        num_train_timesteps: number of diffusion steps T (the paper: 300).
        scheduler: the training noise scheduler; None: epsilon prediction.
        condition_name: for a class-conditional denoiser, the batch entry holding the labels, an integer tensor
            (B, variables); passed to the inferer as ``condition`` (the network's ``context``). None: unconditional.
        label_dropout: the share of volumes whose labels are all replaced by ``NULL_LABEL`` ("not given"), each
            volume drawn independently; 0.1 to 0.2 is usual (Ho & Salimans). 0 trains no unconditional model, so
            guidance scales other than 1 have nothing to push from.
        timestep_sampling, snr_gamma: which timesteps are drawn (``PredictionTargetPrepareBatch``); ``"min_snr"``
            and ``"variance_shifted"`` use the latents' own variance, so each means the same for codebook-range and
            unit-variance latents.
        code_classification: every latent voxel is replaced by its nearest code (what the decoder reads) and the
            target is that code's index (B, spatial...) for a cross-entropy loss against the denoiser's logits (one
            per code). Needs the scheduler's ``prediction_type`` "sample": the sampler's estimate of the clean latent
            is the expectation of the codes (``common.sampling.CodeExpectation``).
        code_voxels: with ``code_classification``, the number of random voxels of each latent (drawn anew every
            batch, without repeats) at which the cross entropy is taken: the target is their codes (B, N) and the
            inferer is given their indices as ``voxels`` (``SampledVoxelsInferer``), so the logits of the other
            voxels are never computed. None: every voxel.
        latent_cache_mb: host memory (MiB) for the VQ-GAN encoder's outputs of the inputs seen so far, by content
            (``LatentCache``): the same latents as encoding every batch, without encoding a volume twice. 0: encode
            every batch (the paper's code).
    """

    def __init__(
        self,
        autoencoder: CodebookRangeAutoencoder,
        num_train_timesteps: int,
        scheduler: Scheduler | None = None,
        condition_name: str | None = None,
        label_dropout: float = 0.1,
        timestep_sampling: str = "uniform",
        snr_gamma: float = 5.0,
        code_classification: bool = False,
        code_voxels: int | None = None,
        latent_cache_mb: float = 0,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, scheduler=scheduler, condition_name=condition_name,
                         timestep_sampling=timestep_sampling, snr_gamma=snr_gamma)
        if isinstance(label_dropout, bool) or not 0.0 <= float(label_dropout) < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout!r}.")
        if not isinstance(code_classification, bool):
            raise ValueError(f"code_classification must be true or false, got {code_classification!r}.")
        if code_classification and self.prediction_type != "sample":
            raise ValueError(
                "a code-classifying denoiser (code_classification true) estimates the clean latent: set prediction_type "
                f"'sample', not {self.prediction_type!r}."
            )
        if code_voxels is not None and (isinstance(code_voxels, bool) or not isinstance(code_voxels, int) or code_voxels < 1):
            raise ValueError(f"code_voxels must be a positive integer or None (every voxel), got {code_voxels!r}.")
        self.autoencoder = autoencoder
        self.label_dropout = float(label_dropout)
        self.code_classification = code_classification
        self.code_voxels = code_voxels if code_classification else None  # regression: every voxel's target
        self.latent_cache = LatentCache(latent_cache_mb)

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            encoded = self.latent_cache.encode(torch.as_tensor(images), self.autoencoder.autoencoder.encode)
            latents = self.autoencoder.stage_2_latents(encoded)
            if self.code_classification:
                latents, indices = self.autoencoder.snap_to_codes(latents)
        batch = {Keys.IMAGE: latents}
        if self.condition_name is not None:
            if self.condition_name not in batchdata:
                raise KeyError(
                    f"the batch has no '{self.condition_name}' entry: a class-conditional denoiser needs every volume's "
                    "labels (set class_labels and the labels file, or train unconditionally)."
                )
            batch[self.condition_name] = self.drop_labels(torch.as_tensor(batchdata[self.condition_name]))
        inputs, target, args, infer_kwargs = super().__call__(batch, device, non_blocking, **kwargs)
        if self.code_classification:  # each voxel's code, the index of what it was snapped to
            target = indices.to(target.device)
        if self.code_voxels is not None:
            count = target[0].numel()
            if self.code_voxels > count:
                raise ValueError(f"code_voxels is {self.code_voxels} but a latent of {tuple(inputs.shape[2:])} has {count} voxels.")
            voxels = torch.rand(target.shape[0], count, device=target.device).argsort(dim=1)[:, : self.code_voxels]
            target, infer_kwargs = target.flatten(1).gather(1, voxels), {**infer_kwargs, "voxels": voxels}
        return inputs, target, args, infer_kwargs

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` (B, variables) with every label of a ``label_dropout`` share of volumes set to ``NULL_LABEL``."""
        if labels.ndim != 2 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor (B, variables), got {labels.dtype} of shape {tuple(labels.shape)}.")
        dropped = torch.rand(labels.shape[0], device=labels.device) < self.label_dropout
        return torch.where(dropped[:, None], torch.full_like(labels, NULL_LABEL), labels)

"""Batches for the diffusion stage: images encoded to codebook-range latents, then noised as MONAI does it.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": the DDPM learns the VQ-GAN's unquantized,
codebook-range normalised latents. For a class-conditional denoiser (not in the paper) the batch's labels go with
them, dropped at a rate so that the same network also learns the unconditional model that classifier-free
guidance needs (Ho & Salimans, 2022). For a code-classifying denoiser (not in the paper: continuous diffusion for
categorical data, Dieleman et al., 2022) the latents are snapped to their nearest codes and the target is each
voxel's code index (``common.sampling.code_expectation``). A denoiser with position channels can train on random
crops of the latents with their coordinates (not in the paper: Patch Diffusion, Wang et al., NeurIPS 2023), and
samples whole latents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from monai.networks.schedulers import Scheduler
from monai.utils import CommonKeys as Keys

from common.engines.prediction_target import PREDICTION_TYPES, PredictionTargetPrepareBatch
from common.networks import NULL_LABEL, CodebookRangeAutoencoder, voxel_coordinates

__all__ = ["PREDICTION_TYPES", "LatentDiffusionPrepareBatch"]


class LatentDiffusionPrepareBatch(PredictionTargetPrepareBatch):
    """``PredictionTargetPrepareBatch`` on latents: encode each image batch with the frozen VQ-GAN first.

    Use with ``SupervisedTrainer`` and ``DiffusionInferer`` (``SampledVoxelsInferer`` with ``code_voxels`` or
    ``latent_crop_size``, which pass the network more than MONAI's inferer does): the trainer then sees (latent, target,
    ``noise``/``timesteps`` kwargs) exactly as for pixel-space diffusion. Encoding per batch (rather than caching
    latents) keeps the image-space flip augmentation of the paper. The target is the scheduler's ``prediction_type``
    (the paper's: the noise).

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
        latent_crop_size: (H, W, D) of random crops of the latents to train on, one place drawn for each volume, in
            the batches that are not among the ``full_latent_share``; the crops' coordinates in the whole latent go
            to the inferer as ``coordinates``, which the denoiser reads through its position channels
            (``DepthAttentionUNet``'s ``position_channels`` must be on: refused at the first cropped batch otherwise).
            A crop of an eighth of the latent costs the denoiser about an eighth of its step; the batch is still
            read and encoded whole (``benchmarks/latent_crop_speed.md``). Timestep densities that read the latents'
            variance (``min_snr``, ``variance_shifted``) read the whole latents'. Patch Diffusion (Wang et al.,
            NeurIPS 2023) trains image denoisers this way, faster and with fewer images; not in Medical Diffusion.
            None (the paper's): whole latents only.
        full_latent_share: with ``latent_crop_size``, the share of batches trained on whole latents, from which the
            denoiser learns the whole layout it samples (Patch Diffusion: 0.5). Whole or cropped is drawn for each
            batch from a generator of its own, seeded alike in every process, so that the ranks of a multi-GPU
            run crop the same batches and none waits for another's whole batch.
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
        latent_crop_size: Sequence[int] | None = None,
        full_latent_share: float = 0.5,
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
        if latent_crop_size is not None:
            if not isinstance(latent_crop_size, Sequence) or isinstance(latent_crop_size, str):
                raise ValueError(f"latent_crop_size must be three positive integers (H, W, D) or None, got {latent_crop_size!r}.")
            latent_crop_size = tuple(latent_crop_size)
            if len(latent_crop_size) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in latent_crop_size):
                raise ValueError(f"latent_crop_size must be three positive integers (H, W, D) or None, got {latent_crop_size!r}.")
            if code_classification and code_voxels is not None and code_voxels > math.prod(latent_crop_size):
                raise ValueError(
                    f"code_voxels is {code_voxels} but a latent crop of {latent_crop_size} has {math.prod(latent_crop_size)} "
                    "voxels: take fewer voxels or a larger crop."
                )
        if isinstance(full_latent_share, bool) or not isinstance(full_latent_share, (int, float)) or not 0.0 <= full_latent_share < 1.0:
            raise ValueError(
                f"full_latent_share must be in [0, 1) (the share of batches of whole latents; for whole latents only set "
                f"latent_crop_size to None), got {full_latent_share!r}."
            )
        self.autoencoder = autoencoder
        self.label_dropout = float(label_dropout)
        self.latent_crop_size = latent_crop_size
        self.full_latent_share = float(full_latent_share)
        self.crop_draws = torch.Generator().manual_seed(0)  # whole or cropped: the same sequence on every rank
        self.uncropped: torch.Tensor | None = None  # the batch's whole latents while a cropped one is prepared
        self.code_classification = code_classification
        self.code_voxels = code_voxels if code_classification else None  # regression: every voxel's target

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(torch.as_tensor(images))
            if self.code_classification:
                latents, indices = self.autoencoder.snap_to_codes(latents)
        coordinates = None
        if self.latent_crop_size is not None and float(torch.rand((), generator=self.crop_draws)) >= self.full_latent_share:
            self.uncropped = latents
            latents, indices, coordinates = self.crop(latents, indices if self.code_classification else None)
        batch = {Keys.IMAGE: latents}
        if self.condition_name is not None:
            if self.condition_name not in batchdata:
                raise KeyError(
                    f"the batch has no '{self.condition_name}' entry: a class-conditional denoiser needs every volume's "
                    "labels (set class_labels and the labels file, or train unconditionally)."
                )
            batch[self.condition_name] = self.drop_labels(torch.as_tensor(batchdata[self.condition_name]))
        try:
            inputs, target, args, infer_kwargs = super().__call__(batch, device, non_blocking, **kwargs)
        finally:
            self.uncropped = None
        if self.code_classification:  # each voxel's code, the index of what it was snapped to
            target = indices.to(target.device)
        if self.code_voxels is not None:
            count = target[0].numel()
            if self.code_voxels > count:
                raise ValueError(f"code_voxels is {self.code_voxels} but a latent of {tuple(inputs.shape[2:])} has {count} voxels.")
            voxels = torch.rand(target.shape[0], count, device=target.device).argsort(dim=1)[:, : self.code_voxels]
            target, infer_kwargs = target.flatten(1).gather(1, voxels), {**infer_kwargs, "voxels": voxels}
        if coordinates is not None:
            infer_kwargs = {**infer_kwargs, "coordinates": coordinates.to(inputs.device)}
        return inputs, target, args, infer_kwargs

    def crop(
        self, latents: torch.Tensor, indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """A ``latent_crop_size`` crop of every latent (B, C, H, W, D) at a random place of its own, its code indices
        (B, H, W, D) cropped alike, and the crop's coordinates in the whole latent (B, 3, h, w, d)."""
        size = latents.shape[2:]
        if any(n > m for n, m in zip(self.latent_crop_size, size)):
            raise ValueError(f"latent_crop_size {self.latent_crop_size} is larger than the latents {tuple(size)} along an axis.")
        grid = voxel_coordinates(latents)
        crops, codes, places = [], [], []
        for index in range(latents.shape[0]):
            start = [int(torch.randint(0, m - n + 1, ())) for n, m in zip(self.latent_crop_size, size)]
            window = tuple(slice(a, a + n) for a, n in zip(start, self.latent_crop_size))
            crops.append(latents[(index, slice(None), *window)])
            places.append(grid[(index, slice(None), *window)])
            if indices is not None:
                codes.append(indices[(index, *window)])
        return torch.stack(crops), torch.stack(codes) if indices is not None else None, torch.stack(places)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """The parent's draw; for a cropped batch on the whole latents, whose variance ``min_snr`` and
        ``variance_shifted`` read (a crop of background has almost none)."""
        return super().get_timesteps(images if self.uncropped is None else self.uncropped.to(images.device))

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` (B, variables) with every label of a ``label_dropout`` share of volumes set to ``NULL_LABEL``."""
        if labels.ndim != 2 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor (B, variables), got {labels.dtype} of shape {tuple(labels.shape)}.")
        dropped = torch.rand(labels.shape[0], device=labels.device) < self.label_dropout
        return torch.where(dropped[:, None], torch.full_like(labels, NULL_LABEL), labels)

"""Sampling images that follow given label masks (Med-DDPM, Dorjsembe et al., Sec. II, Algorithm 2).

``MaskConditionedSampler`` reads label masks, checks that each has the model's shape, spacing and label set, and
writes for every mask one or several synthetic images with the mask's affine next to a copy of the mask, as a
ready image/label pair: the output folder is itself a training dataset of pairs (``common.data.paired_datalist``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import DiffusionInferer, LatentDiffusionInferer
from monai.networks.schedulers import Scheduler
from monai.networks.utils import one_hot

from common.data import DatasetError, nifti_stem
from common.io import require_output_folder, save_nifti, to_nifti_layout
from common.sampling import sample_shared_out, seeded_random_state, starting_noise

__all__ = ["MaskConditionedSampler"]

logger = logging.getLogger(__name__)


class MaskConditionedSampler:
    """Sample images that follow label masks, and write each next to its mask.

    For mask ``<name>.nii.gz`` and seed s: ``output_dir/images/<name>_seed<s>.nii.gz`` (the synthetic image, in
    [-1, 1]; channels last for several modalities) and ``output_dir/labels/<name>_seed<s>.nii.gz`` (the mask's
    classes), both with the mask's affine after RAS orientation, so ``output_dir`` is itself a training dataset of
    image/label pairs. ``samples.json`` records every pair with its mask and seed; sample k of mask m uses seed
    ``seed + m * samples_per_mask + k``, which fixes its noise and leaves the caller's random state alone, and under
    ``torch.distributed`` (torchrun) the images are shared out over the processes, each writing its own files, and
    rank 0 writes ``samples.json``, as every sampler of the collection does (``common.sampling.loop``).

    Args:
        network: the trained denoiser (in channels: image channels + classes).
        inferer: the bundle's ``inferer``, a ``DiffusionInferer`` (sampled in "concat" mode, the mask channels
            joined to the noisy image), or its scheduler (DDPM over all steps, or DDIM with fewer:
            ``make_sampling_scheduler``) to wrap in one.
        mask_files: label masks (NIfTI) holding class values 0..``num_classes``, at the model's ``image_size``
            and ``spacing``.
        read_mask: reads a mask file to a (1, H, W, D) ``MetaTensor`` of classes in RAS orientation, raising
            ``DatasetError`` naming the file for an unexpected label set (the bundle's ``mask_preprocessing``).
        num_classes: classes besides the background; the condition is their one-hot channels.
        image_size: the spatial shape the model was trained at.
        spacing: the voxel size (mm) the model was trained at; a mask off by more than ``spacing_tolerance``
            (relative) is refused.
        image_channels: channels of a synthetic image.
        output_dir: where images/, labels/ and samples.json go.
        samples_per_mask: synthetic images per mask.
        seed: the first seed.
        device: where to sample.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: DiffusionInferer | Scheduler,
        mask_files: Sequence[str | os.PathLike],
        read_mask: Callable[[str], MetaTensor],
        num_classes: int,
        image_size: Sequence[int],
        spacing: Sequence[float],
        image_channels: int,
        output_dir: str | os.PathLike,
        samples_per_mask: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        spacing_tolerance: float = 0.05,
        verbose: bool = True,
    ) -> None:
        if samples_per_mask < 1:
            raise ValueError(f"samples_per_mask must be at least 1, got {samples_per_mask}.")
        if len(spacing) != 3 or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {tuple(spacing)}.")
        if len(image_size) != 3 or min(int(s) for s in image_size) < 1:
            raise ValueError(f"image_size must be 3 positive sizes, got {tuple(image_size)}.")
        self.network = network.eval()
        if isinstance(inferer, Scheduler):
            inferer = DiffusionInferer(inferer)
        if not isinstance(inferer, DiffusionInferer) or isinstance(inferer, LatentDiffusionInferer):
            raise ValueError(f"inferer must be a (pixel-space) DiffusionInferer or a scheduler, got {inferer!r}.")
        self.inferer = inferer
        self.mask_files = [str(m) for m in mask_files]
        self.read_mask = read_mask
        self.num_classes = num_classes
        self.image_size = tuple(int(s) for s in image_size)
        self.spacing = np.asarray(spacing, dtype=float)
        self.image_channels = image_channels
        self.output_dir = require_output_folder(output_dir)
        self.samples_per_mask = samples_per_mask
        self.seed = seed
        self.device = torch.device(device)
        self.spacing_tolerance = spacing_tolerance
        self.verbose = verbose

    def load(self, path: str) -> MetaTensor:
        """A mask's classes (1, H, W, D); ``DatasetError`` naming the file for the wrong shape, spacing or labels."""
        try:
            classes = self.read_mask(path)
        except Exception as error:
            cause: BaseException | None = error  # MONAI's Compose wraps a transform's error in "applying transform"
            while cause is not None and not isinstance(cause, DatasetError):
                cause = cause.__cause__
            if cause is not None:
                raise cause from None
            raise DatasetError(f"{path}: cannot be read as a label mask ({type(error).__name__}: {error}).") from error
        if tuple(classes.shape) != (1, *self.image_size):
            raise DatasetError(
                f"{path}: mask of shape {tuple(classes.shape[1:])}, but the model makes images of {self.image_size}; "
                "resample or crop the mask to that size first."
            )
        zooms = np.sqrt((np.asarray(classes.affine)[:3, :3] ** 2).sum(0))
        if np.any(np.abs(zooms - self.spacing) > self.spacing_tolerance * self.spacing):
            found, trained = tuple(round(float(z), 3) for z in zooms), tuple(float(z) for z in self.spacing)
            raise DatasetError(f"{path}: voxels of {found} mm, but the model was trained at {trained} mm.")
        return classes

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, seed: int) -> torch.Tensor:
        """One image (C, H, W, D) for a (1, H, W, D) class map, from the noise of ``seed``."""
        condition = one_hot(torch.as_tensor(classes)[None].long(), self.num_classes + 1, dim=1)[:, 1:].float()
        noise = starting_noise((1, self.image_channels, *self.image_size), seed).to(self.device)
        with seeded_random_state(seed, self.device):  # the DDPM steps draw noise too: make them follow the seed
            image = self.inferer.sample(
                input_noise=noise, diffusion_model=self.network,
                conditioning=condition.to(self.device), mode="concat", verbose=self.verbose,
            )
        return image[0].float().clamp(-1, 1).cpu()

    def run(self) -> list[dict[str, object]]:
        """Check every mask first, then sample and write the pairs; returns the records of ``samples.json``."""
        if not self.mask_files:
            raise ValueError("no masks to sample for: set mask_dir to a folder of NIfTI label masks (or give mask_files).")
        masks = [self.load(path) for path in self.mask_files]

        def sample_and_write(jobs: list[tuple[int, int]]) -> list[tuple[int, dict[str, object]]]:
            (m, k), = jobs
            path, classes = self.mask_files[m], masks[m]
            affine = np.asarray(classes.affine)
            seed = self.seed + m * self.samples_per_mask + k
            image = self.sample(classes, seed).numpy()
            name = f"{nifti_stem(path)}_seed{seed}.nii.gz"
            save_nifti(to_nifti_layout(image), affine, self.output_dir / "images" / name)
            save_nifti(np.asarray(classes[0]), affine, self.output_dir / "labels" / name, dtype=np.uint8)
            logger.info("wrote %s", self.output_dir / "images" / name)
            return [(seed, {"image": f"images/{name}", "label": f"labels/{name}", "mask": path, "seed": seed})]

        jobs = [(m, k) for m in range(len(masks)) for k in range(self.samples_per_mask)]
        _, everyone = sample_shared_out(jobs, sample_and_write, self.output_dir, lambda written: {"samples": [r for _, r in written]})
        return [record for _, record in everyone]

"""Sampling synthetic volumes from a trained latent bundle: the sampling loop, NIfTI files and a picture.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together": reverse diffusion from Gaussian noise in the
codebook-range latent space, then quantisation to the codebook and decoding. Besides the paper's ancestral DDPM
over all T steps, DDIM (Song et al., ICLR 2021) samples in fewer steps (``make_sampling_scheduler``). A
class-conditional denoiser (not in the paper) samples the labels asked for, with MONAI's classifier-free guidance
(Ho & Salimans, 2022); a code-classifying one (``code_classification``, not in the paper) through the expectation
of its codes (``common.sampling.code_expectation``). Drawn in batches, the samples can be pushed apart as they are
drawn (``common.sampling.particle_guidance``, Corso et al., ICLR 2024). A self-conditioned denoiser is given its
estimate of the step before (``common.sampling.self_conditioning``, Chen et al., ICLR 2023).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn

from common.data import check_class_labels, labels_description, requested_labels
from common.evaluation.pictures import save_three_plane_montage
from common.io import process_rank, require_output_folder, save_nifti
from common.networks import NULL_LABEL, CodebookRangeAutoencoder

from .autoguidance import AutoGuidedDenoiser
from .code_expectation import CodeExpectation, checked_code_temperature
from .loop import sample_shared_out, seeded_random_state, starting_noise
from .particle_guidance import ParticleGuidedDenoiser, checked_particle_guidance_pool, checked_particle_guidance_scale
from .self_conditioning import SelfConditionedDenoiser

__all__ = ["LatentSampler", "checked_guidance_scale", "labels_description", "volume_affine"]

logger = logging.getLogger(__name__)


def volume_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine with the given voxel spacing (mm) and the volume's centre at the origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape[:3], dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
    return affine


def checked_guidance_scale(scale: object) -> float:
    """A classifier-free guidance scale as a float: a finite number >= 0 (``ValueError`` naming it otherwise)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)) or scale < 0:
        raise ValueError(f"guidance_scale must be a number >= 0, got {scale!r}.")
    return float(scale)


class LatentSampler:
    """Draw synthetic volumes with ``LatentDiffusionInferer`` and write them as NIfTI plus a PNG montage.

    Sample ``i`` has seed ``seed + i``: its starting noise, and the random draws of its steps (with the batch's
    first seed), follow from it as ``common.sampling.loop`` says, and the caller's random state is left alone. So
    with ``batch_size`` 1 (the default) any sample is regenerated exactly, on the same device, by sampling its seed
    alone; with larger batches (and always with particle guidance, where a sample depends on its batch), by
    repeating the same seed, ``num_samples``, ``batch_size`` and number of processes. The seed is in each file name
    and in ``samples.json``.

    Args:
        autoencoder: the VQ-GAN wrapped for codebook-range latents.
        network: the (EMA) denoiser, or an ``AutoGuidedDenoiser`` of it (``common.sampling.autoguided``).
        inferer: the bundle's ``inferer``, a ``LatentDiffusionInferer`` with ``scale_factor`` 1 (the codebook-range
            normalisation is the autoencoder wrapper's), or a sampling scheduler (``make_sampling_scheduler``) to
            wrap in one.
        latent_shape: (C, H, W, D) of one latent.
        output_dir: where the files go.
        num_samples: how many volumes to write.
        batch_size: volumes sampled together.
        seed: seed of the first sample.
        spacing: voxel spacing (mm) written into the NIfTI affine.
        device: device to sample on.
        verbose: show a progress bar per batch.
        clip_sample_range: the predicted x0 is clipped to plus or minus this, in codebook-range units: the
            scheduler's clip is set to it times the autoencoder's latent scale (the paper: 1, with scale 1).
        class_labels: a class-conditional model's labelled variables and their classes (as trained); None for an
            unconditional one.
        labels: the labels asked for (``common.data.requested_labels``): None (every sample unconditional), one
            ``{variable: class}`` for all samples, a list of them (one per sample), or a CSV/JSON file of them.
        guidance_scale: classifier-free guidance scale w (``unconditional + w * (conditional - unconditional)``):
            1 samples the conditional model alone, larger follows the labels more closely with less variety.
        code_classification: the denoiser gives one logit per code of the autoencoder's codebook (trained with
            ``code_classification``); it is sampled through ``CodeExpectation`` at ``code_temperature``, with the
            scheduler's ``prediction_type`` "sample". Autoguidance and classifier-free guidance (MONAI's inferer)
            both combine the estimates (the expected codes, after the softmax), not the logits.
        code_temperature: the softmax temperature of a code-classifying denoiser (``CodeExpectation``).
        code_likelihood: the code classifier was trained with ``code_likelihood``: every code's log-likelihood at
            the noisy voxel is added to its logits at every step (``common.networks.code_log_likelihood``). It must
            be the model's own setting (the bundles check it against the checkpoint's ``model_settings``).
        particle_guidance_scale: above 0, the x0 estimates of each batch's samples are pushed apart at every step
            (``ParticleGuidedDenoiser``, on the estimates after code expectation and autoguidance), by this share of
            their distance to their neighbours' mean at the noisiest step; needs ``batch_size`` of at least 2. A batch
            of one sample (a last one, or a process's share under torchrun) is drawn alone, with a warning.
        particle_guidance_pool: with particle guidance, the estimates are compared and pushed as averages over
            cubes of this many latent voxels a side (1: voxel by voxel).
        self_conditioning: the denoiser was built and trained with ``self_conditioning``: every step is given the
            clean-latent estimate of the step before (``SelfConditionedDenoiser``, outermost). It must be the
            network's own setting.
    """

    def __init__(
        self,
        autoencoder: CodebookRangeAutoencoder,
        network: nn.Module,
        inferer: LatentDiffusionInferer | Scheduler,
        latent_shape: Sequence[int],
        output_dir: str,
        num_samples: int = 4,
        batch_size: int = 1,
        seed: int = 0,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        device: str | torch.device = "cpu",
        verbose: bool = True,
        clip_sample_range: float = 1.0,
        class_labels: dict[str, Sequence[str]] | None = None,
        labels: object = None,
        guidance_scale: float = 1.0,
        code_classification: bool = False,
        code_temperature: float = 1.0,
        code_likelihood: bool = False,
        particle_guidance_scale: float = 0.0,
        particle_guidance_pool: int = 1,
        self_conditioning: bool = False,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}.")
        if len(latent_shape) != 4:
            raise ValueError(f"latent_shape must be (C, H, W, D), got {tuple(latent_shape)}.")
        if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {tuple(spacing)}.")
        self.autoencoder = autoencoder
        self.network = network
        if isinstance(inferer, Scheduler):
            inferer = LatentDiffusionInferer(inferer, scale_factor=1.0)
        if not isinstance(inferer, LatentDiffusionInferer) or float(inferer.scale_factor) != 1.0:
            raise ValueError(
                "inferer must be a LatentDiffusionInferer with scale_factor 1.0 (CodebookRangeAutoencoder normalises "
                f"the latents) or a scheduler, got {inferer!r}."
            )
        if not (math.isfinite(clip_sample_range) and clip_sample_range > 0):
            raise ValueError(f"clip_sample_range must be a positive number, got {clip_sample_range}.")
        scaled = clip_sample_range * float(autoencoder.latent_scale.factor())
        inferer.scheduler.clip_sample_values = [-scaled, scaled]  # read by the scheduler's step() when it clips
        self.inferer = inferer
        timesteps = inferer.scheduler.timesteps
        if isinstance(network, AutoGuidedDenoiser) and not bool(network.in_interval(timesteps).any()):
            shares = ", ".join(f"{float(t) / network.num_train_timesteps:.3g}" for t in timesteps)
            raise ValueError(
                f"autoguidance_interval {list(network.interval)} holds none of the {len(timesteps)} sampling steps, whose "
                f"noise shares t / {network.num_train_timesteps} are {shares}: widen it, or sample without the guide."
            )
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_dir = require_output_folder(output_dir)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.spacing = tuple(float(s) for s in spacing)
        self.device = torch.device(device)
        self.verbose = verbose
        self.class_labels = check_class_labels(class_labels)
        conditional = getattr(network, "class_embedding", None) is not None
        if conditional != (self.class_labels is not None):
            raise ValueError(
                f"the denoiser is {'class-conditional' if conditional else 'unconditional'} but class_labels is "
                f"{'not set' if self.class_labels is None else 'set'}: set it as the model was trained."
            )
        self.labels = requested_labels(labels, self.class_labels, num_samples)
        self.guidance_scale = checked_guidance_scale(guidance_scale)
        if not isinstance(code_classification, bool):
            raise ValueError(f"code_classification must be true or false, got {code_classification!r}.")
        code_temperature = checked_code_temperature(code_temperature)  # checked whether or not it is used
        if not isinstance(code_likelihood, bool):
            raise ValueError(f"code_likelihood must be true or false, got {code_likelihood!r}.")
        if code_likelihood and not code_classification:
            raise ValueError("code_likelihood adds every code's likelihood to a code classifier's logits: it needs "
                             "code_classification true.")
        self.denoiser = network
        if code_classification:
            if inferer.scheduler.prediction_type != "sample":
                raise ValueError(
                    "a code-classifying denoiser (code_classification true) estimates the clean latent: set "
                    f"prediction_type 'sample', not {inferer.scheduler.prediction_type!r}."
                )
            codes = autoencoder.codes()
            expectation = functools.partial(CodeExpectation, codes=codes, temperature=code_temperature,
                                            likelihood=inferer.scheduler if code_likelihood else None)
            # autoguided: on the expected codes of the denoiser and its guide, not on their logits (common.sampling.autoguidance)
            self.denoiser = network.applied_to(expectation) if isinstance(network, AutoGuidedDenoiser) else expectation(network)
        self.code_temperature = code_temperature if code_classification else None
        self.code_likelihood = code_likelihood
        self.particle_guidance_scale = checked_particle_guidance_scale(particle_guidance_scale)
        self.particle_guidance_pool = checked_particle_guidance_pool(particle_guidance_pool)
        if self.particle_guidance_scale > 0:
            if batch_size < 2:
                raise ValueError(
                    f"particle_guidance_scale {self.particle_guidance_scale} pushes the samples of a batch apart: set "
                    f"batch_size to 2 or more (got {batch_size}), or particle_guidance_scale 0."
                )
            self.denoiser = ParticleGuidedDenoiser(self.denoiser, inferer.scheduler, self.particle_guidance_scale,
                                                   self.particle_guidance_pool)
        self.particles = self.denoiser if isinstance(self.denoiser, ParticleGuidedDenoiser) else None
        built = getattr(getattr(network, "network", network), "self_conditioning", self_conditioning)  # autoguided: its network
        if not isinstance(self_conditioning, bool) or built != self_conditioning:
            raise ValueError(
                f"self_conditioning must be the denoiser's own setting, true or false: the network was built with "
                f"{built!r}, got {self_conditioning!r}."
            )
        self.self_conditioning = self_conditioning
        if self_conditioning:
            self.denoiser = SelfConditionedDenoiser(self.denoiser, inferer.scheduler)
            if isinstance(network, AutoGuidedDenoiser) and network.scale != 1.0:
                logger.warning(
                    "self_conditioning with autoguidance (scale %s): on the demo's denoiser the two together broke the "
                    "samples (benchmarks/demo_side_by_side_self_cond.md); set autoguidance_scale 1 to sample it alone.",
                    network.scale)

    @torch.no_grad()
    def sample(
        self, seeds: Sequence[int], labels: Sequence[Sequence[int] | None] | None = None, guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Volumes (N, C, H, W, D) in [-1, 1] for the given seeds; a class-conditional model's for the given
        class indices per sample (None: no label), guided with ``guidance_scale`` (by default the sampler's)."""
        noise = torch.stack([starting_noise(self.latent_shape, s) for s in seeds]).to(self.device)
        scale = self.guidance_scale if guidance_scale is None else checked_guidance_scale(guidance_scale)
        conditioning, guidance = None, {}
        if self.class_labels is not None:
            rows = [[NULL_LABEL] * len(self.class_labels) if row is None else list(row) for row in labels or [None] * len(seeds)]
            conditioning = torch.tensor(rows, dtype=torch.long, device=self.device)
            # MONAI's inferer: "not given" filled with NULL_LABEL, one batch of both; with no label asked at all both
            # predictions are the unconditional one, so the batch is not doubled for nothing
            if scale != 1.0 and bool((conditioning != NULL_LABEL).any()):
                guidance = {"cfg": scale, "cfg_fill_value": NULL_LABEL}
        self.network.eval()
        if isinstance(self.denoiser, SelfConditionedDenoiser):
            self.denoiser.reset()  # a new batch starts from no estimate
        if self.particles is not None:
            self.particles.cfg_scale = scale if guidance else None  # how MONAI's inferer combines its doubled batch
            if len(seeds) < 2:
                logger.warning("particle guidance: seed %s is sampled alone in its batch, so it is not pushed from others.",
                               seeds[0])
        with seeded_random_state(seeds[0], self.device):
            images = self.inferer.sample(
                input_noise=noise, autoencoder_model=self.autoencoder, diffusion_model=self.denoiser, verbose=self.verbose,
                conditioning=conditioning, mode="crossattn", **guidance,
            )
        return images.clamp(-1, 1).cpu()

    def run(self) -> list[str]:
        """Sample ``num_samples`` volumes, write them, ``samples.json`` and the montage of the first ones; returns this
        process's NIfTI paths (under torchrun every rank writes its share, ``common.sampling.loop``)."""
        previews: list[tuple[int, np.ndarray]] = []

        def sample_and_write(batch: list[int]) -> list[tuple[int, int, str]]:
            seeds = [self.seed + i for i in batch]
            written = []
            for index, seed, image in zip(batch, seeds, self.sample(seeds, [self.labels[i][1] for i in batch])):
                volume = image[0].numpy()
                path = save_nifti(volume, volume_affine(volume.shape, self.spacing), self.output_dir / f"sample_{index:04d}_seed{seed}.nii.gz",
                                  description=self.description(index))
                written.append((index, seed, str(path)))
                if len(previews) < 8:
                    previews.append((seed, volume))
            return written

        mine, _ = sample_shared_out(range(self.num_samples), sample_and_write, self.output_dir, self.record, self.batch_size)
        if previews and process_rank()[0] == 0:  # rank 0 shows its own first samples
            save_three_plane_montage([v for _, v in previews], self.output_dir / "samples.png", [f"seed {s}" for s, _ in previews])
        return [path for _, _, path in mine]

    def description(self, index: int) -> str | None:
        """What sample ``index`` was asked for, for its NIfTI header (``labels_description``); None for an
        unconditional model."""
        return None if self.class_labels is None else labels_description(self.labels[index][0])

    def record(self, written: list[tuple[int, int, str]]) -> dict[str, object]:
        """``samples.json``: the files, their seeds, the labels asked for, and everything else that fixes a sample."""
        conditional = {} if self.class_labels is None else {
            "labels": [self.labels[index][0] for index, _, _ in written],
            "class_labels": {name: list(classes) for name, classes in self.class_labels.items()},
            "guidance_scale": self.guidance_scale,
        }
        autoguidance = {"autoguidance": {
            "scale": self.network.scale, "guide": self.network.guide_source,
            "interval": None if self.network.interval is None else list(self.network.interval),
        }} if isinstance(self.network, AutoGuidedDenoiser) else {}
        codes = {} if self.code_temperature is None else {"code_classification": {
            "temperature": self.code_temperature, "likelihood": self.code_likelihood}}
        particles = {"particle_guidance": {"scale": self.particle_guidance_scale, "pool": self.particle_guidance_pool}
                     } if self.particle_guidance_scale else {}
        self_conditioned = {"self_conditioning": True} if self.self_conditioning else {}
        return {
            "files": [os.path.basename(path) for _, _, path in written],
            "seeds": [seed for _, seed, _ in written],
            **conditional,
            **autoguidance,
            **codes,
            **particles,
            **self_conditioned,
            "spacing": self.spacing,
            # what else fixes a sample: each batch's random draws are seeded with its first sample's seed
            "batch_size": self.batch_size,
            "processes": process_rank()[1],
            "num_inference_steps": len(self.inferer.scheduler.timesteps),
            "eta": float(getattr(self.inferer.scheduler, "eta", 0.0)),  # DDIM's fresh noise per step (DDPM: its own)
            "prediction_type": self.inferer.scheduler.prediction_type,
            "latent_scale": float(self.autoencoder.latent_scale.factor()),
        }

"""Sampling trained models: the scheduler (``make_sampling_scheduler``; the training one, ``make_noise_scheduler``,
rectified flow's ``common.networks.RectifiedFlowScheduler`` among them), the loop every sampler shares (seeds, the
random state, the work shared out over processes, ``samples.json``: ``loop``), and the latent bundles' sampler
(``LatentSampler``, Khader et al., Sec. 2.3), optionally autoguided by an earlier checkpoint (``autoguidance``,
Karras et al., 2024), with a code-classifying denoiser's estimate of the clean latent (``code_expectation``), its
batches' samples optionally pushed apart (``particle_guidance``, Corso et al., 2024), a self-conditioned denoiser
given its estimate of the step before (``self_conditioning``, Chen et al., 2023).
Med-DDPM's ``common.med_ddpm.MaskConditionedSampler`` uses the same scheduler and loop."""

from common.io import gather, process_rank, save_nifti  # noqa: F401  (release 0.1 paths: docs/migration.md)

from .autoguidance import AutoGuidedDenoiser, autoguided, checked_autoguidance_interval, checked_autoguidance_scale
from .code_expectation import CodeExpectation, checked_code_temperature
from .latent import LatentSampler, checked_guidance_scale, labels_description, volume_affine
from .loop import sample_shared_out, seeded_random_state, starting_noise
from .particle_guidance import ParticleGuidedDenoiser, checked_particle_guidance_pool, checked_particle_guidance_scale
from .self_conditioning import SelfConditionedDenoiser
from .schedulers import StochasticDDIMScheduler, make_noise_scheduler, make_sampling_scheduler

__all__ = [
    "AutoGuidedDenoiser", "CodeExpectation", "LatentSampler", "ParticleGuidedDenoiser", "SelfConditionedDenoiser", "StochasticDDIMScheduler", "autoguided", "checked_autoguidance_interval", "checked_autoguidance_scale",
    "checked_code_temperature", "checked_guidance_scale", "checked_particle_guidance_pool",
    "checked_particle_guidance_scale",
    "labels_description", "make_noise_scheduler", "make_sampling_scheduler", "sample_shared_out", "seeded_random_state", "starting_noise",
    "volume_affine",
]

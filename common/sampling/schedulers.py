"""The sampling scheduler of a trained diffusion model, latent (Khader et al., Sec. 2.3) or mask-conditioned
(Dorjsembe et al., Sec. II): the papers' ancestral DDPM over all steps, or DDIM (Song et al., ICLR 2021) in fewer."""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

__all__ = ["make_sampling_scheduler"]


def make_sampling_scheduler(
    num_train_timesteps: int = 300,
    num_inference_steps: int | None = None,
    schedule: str = "cosine",
    prediction_type: str = "epsilon",
) -> Scheduler:
    """The paper's ancestral DDPM over all ``num_train_timesteps`` steps, or DDIM when fewer steps are asked for.

    ``schedule`` and ``prediction_type`` must be what the model was trained with (the bundles read both from one
    config id each). The predicted x0 is clipped, to [-1, 1] as the paper does unless ``LatentSampler`` sets
    another range (``clip_sample_range``).
    """
    steps = num_train_timesteps if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}.")
    settings = dict(num_train_timesteps=num_train_timesteps, schedule=schedule, prediction_type=prediction_type, clip_sample=True)
    scheduler: Scheduler = DDPMScheduler(**settings) if steps == num_train_timesteps else DDIMScheduler(**settings)
    scheduler.set_timesteps(steps)
    return scheduler

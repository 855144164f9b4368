"""What the denoiser is given: the latents' statistics measured before diffusion training, and the latent scale.

A noise schedule (the cosine one of Nichol & Dhariwal, 2021, which Khader et al. use) is designed for data of
unit variance: at timestep t the signal-to-noise ratio is alpha_bar_t / (1 - alpha_bar_t) times the data's
variance. Codebook-range latents (Khader et al., Sci Rep 2023, Sec. 2.3) have a standard deviation of about 0.2,
so every step is about 15 dB noisier than designed, and most of the steps are nearly pure noise to the network.
This handler measures the latents once, says so, and fits ``LatentScale`` when ``latent_scaling`` asks for unit
variance.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import default_prepare_batch

from common.io import is_main_process, process_rank
from common.networks import CodebookRangeAutoencoder

__all__ = ["LatentStatistics", "measure_latents"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def measure_latents(autoencoder: CodebookRangeAutoencoder, loader: Any, max_volumes: int) -> dict[str, Any]:
    """Mean, standard deviation (overall and per channel) and range of the codebook-range latents of up to
    ``max_volumes`` volumes of ``loader`` (per process; summed over all processes under ``torch.distributed``)."""
    device = next(autoencoder.parameters()).device
    count, total, squares = 0, 0.0, 0.0
    low, high, volumes = math.inf, -math.inf, 0
    for batch in loader:
        images, _ = default_prepare_batch(batch, device)
        latents = autoencoder.codebook_range_latents(torch.as_tensor(images)[: max_volumes - volumes]).double()
        per_channel = latents.transpose(0, 1).flatten(1)  # (C, voxels)
        count += per_channel.shape[1]
        total, squares = total + per_channel.sum(1), squares + per_channel.square().sum(1)
        low, high = min(low, float(latents.min())), max(high, float(latents.max()))
        volumes += latents.shape[0]
        if volumes >= max_volumes:
            break
    if not count:
        raise ValueError("the training data loader gave no batch to measure the latents on.")
    summed = torch.cat([torch.tensor([count, volumes], dtype=torch.float64, device=device), total, squares])
    extremes = torch.tensor([-low, high], dtype=torch.float64, device=device)
    if process_rank()[1] > 1:
        dist.all_reduce(summed)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    count, volumes = float(summed[0]), int(summed[1])
    channels = len(total)
    total, squares = summed[2 : 2 + channels], summed[2 + channels :]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    overall_mean = float(total.sum() / (count * channels))
    overall_std = math.sqrt(max(float(squares.sum() / (count * channels)) - overall_mean**2, 0.0))
    return {
        "volumes": volumes, "mean": overall_mean, "std": overall_std, "min": -float(extremes[0]), "max": float(extremes[1]),
        "channel_mean": [float(m) for m in mean], "channel_std": [float(s) for s in std],
    }


class LatentStatistics:
    """At the start of diffusion training, measure the latents, log them and fit the latent scale.

    Logged (and written to TensorBoard under ``latent/`` when ``log_dir`` is given): the codebook-range latents'
    mean, standard deviation per channel and overall, and range, then the scale and the standard deviation the
    denoiser is given. A warning when that standard deviation is outside [1 / ``tolerance``, ``tolerance``] names
    the signal-to-noise offset of every step and the setting that removes it (``latent_scaling``), and another when
    the latents fill only a sliver of the codebook range (stale codes stretch it; train the VQ-GAN longer).

    Attach after ``CheckpointResumer``: a resumed run keeps the scale it was trained with (loaded from its
    checkpoint) and only logs.

    Args:
        autoencoder: the bundle's ``latent_autoencoder``; its ``latent_scale`` is fitted here when unset.
        max_volumes: volumes measured per process.
        log_dir: TensorBoard folder, or None.
        tolerance: factor away from unit variance beyond which to warn.
        min_codebook_std: standard deviation (codebook-range units) below which the codebook range is stretched.
    """

    def __init__(
        self,
        autoencoder: CodebookRangeAutoencoder,
        max_volumes: int = 32,
        log_dir: str | os.PathLike | None = None,
        tolerance: float = 2.0,
        min_codebook_std: float = 0.05,
    ) -> None:
        if not isinstance(autoencoder, CodebookRangeAutoencoder):
            raise TypeError(f"autoencoder must be a CodebookRangeAutoencoder, got {type(autoencoder).__name__}.")
        if max_volumes < 1 or tolerance <= 1:
            raise ValueError(f"max_volumes must be >= 1 and tolerance > 1, got {max_volumes} and {tolerance}.")
        self.autoencoder = autoencoder
        self.max_volumes = max_volumes
        self.log_dir = log_dir
        self.tolerance = tolerance
        self.min_codebook_std = min_codebook_std
        self.statistics: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        found = measure_latents(self.autoencoder, engine.state.dataloader, self.max_volumes)
        scale = self.autoencoder.latent_scale
        resumed = scale.fitted and scale.scaling == "unit_variance"
        if not scale.fitted:
            scale.fit(found["std"])
        found["scale"] = float(scale.factor())
        found["given_std"] = found["std"] * found["scale"]
        self.statistics = found
        self.report(found, resumed, engine.state.iteration)
        if resumed and abs(found["given_std"] / scale.target_std - 1) > 0.1:  # the measured std moves a little with the flips
            logger.warning(
                "resumed with the checkpoint's latent scale %.3f, which gives the denoiser std %.3f, not the "
                "latent_target_std %s configured: a trained denoiser keeps the scale it was trained with; start a new "
                "training (resume false) for another target.", found["scale"], found["given_std"], scale.target_std,
            )

    def report(self, found: dict[str, Any], resumed: bool, iteration: int) -> None:
        scale = self.autoencoder.latent_scale
        scaling = scale.scaling
        logger.info(
            "latents of %d training volumes (codebook range): mean %.3f, std %.3f (per channel %s), range [%.2f, %.2f]; "
            "latent_scaling %s%s: the denoiser is given std %.3f",
            found["volumes"], found["mean"], found["std"], ", ".join(f"{s:.2f}" for s in found["channel_std"]), found["min"],
            found["max"], scaling, f" (scale {found['scale']:.3f}{', from the checkpoint' if resumed else ''})"
            if scaling != "codebook_range" else "", found["given_std"],
        )
        if found["std"] < self.min_codebook_std:
            logger.warning(
                "normalised latents span [%.3f, %.3f] with std %.4f: a few codebook entries far from the encoder's outputs "
                "stretch the codebook range, and the diffusion model will see nearly constant inputs. Train the VQ-GAN "
                "longer (or with a lower codebook decay) before this stage.", found["min"], found["max"], found["std"],
            )
        elif not 1 / self.tolerance <= found["given_std"] <= self.tolerance:
            logger.warning(
                "the denoiser is given latents of std %.3f; the noise schedule is designed for unit variance, so every "
                "timestep's signal-to-noise ratio is %+.1f dB off its design. %s", found["given_std"],
                20 * math.log10(found["given_std"]),
                "latent_target_std sets the std latent_scaling 'unit_variance' gives (1: unit variance)."
                if scale.scaling == "unit_variance"
                else "latent_scaling 'unit_variance' scales them to std 1 (see the bundle's docs).",
            )
        if self.log_dir is not None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(self.log_dir)) as writer:
                for key in ("mean", "std", "min", "max", "scale", "given_std"):
                    writer.add_scalar(f"latent/{key}", found[key], iteration)
                for channel, value in enumerate(found["channel_std"]):
                    writer.add_scalar(f"latent/std_channel_{channel}", value, iteration)

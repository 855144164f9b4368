"""Codebook-range latent normalisation, so ``LatentDiffusionInferer`` can train and sample on VQ-GAN latents.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together".

Medical Diffusion trains the DDPM on the encoder's *unquantized* output, min-max mapped to about [-1, 1] with
the smallest and largest value of the trained codebook (the codebook pulls the encoder outputs into its range).
Samples are mapped back, snapped to their nearest codes and decoded. ``LatentDiffusionInferer`` only multiplies
by ``scale_factor``, so this affine map lives in an autoencoder wrapper it calls like any other
(``encode_stage_2_inputs`` / ``decode_stage_2_outputs``); use it with ``scale_factor=1``.

Codebook-range latents are far from the unit variance a noise schedule is designed for (a standard deviation of
about 0.2 on the demo's VQ-GAN: every step's signal-to-noise ratio about 15 dB below the design). ``LatentScale``
optionally multiplies them by one factor computed from the training data, as the latent diffusion models of
Rombach et al. (CVPR 2022, Sec. 4.3.2 and Appendix G) scale theirs to unit variance; the factor is stored with the
diffusion checkpoint, so sampling needs nothing else. ``scaling="codebook_range"`` (factor 1) is the paper's.
"""

from __future__ import annotations

import math
import numbers
import os

import torch
from monai.networks.nets import VQVAE
from torch import nn

from common.checkpoints import load_state, read_checkpoint

__all__ = ["LATENT_SCALINGS", "CodebookRangeAutoencoder", "LatentScale"]

LATENT_SCALINGS = ("codebook_range", "unit_variance")


class LatentScale(nn.Module):
    """The factor codebook-range latents are multiplied by before the diffusion model sees them.

    ``"codebook_range"``: 1, the paper's latents as they are. ``"unit_variance"``: ``target_std`` / (their standard
    deviation over the training data), set once by ``fit`` before training (``common.handlers.LatentStatistics`` does
    it) and saved in the diffusion checkpoint under ``latent_scale``. Which scaling a checkpoint was trained with is
    kept beside it (``model_settings``, ``common.checkpoints.ModelSettings``), which refuses a model configured
    otherwise.

    Args:
        scaling: ``"codebook_range"`` (the paper's) or ``"unit_variance"``.
        target_std: the standard deviation ``"unit_variance"`` gives the latents: 1 (unit variance, Rombach et al.) by
            default; between the codebook-range latents' own (about 0.15 to 0.2) and 1, every timestep's
            signal-to-noise ratio moves only part of the way to the schedule's design (not in the papers). Used by
            ``fit`` only: sampling reads the fitted factor from the checkpoint.
    """

    def __init__(self, scaling: str = "codebook_range", target_std: float = 1.0) -> None:
        super().__init__()
        if scaling not in LATENT_SCALINGS:
            raise ValueError(f"latent scaling must be one of {LATENT_SCALINGS}, got {scaling!r}.")
        if isinstance(target_std, bool) or not isinstance(target_std, numbers.Real) or not 0 < target_std < math.inf:
            raise ValueError(f"the latents' target standard deviation must be a positive number, got {target_std!r}.")
        if scaling == "codebook_range" and target_std != 1.0:
            raise ValueError(
                f"a target standard deviation ({target_std}) scales latents only with latent_scaling 'unit_variance'; "
                "'codebook_range' (the paper's) keeps them as they are."
            )
        self.scaling = scaling
        self.target_std = float(target_std)
        self.register_buffer("value", torch.tensor(float("nan") if scaling == "unit_variance" else 1.0))

    @property
    def fitted(self) -> bool:
        """Whether the factor is known (always for ``codebook_range``)."""
        return bool(torch.isfinite(self.value))

    def fit(self, std: float) -> None:
        """Set the factor from the standard deviation of the training latents (no-op for ``codebook_range``)."""
        if self.scaling != "unit_variance":
            return
        if not math.isfinite(std) or std <= 0:
            raise ValueError(f"cannot scale latents of standard deviation {std} to standard deviation {self.target_std}.")
        self.value.fill_(self.target_std / std)

    def factor(self) -> torch.Tensor:
        """The factor, or a clear error if a ``unit_variance`` scale was never fitted nor loaded."""
        if not self.fitted:
            raise RuntimeError(
                "the latent scale (latent_scaling 'unit_variance') is not set: it is computed from the training data "
                "when diffusion training starts and stored in the diffusion checkpoint under 'latent_scale'."
            )
        return self.value

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, scaling: str = "codebook_range") -> LatentScale:
        """The scale stored in a diffusion checkpoint (``latent_scale``). A checkpoint without one (trained before
        the option existed) is the paper's ``codebook_range``."""
        scale = cls(scaling)
        checkpoint = read_checkpoint(path)
        if "latent_scale" in checkpoint:
            load_state(scale, checkpoint["latent_scale"], path, "latent_scale")
        elif scaling != "codebook_range":
            raise ValueError(
                f"checkpoint {path} holds no latent scale: it was trained with latent_scaling 'codebook_range' "
                f"(the paper's), not {scaling!r}; set latent_scaling to 'codebook_range'."
            )
        if not scale.fitted:
            raise ValueError(f"checkpoint {path} holds a latent scale that was never set.")
        return scale


class CodebookRangeAutoencoder(nn.Module):
    """Wrap a trained VQ-GAN (a MONAI ``VQVAE``) to expose codebook-range normalised latents.

    The wrapped autoencoder is frozen and kept in eval mode whatever ``train()`` is called with, and the
    nearest-code search used to decode never touches the codebook, so neither training a diffusion model nor
    sampling can alter the VQ-GAN.

    Args:
        autoencoder: the trained VQ-GAN.
        min_range: smallest codebook range accepted; a narrower codebook cannot normalise latents.
        latent_scale: the factor the normalised latents are multiplied by (``LatentScale``); None: 1, the paper's.
    """

    def __init__(self, autoencoder: VQVAE, min_range: float = 1e-6, latent_scale: LatentScale | None = None) -> None:
        super().__init__()
        if not isinstance(autoencoder, VQVAE):
            raise TypeError(f"autoencoder must be a monai.networks.nets.VQVAE, got {type(autoencoder).__name__}.")
        if latent_scale is not None and not isinstance(latent_scale, LatentScale):
            raise TypeError(f"latent_scale must be a LatentScale or None, got {type(latent_scale).__name__}.")
        self.autoencoder = autoencoder
        self.min_range = min_range
        self.latent_scale = (LatentScale() if latent_scale is None else latent_scale).to(next(autoencoder.parameters()).device)
        self.autoencoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> CodebookRangeAutoencoder:
        """Always eval: an EMA codebook in train mode would update itself while decoding."""
        return super().train(False)

    def codebook_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global minimum and maximum of the codebook weights."""
        codes = self.autoencoder.quantizer.quantizer.embedding.weight
        low, high = codes.min(), codes.max()
        if not torch.isfinite(low) or not torch.isfinite(high) or float(high - low) < self.min_range:
            raise ValueError(
                f"the VQ-GAN codebook is degenerate (min {float(low):.6g}, max {float(high):.6g}): "
                "latents cannot be normalised with its range; was the autoencoder trained and its weights loaded?"
            )
        return low, high

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Map encoder outputs to about [-1, 1] with the codebook range."""
        low, high = self.codebook_range()
        return 2 * (z - low) / (high - low) - 1

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize``."""
        low, high = self.codebook_range()
        return (latent + 1) / 2 * (high - low) + low

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """The index (B, spatial...) of the nearest code of every latent vector of ``z`` (B, C, spatial...)."""
        quantizer = self.autoencoder.quantizer.quantizer
        if hasattr(quantizer, "search"):
            flat = z.movedim(1, -1).reshape(-1, z.shape[1])
            return quantizer.search(flat).view(z.shape[0], *z.shape[2:])
        return quantizer.quantize(z)[2]  # a stock EMAQuantizer: its quantize() only reads the codebook

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Replace every latent vector of ``z`` (B, C, spatial...) by its nearest code, without updating codes."""
        return self.autoencoder.quantizer.quantizer.embed(self.nearest_codes(z)).to(z.dtype)

    def codes(self) -> torch.Tensor:
        """The codebook (K, C) in the diffusion model's space: normalised with the codebook range and scaled."""
        return self.normalize(self.autoencoder.quantizer.quantizer.embedding.weight) * self.latent_scale.factor()

    def code_indices(self, latent: torch.Tensor) -> torch.Tensor:
        """The index (B, spatial...) of the code nearest to every voxel of diffusion-space ``latent`` (B, C, ...):
        the code the decoder would read there."""
        return self.nearest_codes(self.denormalize(latent / self.latent_scale.factor()))

    def snap_to_codes(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion-space ``latent`` with every voxel replaced by its nearest code (``codes``), and the codes' indices."""
        indices = self.code_indices(latent)
        return self.codes()[indices].movedim(-1, 1).to(latent.dtype), indices

    def codebook_range_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> unquantized latents normalised with the codebook range, before ``latent_scale``."""
        return self.normalize(self.autoencoder.encode(x))

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised (and scaled) unquantized latents, the diffusion model's training data."""
        return self.stage_2_latents(self.autoencoder.encode(x))

    def stage_2_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The VQ-GAN encoder's outputs -> normalised (and scaled) latents, as ``encode_stage_2_inputs`` gives them
        (for encoder outputs kept from an earlier batch: ``common.engines.LatentCache``)."""
        return self.normalize(z) * self.latent_scale.factor()

    def decode_stage_2_outputs(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised (and scaled) latents, e.g. diffusion samples -> nearest codes -> decoded images."""
        return self.autoencoder.decode(self.quantize(self.denormalize(latent / self.latent_scale.factor())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round trip of images through the normalised latent space."""
        return self.decode_stage_2_outputs(self.encode_stage_2_inputs(x))

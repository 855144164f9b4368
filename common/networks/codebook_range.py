"""Codebook-range latent normalisation, so ``LatentDiffusionInferer`` can train and sample on VQ-GAN latents.

Khader et al., Sci Rep 2023, Sec. 2.3 "Putting It All Together".

Medical Diffusion trains the DDPM on the encoder's *unquantized* output, min-max mapped to about [-1, 1] with
the smallest and largest value of the trained codebook (the codebook pulls the encoder outputs into its range).
Samples are mapped back, snapped to their nearest codes and decoded. ``LatentDiffusionInferer`` only multiplies
by ``scale_factor``, so this affine map lives in an autoencoder wrapper it calls like any other
(``encode_stage_2_inputs`` / ``decode_stage_2_outputs``); use it with ``scale_factor=1``.
"""

from __future__ import annotations

import torch
from monai.networks.nets import VQVAE
from torch import nn

__all__ = ["CodebookRangeAutoencoder"]


class CodebookRangeAutoencoder(nn.Module):
    """Wrap a trained VQ-GAN (a MONAI ``VQVAE``) to expose codebook-range normalised latents.

    The wrapped autoencoder is frozen and kept in eval mode whatever ``train()`` is called with, and the
    nearest-code search used to decode never touches the codebook, so neither training a diffusion model nor
    sampling can alter the VQ-GAN.

    Args:
        autoencoder: the trained VQ-GAN.
        min_range: smallest codebook range accepted; a narrower codebook cannot normalise latents.
    """

    def __init__(self, autoencoder: VQVAE, min_range: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(autoencoder, VQVAE):
            raise TypeError(f"autoencoder must be a monai.networks.nets.VQVAE, got {type(autoencoder).__name__}.")
        self.autoencoder = autoencoder
        self.min_range = min_range
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

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Replace every latent vector of ``z`` (B, C, spatial...) by its nearest code, without updating codes."""
        quantizer = self.autoencoder.quantizer.quantizer
        if hasattr(quantizer, "search"):
            flat = z.movedim(1, -1).reshape(-1, z.shape[1])
            indices = quantizer.search(flat).view(z.shape[0], *z.shape[2:])
        else:  # a stock EMAQuantizer: its quantize() only reads the codebook
            indices = quantizer.quantize(z)[2]
        return quantizer.embed(indices).to(z.dtype)

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised unquantized latents, the diffusion model's training data."""
        return self.normalize(self.autoencoder.encode(x))

    def decode_stage_2_outputs(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latents (e.g. diffusion samples) -> nearest codes -> decoded images."""
        return self.autoencoder.decode(self.quantize(self.denormalize(latent)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round trip of images through the normalised latent space."""
        return self.decode_stage_2_outputs(self.encode_stage_2_inputs(x))

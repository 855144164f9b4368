"""The Medical Diffusion VQ-GAN generator: MONAI's ``VQVAE`` laid out like the paper's, with our codebook.

Khader et al., Sci Rep 2023, Sec. 2.3 "VQ-GAN" (a 3D VQ-GAN after Esser et al. and Ge et al.) and
Supplementary Table 1 (compression 2 or 4, 16384 codes of 8 channels).

The paper's encoder is a k3 convolution to 16 channels, then per halving of the resolution a strided k4 s2
convolution that doubles the channels plus a residual block; the decoder mirrors it with transposed
convolutions. ``VQVAE`` expresses this with a stride-1 k3 first level followed by one k4 s2 level per halving.
What ``VQVAE`` cannot express, and so differs from the paper: no GroupNorm (``VQVAE`` has no normalisation
layers), the residual unit is conv-act-conv and ends in ReLU, zero instead of replicate padding, and there is
one residual unit at the first (full-resolution) level too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers.vector_quantizer import VectorQuantizer
from monai.networks.nets import VQVAE

from .quantizer import CodebookQuantizer

__all__ = ["VQGAN"]


class VQGAN(VQVAE):
    """3D VQ-GAN autoencoder of Medical Diffusion on ``monai.networks.nets.VQVAE``.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels.
        out_channels: reconstructed image channels.
        downsample_factor: compression per spatial axis, a power of two (2 for brain 64^3, 4 for the others).
        base_channels: channels of the first level; each halving doubles them (the paper: 16).
        num_res_layers: residual units per level.
        num_embeddings: codebook size (the paper: 16384).
        embedding_dim: code length, the latent channels (the paper: 8).
        commitment_cost: commitment loss weight (the paper: 0.25).
        decay: EMA decay of the codebook (the paper: 0.99).
        dead_code_threshold: see ``CodebookQuantizer``.
        act: activation of the encoder and decoder (the paper: SiLU, called SWISH in MONAI).
        output_act: activation of the decoder's output; None (the paper) leaves it linear, "TANH" bounds it to the
            images' range [-1, 1], so a background at the minimum is reproduced at the minimum rather than around
            it (an option beyond the paper: with few training iterations it sharpens the intensity histogram).
        use_checkpointing: gradient checkpointing of encoder and decoder to save memory.
        max_distances: memory bound of the torch nearest-code search, see ``CodebookQuantizer``.
        search_backend: "auto", "faiss" or "torch" nearest-code search, see ``CodebookQuantizer``.
        ddp_sync: keep the codebook identical across ``torch.distributed`` ranks (set False for TorchScript).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        downsample_factor: int = 4,
        base_channels: int = 16,
        num_res_layers: int = 1,
        num_embeddings: int = 16384,
        embedding_dim: int = 8,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        act: str = "SWISH",
        output_act: str | None = None,
        use_checkpointing: bool = False,
        max_distances: int = 2**20,
        search_backend: str = "auto",
        ddp_sync: bool = True,
    ) -> None:
        if downsample_factor < 1 or downsample_factor & (downsample_factor - 1):
            raise ValueError(f"downsample_factor must be a power of two, got {downsample_factor}.")
        halvings = int(math.log2(downsample_factor))
        channels = tuple(base_channels * 2**level for level in range(halvings + 1))
        stem_down, stem_up = (1, 3, 1, 1), (1, 3, 1, 1, 0)
        halve, double = (2, 4, 1, 1), (2, 4, 1, 1, 0)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            num_res_layers=num_res_layers,
            num_res_channels=channels,
            downsample_parameters=(stem_down,) + (halve,) * halvings,
            upsample_parameters=(double,) * halvings + (stem_up,),
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            act=act,
            output_act=output_act,
            use_checkpointing=use_checkpointing,
            ddp_sync=ddp_sync,
        )
        self.downsample_factor = downsample_factor
        self.quantizer = VectorQuantizer(
            quantizer=CodebookQuantizer(
                spatial_dims=spatial_dims,
                num_embeddings=num_embeddings,
                embedding_dim=embedding_dim,
                commitment_cost=commitment_cost,
                decay=decay,
                dead_code_threshold=dead_code_threshold,
                max_distances=max_distances,
                search_backend=search_backend,
                ddp_sync=ddp_sync,
            )
        )

    def forward(
        self, images: torch.Tensor, latent_downsample: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction and commitment loss, as ``VQVAE``; with ``latent_downsample`` > 1 also the decoding of the
        quantised latent average-pooled by that factor, which the scale-equivariance term of ``VQGANLoss`` compares
        with the image pooled alike (Skorokhodov et al., "Improving the Diffusability of Autoencoders", ICML 2025).
        It is computed here, in the one forward pass, so that ``DistributedDataParallel`` sees every use."""
        latent, commitment = self.quantize(self.encode(images))
        reconstruction = self.decode(latent)
        if latent_downsample == 1:
            return reconstruction, commitment
        if latent_downsample < 1 or any(size % latent_downsample for size in latent.shape[2:]):
            raise ValueError(
                f"latent_downsample must be >= 1 and divide every axis of the latent {tuple(latent.shape[2:])}, got {latent_downsample}."
            )
        pool = F.avg_pool3d if latent.ndim == 5 else F.avg_pool2d
        return reconstruction, commitment, self.decode(pool(latent, latent_downsample))

    @property
    def codebook(self) -> CodebookQuantizer:
        """The EMA codebook module (weights: ``codebook.embedding.weight``)."""
        return self.quantizer.quantizer

"""Which image sizes the networks can take, checked from the config before any data are read.

Each halving in the VQ-GAN's encoder (``downsample_factor``) and in the denoiser's levels needs an even size, so
an ``image_size`` that is not a multiple of their product fails at the first training step with a shape mismatch
deep in a skip connection (``The size of tensor a (16) must match the size of tensor b (17)``). The factor per
axis: the VQ-GAN's ``downsample_factor`` on every axis; ``DepthAttentionUNet`` halves H and W once per level after
the first (Khader et al. keep the depth, which its attention reads whole) and divides every axis by its
``patch_size``; MONAI's ``DiffusionModelUNet`` (Med-DDPM) halves every axis once per level after the first.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .depth_attention_unet import DepthAttentionUNet

__all__ = ["check_image_size", "size_multiple"]


def _halvings(network: nn.Module | None) -> tuple[int, int, int]:
    """The factor by which ``network`` divides each axis of its input (1 where it keeps it)."""
    if network is None:
        return (1, 1, 1)
    if isinstance(network, DepthAttentionUNet):
        return (network.spatial_factor, network.spatial_factor, network.patch_size)  # depth: only its patches
    if hasattr(network, "downsample_factor"):  # the VQ-GAN
        return (int(network.downsample_factor),) * 3
    if hasattr(network, "block_out_channels"):  # MONAI's DiffusionModelUNet
        return (2 ** (len(network.block_out_channels) - 1),) * 3
    raise TypeError(f"cannot tell which sizes {type(network).__name__} takes.")


def size_multiple(autoencoder: nn.Module | None, denoiser: nn.Module | None = None) -> tuple[int, int, int]:
    """The multiple each axis of ``image_size`` must be of: the autoencoder's factor times the denoiser's, which
    sees the autoencoder's latents."""
    return tuple(a * d for a, d in zip(_halvings(autoencoder), _halvings(denoiser)))


def check_image_size(
    image_size: Sequence[int], autoencoder: nn.Module | None, denoiser: nn.Module | None = None, name: str = "image_size"
) -> None:
    """``ValueError`` naming the id ``name``, its value, the multiple each axis needs and the nearest valid sizes,
    unless ``autoencoder`` then ``denoiser`` can take volumes of ``image_size`` (H, W, D)."""
    size = [int(s) for s in image_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"{name} must be three positive sizes (H, W, D), got {list(image_size)}.")
    multiple = size_multiple(autoencoder, denoiser)
    if all(s % m == 0 for s, m in zip(size, multiple)):
        return
    nearest = [max(m, round(s / m) * m) for s, m in zip(size, multiple)]
    larger = [-(-s // m) * m for s, m in zip(size, multiple)]
    why = [f"{type(net).__name__} divides H, W, D by {list(_halvings(net))}" for net in (autoencoder, denoiser) if net is not None]
    raise ValueError(
        f"{name} {size} cannot be taken by the networks: each axis must be a multiple of {list(multiple)} "
        f"({'; '.join(why)}). Nearest valid {name}: {nearest}" + (f", or {larger} not to lose voxels." if larger != nearest else ".")
    )

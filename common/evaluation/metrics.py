"""Metrics that tell whether synthetic volumes are realistic, diverse and consistent from slice to slice.

Diversity is the paper's measure: mean MS-SSIM over pairs of samples (Khader et al., Sci Rep 2023, Sec. 3.4),
here in 3D; FID on MedicalNet features (Chen et al., Med3D) as the Med-DDPM paper reports it (Dorjsembe et al.,
Sec. III-C). All take volumes as (N, 1, H, W, D) tensors in the models' range [-1, 1]. Each answer means most next to the same
number for real volumes: every function that compares sets also has a real-versus-real reference. The
definitions, scales and caveats are in docs/evaluation.md.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics.fid import get_fid_score
from monai.metrics.mmd import compute_mmd
from monai.metrics.regression import compute_ms_ssim, compute_ssim_and_cs

from common.checkpoints import CheckpointError, load_state, read_checkpoint

__all__ = [
    "MS_SSIM_KERNEL",
    "MS_SSIM_WEIGHTS",
    "as_batch",
    "check_volumes",
    "fid",
    "high_frequency_share",
    "histogram_distances",
    "load_medicalnet",
    "mean_pairwise_ms_ssim",
    "medicalnet_features",
    "mmd",
    "ms_ssim",
    "power_spectrum",
    "psnr",
    "slice_consistency",
    "split_halves",
    "ssim",
]

DATA_RANGE = 2.0  # volumes are in [-1, 1]
# 3D MS-SSIM at three scales, the first three of the standard 2D weights renormalised, a 7-voxel Gaussian (sigma
# 1.5): the coarsest scale of 256x256x32 keeps 8 slices, so 64^3, 128^3, 256x256x32 (and the demo's 32^3) all fit.
MS_SSIM_WEIGHTS = tuple(float(w) for w in np.array([0.0448, 0.2856, 0.3001]) / sum([0.0448, 0.2856, 0.3001]))
MS_SSIM_KERNEL = 7


def check_volumes(volumes: torch.Tensor, name: str) -> None:
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"{name} must be (N, 1, H, W, D) volumes, got shape {tuple(volumes.shape)}.")
    if not torch.isfinite(volumes).all():
        raise ValueError(f"{name} contain NaN or infinite voxels.")


def _nonnegative(volumes: torch.Tensor) -> torch.Tensor:
    """Volumes in [-1, 1] moved to [0, 2] for SSIM: its luminance term, (2 mx my + c) / (mx^2 + my^2 + c), assumes
    non-negative intensities; with windows of mean intensity of both signs (a brain against a -1 background) it
    turns negative and drives MS-SSIM to 0 for two similar volumes. The data range stays 2."""
    return volumes.float() + 1.0


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """3D MS-SSIM of each pair ``(x[i], y[i])`` (MONAI's, at this module's scales and kernel); 1 for identical volumes."""
    smallest = (len(MS_SSIM_WEIGHTS) - 1) ** 2 * (MS_SSIM_KERNEL - 1) + 1
    if min(x.shape[2:]) < smallest:
        raise ValueError(f"MS-SSIM needs volumes of at least {smallest} voxels per axis, got {tuple(x.shape[2:])}.")
    return compute_ms_ssim(
        _nonnegative(x), _nonnegative(y), spatial_dims=3, data_range=DATA_RANGE, kernel_size=MS_SSIM_KERNEL, weights=MS_SSIM_WEIGHTS
    )


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """3D SSIM of each pair (7-voxel Gaussian window), one value per pair."""
    value, _ = compute_ssim_and_cs(
        _nonnegative(x), _nonnegative(y), spatial_dims=3, data_range=DATA_RANGE, kernel_size=(7, 7, 7), kernel_sigma=(1.5,) * 3
    )
    return value.flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each pair, for the range [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(1e-12))


def mean_pairwise_ms_ssim(volumes: torch.Tensor, max_pairs: int = 100, seed: int = 0) -> tuple[float, int]:
    """Mean MS-SSIM over pairs of different volumes of a set (all pairs, or ``max_pairs`` random ones): the
    paper's diversity measure. Lower is more diverse; compare with the same number for real volumes."""
    check_volumes(volumes, "volumes")
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    if not pairs:
        raise ValueError("diversity needs at least two volumes.")
    if len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    values = [float(ms_ssim(volumes[[i]], volumes[[j]])) for i, j in pairs]
    return float(np.mean(values)), len(pairs)


def histogram_distances(x: torch.Tensor, y: torch.Tensor, bins: int = 100) -> dict[str, float]:
    """Distances between the voxel intensity histograms of two sets on [-1, 1]: Wasserstein-1 (in intensity
    units) and Jensen-Shannon divergence (in bits, 0 to 1)."""
    edges = torch.linspace(-1, 1, bins + 1)
    p = torch.histc(x.float().clamp(-1, 1), bins=bins, min=-1, max=1).double()
    q = torch.histc(y.float().clamp(-1, 1), bins=bins, min=-1, max=1).double()
    p, q = p / p.sum(), q / q.sum()
    wasserstein = float((p.cumsum(0) - q.cumsum(0)).abs().sum() * (edges[1] - edges[0]))
    middle = (p + q) / 2

    def kl(a: torch.Tensor, b: torch.Tensor) -> float:
        keep = a > 0
        return float((a[keep] * torch.log2(a[keep] / b[keep])).sum())

    return {"wasserstein": wasserstein, "jensen_shannon": (kl(p, middle) + kl(q, middle)) / 2}


def mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """MONAI's unbiased squared MMD between two sets with a linear kernel on the voxels, per voxel (the kernel is
    the mean voxel product), using as many volumes of each as the smaller has (at least 2). About 0 for two sets
    from one distribution (it can be slightly negative); it grows with the difference of the mean volumes."""
    count = min(len(x), len(y))
    if count < 2:
        raise ValueError("MMD needs at least two volumes in each set.")
    scale = float(np.prod(x.shape[1:])) ** -0.5
    return float(compute_mmd(y[:count].double(), x[:count].double(), y_mapping=lambda v: v * scale))


def slice_consistency(volumes: torch.Tensor) -> float:
    """Mean 2D SSIM between adjacent depth slices, over all slices of all volumes: how smoothly a volume
    continues from one slice to the next. Compare with the same number for real volumes."""
    check_volumes(volumes, "volumes")
    values = []
    for volume in volumes.float():
        slices = _nonnegative(volume[0].permute(2, 0, 1).unsqueeze(1))  # (D, 1, H, W)
        value, _ = compute_ssim_and_cs(slices[:-1], slices[1:], spatial_dims=2, data_range=DATA_RANGE, kernel_size=(7, 7), kernel_sigma=(1.5, 1.5))
        values.append(value.flatten(1).mean(1))
    return float(torch.cat(values).mean())


def high_frequency_share(volumes: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share of each volume's spectral power (its mean removed) at spatial frequencies above ``cutoff`` cycles per
    voxel (at most about 0.87, a corner of the 3D spectrum): how much fine detail, edges and texture a volume holds.
    Blur lowers it, noise raises it; compare with the same number for real volumes. One value per volume."""
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per voxel, got {cutoff}.")
    power, frequency = power_spectrum(volumes)
    return (power[:, frequency > cutoff].sum(1) / power.flatten(1).sum(1).clamp_min(1e-30)).float()


def power_spectrum(volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each volume's spectral power, its mean removed (3D FFT, float64: (N, H, W, D)), and the radial spatial
    frequency of every bin in cycles per voxel ((H, W, D)): what ``high_frequency_share`` sums above its cutoff."""
    check_volumes(volumes, "volumes")
    centred = volumes[:, 0].double() - volumes[:, 0].double().mean(dim=(1, 2, 3), keepdim=True)
    power = torch.fft.fftn(centred, dim=(1, 2, 3)).abs().square()
    axes = torch.meshgrid(*(torch.fft.fftfreq(n, dtype=torch.float64) for n in centred.shape[1:]), indexing="ij")
    return power, sum(axis.square() for axis in axes).sqrt()


def load_medicalnet(weights_path: str | os.PathLike, depth: int = 10) -> torch.nn.Module:
    """A MedicalNet 3D ResNet feature extractor (MONAI's ``resnet``, shortcut B) with weights from a local file.

    MedicalNet releases ``resnet_<depth>*.pth`` files holding ``{"state_dict": {"module.conv1.weight": ...}}``;
    they are read with ``weights_only=True`` and the segmentation head is dropped. Nothing is downloaded.
    """
    from monai.networks.nets import resnet


    if depth not in (10, 18, 34, 50):
        raise ValueError(f"MedicalNet depth must be 10, 18, 34 or 50, got {depth}.")
    network = getattr(resnet, f"resnet{depth}")(
        spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False
    )
    checkpoint = read_checkpoint(weights_path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {weights_path} is not a MedicalNet state dict.")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("conv_seg")}
    load_state(network, state, weights_path, f"MedicalNet resnet{depth}")
    return network.eval()


@torch.no_grad()
def medicalnet_features(network: torch.nn.Module, volumes: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """(N, features) of volumes z-scored per volume, as MedicalNet was trained."""
    features = []
    device = next(network.parameters()).device
    for start in range(0, len(volumes), batch_size):
        batch = volumes[start : start + batch_size].float().to(device)
        mean = batch.flatten(1).mean(1).view(-1, 1, 1, 1, 1)
        std = batch.flatten(1).std(1).view(-1, 1, 1, 1, 1).clamp_min(1e-6)
        features.append(network((batch - mean) / std).flatten(1).cpu())
    return torch.cat(features)


def fid(x_features: torch.Tensor, y_features: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors (MONAI's ``FIDMetric`` arithmetic)."""
    if min(len(x_features), len(y_features)) < 2:
        raise ValueError("FID needs at least two volumes in each set.")
    return float(get_fid_score(x_features, y_features))


def split_halves(volumes: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random, disjoint halves of a set: the real-versus-real reference of the set-to-set distances."""
    order = torch.randperm(len(volumes), generator=torch.Generator().manual_seed(seed))
    half = len(volumes) // 2
    return volumes[order[:half]], volumes[order[half : 2 * half]]


def as_batch(volumes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (1, H, W, D) or (H, W, D) volumes into (N, 1, H, W, D) float32."""
    return torch.stack([torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(1, *np.asarray(v).shape[-3:]) for v in volumes])

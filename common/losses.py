"""The Medical Diffusion VQ-GAN objective, built from MONAI's losses and discriminators.

Generator: ``l1_weight * L1 + perceptual_weight * LPIPS(one depth slice) + commitment``, and from
``adversarial_start`` on, the generator hinge losses -mean(D(fake)) of a 2D discriminator on that slice and of a
3D discriminator on the volume, plus ``feature_matching_weight`` times the L1 distance between their intermediate
features on real and reconstructed input. Discriminators: hinge loss on real versus reconstructed slice / volume.
Beyond the paper, as options: (``scale_equivariance_weight`` > 0) the L1 distance between the decoding of the latent
average-pooled by 2 or 4 and the image pooled alike, which moves the latent's power toward coarse frequencies; and
(``adaptive_adversarial_weight``) the adversarial terms scaled to the reconstruction's gradient at the decoder's last
layer, as in Taming Transformers (Esser et al., CVPR 2021, Eq. 7).

Khader et al., Sci Rep 2023, Sec. 2.3 "VQ-GAN": a slice-wise 2D and a whole-volume 3D discriminator with
feature matching (after Ge et al.), reconstruction, perceptual and commitment losses.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import PerceptualLoss
from torch import nn

__all__ = ["SCALE_FACTORS", "VQGANLoss", "build_perceptual_loss", "check_scale_equivariance", "depth_slices", "feature_matching_loss",
           "adversarial_balance", "hinge_discriminator_loss", "scale_factors"]

SCALE_FACTORS = (2, 4)  # the latent poolings of the scale-equivariance term (Skorokhodov et al. pool by 2 or 4)

# file names torchvision gives the ImageNet trunks that LPIPS loads (torch hub cache layout: <dir>/checkpoints/)
LPIPS_TRUNK_WEIGHTS = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def build_perceptual_loss(network_type: str = "alex", cache_dir: str | None = None) -> PerceptualLoss:
    """2D LPIPS perceptual loss (``monai.losses.PerceptualLoss``) that fails with a plain message offline.

    LPIPS needs the ``lpips`` and ``torchvision`` packages and torchvision's ImageNet weights of the trunk,
    which torchvision downloads into the torch hub cache on first use. On a machine without internet, copy
    the file (e.g. ``alexnet-owt-7be5be79.pth``) into ``<cache_dir>/checkpoints/`` and pass ``cache_dir``.
    To train without perceptual loss, set the loss's ``perceptual_weight`` to 0 instead of calling this.
    """
    if network_type not in LPIPS_TRUNK_WEIGHTS:
        raise ValueError(f"network_type must be one of {sorted(LPIPS_TRUNK_WEIGHTS)}, got {network_type!r}.")
    missing = [pkg for pkg in ("lpips", "torchvision") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise ImportError(
            f"the perceptual (LPIPS) loss needs the packages {', '.join(missing)}: "
            "`pip install lpips torchvision`, or train without it by setting perceptual_weight to 0."
        )
    hub_dir = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir())
    weights = hub_dir / "checkpoints" / LPIPS_TRUNK_WEIGHTS[network_type]
    if cache_dir and not weights.is_file():
        raise FileNotFoundError(
            f"LPIPS '{network_type}' needs torchvision's ImageNet weights at {weights}, which does not exist. "
            "Copy the file there from a machine with internet, or set perceptual_weight to 0."
        )
    try:
        return PerceptualLoss(spatial_dims=2, network_type=network_type, cache_dir=cache_dir)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise RuntimeError(
            f"could not load the LPIPS '{network_type}' weights (expected at {weights}; downloading failed: {error}). "
            "Copy the file there and pass its folder as the perceptual cache_dir, or set perceptual_weight to 0."
        ) from error


def depth_slices(volumes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Slice ``index[b]`` along depth of every volume b: (B, C, H, W, D) -> (B, C, H, W)."""
    b, c, h, w, _ = volumes.shape
    gather_index = index.view(b, 1, 1, 1, 1).expand(b, c, h, w, 1)
    return volumes.gather(4, gather_index).squeeze(4)


def feature_matching_loss(fake_features: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 distance between a discriminator's intermediate features (its final logits excluded)."""
    pairs = list(zip(fake_features[:-1], real_features[:-1]))
    if not pairs:
        return fake_features[-1].new_zeros(())
    return torch.stack([F.l1_loss(fake, real.detach()) for fake, real in pairs]).mean()


def scale_factors(latent_shape: Sequence[int]) -> list[int]:
    """The factors of ``SCALE_FACTORS`` that divide every axis of a latent of spatial size ``latent_shape``;
    ``ValueError`` if none does."""
    factors = [f for f in SCALE_FACTORS if all(int(size) % f == 0 for size in latent_shape)]
    if not factors:
        raise ValueError(
            f"scale_equivariance_weight > 0 pools the latent by {' or '.join(map(str, SCALE_FACTORS))}, which divides no "
            f"latent of spatial size {tuple(int(s) for s in latent_shape)}; use an image_size whose latent (image_size "
            "divided by the compression) has even sizes, or set scale_equivariance_weight to 0."
        )
    return factors


def check_scale_equivariance(weight: float, image_size: Sequence[int], downsample_factor: int) -> None:
    """Before any data are read (the bundles' ``initialize``): ``ValueError`` if the scale-equivariance term is on and
    the latent of ``image_size`` at compression ``downsample_factor`` cannot be pooled by any of ``SCALE_FACTORS``."""
    if weight:
        scale_factors([int(s) // int(downsample_factor) for s in image_size])


def adversarial_balance(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """The factor that gives ``adversarial_loss`` the gradient norm of ``reconstruction_loss`` at ``last_layer`` (the
    decoder's last weight), clamped to [0, 1e4] and detached: Esser et al., "Taming Transformers for High-Resolution
    Image Synthesis", CVPR 2021, Eq. 7. A generator hinge term is unbounded, so with a fixed weight its gradient can
    outgrow a small reconstruction loss's by orders of magnitude and the gradient clipping then leaves the
    reconstruction nothing."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on its raw logits, 0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))),
    as the paper's code trains both discriminators (after Taming Transformers, Esser et al., CVPR 2021; the hinge GAN
    of Lim and Ye, 2017). Not MONAI's ``PatchAdversarialLoss("hinge")``, which passes the logits through a tanh
    first: a discriminator whose logits pass about +-3 then gets no gradient, and its loss sticks at exactly 1 while
    the generator's -mean(D(fake)) on the raw logits goes on (``benchmarks/gan_hinge.md``)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def _discriminate(discriminator: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Run a patch discriminator; an input too small for its depth gets a message saying what to change."""
    try:
        return discriminator(x)
    except RuntimeError as error:
        if "Kernel size can't be greater than actual input size" not in str(error):
            raise
        layers = getattr(discriminator, "num_layers_d", "its")
        raise ValueError(
            f"input of spatial size {tuple(x.shape[2:])} is too small for a {x.ndim - 2}D patch discriminator with "
            f"{layers} layers (each halves the size); use a larger image_size or fewer num_layers_d."
        ) from error


class VQGANLoss(nn.Module):
    """Generator and discriminator objectives of the Medical Diffusion VQ-GAN.

    Args:
        image_discriminator: 2D ``PatchDiscriminator`` for one depth slice per volume.
        volume_discriminator: 3D ``PatchDiscriminator`` for the whole volume.
        perceptual_loss: 2D perceptual loss (see ``build_perceptual_loss``); required when
            ``perceptual_weight`` > 0, ignored otherwise.
        l1_weight: weight of the voxel-wise L1 reconstruction loss (the paper: 4).
        perceptual_weight: weight of the perceptual loss on the slice (the paper: 4; 0 switches it off).
        image_gan_weight: weight of the 2D discriminator's adversarial loss (the paper: 1).
        volume_gan_weight: weight of the 3D discriminator's adversarial loss (the paper: 1).
        feature_matching_weight: weight of the feature-matching loss (mean L1 over each discriminator's
            intermediate feature maps, summed over both discriminators). 16 matches the authors' code, which weights
            4 x (4 / (layers + 1)) x the sum over the layers + 1 feature maps.
        adversarial_start: iteration from which the adversarial and feature-matching terms count and the
            discriminators train (the paper: 10000).
        scale_equivariance_weight: weight of the scale-equivariance term (not in the paper: 0 switches it off):
            at each step the quantised latent is average-pooled by 2 or 4 (drawn among the factors that divide its
            size, from a generator of its own seeded by ``torch.initial_seed()``, so that the term leaves the data
            order alone), decoded as it is (not snapped to the codebook again), and compared by L1 with the image
            pooled by the same factor. A decoder that must turn a coarser latent into the coarser image moves the
            latent's power toward low frequencies, which a denoiser learns first (Skorokhodov et al., "Improving the
            Diffusability of Autoencoders", ICML 2025). Measured in ``benchmarks/convergence_64_scale_equivariance.md``
            (sharper 64^3 samples, no anatomy) and ``convergence_demo_scale_equivariance.md`` (no gain at 32^3; one
            training of two stuck at a constant output in its first steps).
        adaptive_adversarial_weight: not in the paper (False): multiply the two adversarial terms by
            ``adversarial_balance``, so that at weights 1 their gradient at the decoder's last layer is as large as
            the reconstruction terms' (Esser et al., CVPR 2021); ``image_gan_weight`` and ``volume_gan_weight`` then
            weigh them relative to the reconstruction. ``generator_loss`` needs ``last_layer`` for it.
    """

    def __init__(
        self,
        image_discriminator: nn.Module,
        volume_discriminator: nn.Module,
        perceptual_loss: nn.Module | None = None,
        l1_weight: float = 4.0,
        perceptual_weight: float = 4.0,
        image_gan_weight: float = 1.0,
        volume_gan_weight: float = 1.0,
        feature_matching_weight: float = 16.0,
        adversarial_start: int = 10000,
        scale_equivariance_weight: float = 0.0,
        adaptive_adversarial_weight: bool = False,
    ) -> None:
        super().__init__()
        if perceptual_weight > 0 and perceptual_loss is None:
            raise ValueError(
                "perceptual_weight > 0 needs a perceptual_loss (see common.losses.build_perceptual_loss); "
                "set perceptual_weight to 0 to train without it."
            )
        weights = {"l1_weight": l1_weight, "perceptual_weight": perceptual_weight, "image_gan_weight": image_gan_weight,
                   "volume_gan_weight": volume_gan_weight, "feature_matching_weight": feature_matching_weight,
                   "scale_equivariance_weight": scale_equivariance_weight}
        for name, weight in weights.items():
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight}.")
        if adversarial_start < 0:
            raise ValueError(f"adversarial_start must be >= 0, got {adversarial_start}.")
        self.image_discriminator = image_discriminator
        self.volume_discriminator = volume_discriminator
        self.perceptual_loss = perceptual_loss if perceptual_weight > 0 else None
        self.l1_weight = l1_weight
        self.perceptual_weight = perceptual_weight
        self.image_gan_weight = image_gan_weight
        self.volume_gan_weight = volume_gan_weight
        self.feature_matching_weight = feature_matching_weight
        self.adversarial_start = adversarial_start
        self.scale_equivariance_weight = scale_equivariance_weight
        self.adaptive_adversarial_weight = bool(adaptive_adversarial_weight)
        self._factor_generator = torch.Generator().manual_seed(torch.initial_seed())

    def train(self, mode: bool = True) -> VQGANLoss:
        """Train mode for the discriminators only; the pretrained perceptual network always stays in eval mode
        (LPIPS has dropout in its heads)."""
        super().train(mode)
        if self.perceptual_loss is not None:
            self.perceptual_loss.eval()
        return self

    def adversarial_active(self, iteration: int) -> bool:
        """Whether the adversarial terms count at this (1-based) iteration."""
        return iteration > self.adversarial_start

    def scale_factor(self, latent_shape: Sequence[int]) -> int:
        """The factor by which this step pools the latent of spatial size ``latent_shape`` for the scale-equivariance
        term, drawn from ``SCALE_FACTORS`` among those that divide every axis; 1 when the term is off."""
        if not self.scale_equivariance_weight:
            return 1
        factors = scale_factors(latent_shape)
        return factors[int(torch.randint(len(factors), (), generator=self._factor_generator))]

    def generator_loss(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        commitment: torch.Tensor,
        slice_index: torch.Tensor,
        iteration: int,
        pooled_fake: torch.Tensor | None = None,
        last_layer: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of the autoencoder; ``"loss"`` is their weighted sum. ``pooled_fake``: the decoding of the
        pooled latent (``VQGAN.forward`` with ``latent_downsample``), needed when ``scale_equivariance_weight`` > 0.
        ``last_layer``: the decoder's last weight, needed when ``adaptive_adversarial_weight`` is on."""
        terms = {"l1": F.l1_loss(fake, real), "commitment": commitment}
        total = self.l1_weight * terms["l1"] + commitment
        if self.scale_equivariance_weight:
            if pooled_fake is None:
                raise ValueError("scale_equivariance_weight > 0 needs pooled_fake, the decoding of the pooled latent.")
            factor = real.shape[2] // pooled_fake.shape[2]
            if factor < 1 or any(s != p * factor for s, p in zip(real.shape[2:], pooled_fake.shape[2:])):
                raise ValueError(
                    f"pooled_fake of spatial size {tuple(pooled_fake.shape[2:])} is not the image's {tuple(real.shape[2:])} "
                    "divided by one factor on every axis."
                )
            pool = F.avg_pool3d if real.ndim == 5 else F.avg_pool2d
            terms["scale_equivariance"] = F.l1_loss(pooled_fake, pool(real, factor))
            total = total + self.scale_equivariance_weight * terms["scale_equivariance"]
        real_slice, fake_slice = depth_slices(real, slice_index), depth_slices(fake, slice_index)
        if self.perceptual_loss is not None:
            terms["perceptual"] = self.perceptual_loss(fake_slice.float(), real_slice.float())
            total = total + self.perceptual_weight * terms["perceptual"]
        if self.adversarial_active(iteration):
            # the generator step trains no discriminator weights: bypass a DistributedDataParallel wrapper, whose
            # gradient synchronisation would expect discriminator gradients
            image_d = getattr(self.image_discriminator, "module", self.image_discriminator)
            volume_d = getattr(self.volume_discriminator, "module", self.volume_discriminator)
            fake_image_out = _discriminate(image_d, fake_slice)
            fake_volume_out = _discriminate(volume_d, fake)
            with torch.no_grad():
                real_image_out = _discriminate(image_d, real_slice)
                real_volume_out = _discriminate(volume_d, real)
            # the generator side of the hinge GAN, as in the paper's code: -mean(D(fake))
            terms["image_gan"] = -fake_image_out[-1].mean()
            terms["volume_gan"] = -fake_volume_out[-1].mean()
            terms["feature_matching"] = feature_matching_loss(fake_image_out, real_image_out) + feature_matching_loss(
                fake_volume_out, real_volume_out
            )
            adversarial = self.image_gan_weight * terms["image_gan"] + self.volume_gan_weight * terms["volume_gan"]
            if self.adaptive_adversarial_weight:
                if last_layer is None:
                    raise ValueError("adaptive_adversarial_weight needs last_layer, the decoder's last weight.")
                terms["adversarial_balance"] = adversarial_balance(total, terms["image_gan"] + terms["volume_gan"], last_layer)
                adversarial = terms["adversarial_balance"] * adversarial
            total = total + adversarial + self.feature_matching_weight * terms["feature_matching"]
        terms["loss"] = total
        return terms

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, slice_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hinge losses of both discriminators on real versus reconstructed input; ``"loss"`` is their sum."""
        fake = fake.detach()
        real_slice, fake_slice = depth_slices(real, slice_index), depth_slices(fake, slice_index)
        image = self._hinge(self.image_discriminator, real_slice, fake_slice)
        volume = self._hinge(self.volume_discriminator, real, fake)
        return {
            "image_disc": image,
            "volume_disc": volume,
            "loss": self.image_gan_weight * image + self.volume_gan_weight * volume,
        }

    def _hinge(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real_logits = _discriminate(discriminator, real.contiguous())[-1]
        fake_logits = _discriminate(discriminator, fake.contiguous())[-1]
        return hinge_discriminator_loss(real_logits, fake_logits)

"""Encode each distinct training volume once: the frozen VQ-GAN's latents kept by the volume's content.

The diffusion stage encodes every batch with the frozen VQ-GAN (Khader et al., Sci Rep 2023, Sec. 2.3), and at the
paper's 64^3 brain size that encoding is about a sixth of a training iteration on a CPU
(``benchmarks/latent_cache_speed.md``). Its input is one of a few variants of each training volume (the preprocessed
volume, cached by MONAI's ``CacheDataset``, and its random flips), and the encoder is frozen and deterministic, so
its latent for an input that was seen before is known. Keyed by the input's bytes, the cache returns exactly what
encoding would (up to the floating-point order of a batched convolution), whatever augmentation came before: an
input never seen before is encoded and kept.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import torch

__all__ = ["LatentCache"]

logger = logging.getLogger(__name__)


class LatentCache:
    """Latents of volumes by their content, in host memory, up to ``max_mb`` mebibytes (0: nothing kept).

    ``encode(images, encoder)`` returns ``encoder(images)``, calling ``encoder`` only on the volumes of the batch
    not seen before. Once the cache is full, new volumes are encoded every time they come (logged once).
    """

    def __init__(self, max_mb: float = 0) -> None:
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not 0 <= max_mb < float("inf"):
            raise ValueError(f"latent_cache_mb must be a finite number of MiB >= 0 (0: encode every batch), got {max_mb!r}.")
        self.max_bytes = int(max_mb * 2**20)
        self.latents: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._full_logged = False

    @staticmethod
    def key(volume: torch.Tensor) -> bytes:
        """A digest of one volume's shape, dtype and values."""
        data = volume.detach().cpu().contiguous()
        digest = hashlib.blake2b(str((tuple(data.shape), data.dtype)).encode(), digest_size=20)
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.digest()

    def encode(self, images: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encoder(images)`` for a batch (B, ...), from the cache where a volume was encoded before."""
        if self.max_bytes == 0:
            return encoder(images)
        keys = [self.key(volume) for volume in images]
        missing = [i for i, k in enumerate(keys) if k not in self.latents]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, encoder(images[missing]))) if missing else {}
        for i, latent in fresh.items():
            self._keep(keys[i], latent)
        return torch.stack([fresh[i] if i in fresh else self.latents[k].to(images.device) for i, k in enumerate(keys)])

    def _keep(self, key: bytes, latent: torch.Tensor) -> None:
        size = latent.numel() * latent.element_size()
        if key in self.latents:  # the same volume twice in one batch
            return
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.info(f"latent cache full at {len(self.latents)} latents ({self.bytes / 2**20:.0f} MiB): volumes "
                            "not in it are encoded every time; raise latent_cache_mb to keep more.")
                self._full_logged = True
            return
        self.latents[key] = latent.detach().to("cpu", copy=True)
        self.bytes += size

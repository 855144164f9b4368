"""The latent cache (common.engines.LatentCache): each distinct input encoded once, the same latents as encoding every
batch, a memory bound that is kept, and clear errors for a bad bound."""

from __future__ import annotations

import pytest
import torch

from common.engines import LatentCache


class CountingEncoder:
    """An encoder that remembers how many volumes it was given."""

    def __init__(self) -> None:
        self.volumes = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.volumes += images.shape[0]
        return images[:, :, ::2, ::2, ::2] * 2 + 1


def test_each_distinct_volume_is_encoded_once_and_the_latents_are_what_encoding_gives():
    encoder, cache = CountingEncoder(), LatentCache(max_mb=1)
    volumes = torch.randn(3, 1, 8, 8, 4)
    first = cache.encode(volumes[[0, 1]], encoder)
    assert encoder.volumes == 2 and torch.equal(first, volumes[[0, 1], :, ::2, ::2, ::2] * 2 + 1)
    # a batch of a seen volume, its flip (new content) and another seen volume: only the flip is encoded
    batch = torch.stack([volumes[1], volumes[0].flip(1), volumes[0]])
    again = cache.encode(batch, encoder)
    assert encoder.volumes == 3 and (cache.hits, cache.misses) == (2, 3)
    assert torch.equal(again, CountingEncoder()(batch))
    # the same values in another dtype or shape are another input
    cache.encode(volumes[[0]].double(), encoder)
    cache.encode(volumes[[0]].reshape(1, 1, 8, 4, 8), encoder)
    assert encoder.volumes == 5


def test_a_full_cache_keeps_its_bound_and_still_returns_every_latent():
    encoder = CountingEncoder()
    one_latent_mb = 1 * 4 * 4 * 2 * 4 / 2**20  # (1, 4, 4, 2) float32
    cache = LatentCache(max_mb=2.5 * one_latent_mb)
    volumes = torch.randn(4, 1, 8, 8, 4)
    assert torch.equal(cache.encode(volumes, encoder), CountingEncoder()(volumes))
    assert len(cache.latents) == 2 and cache.bytes <= cache.max_bytes
    assert torch.equal(cache.encode(volumes, encoder), CountingEncoder()(volumes))
    assert encoder.volumes == 4 + 2  # the two kept are not encoded again, the two that did not fit are


def test_a_zero_bound_encodes_every_batch():
    encoder, cache = CountingEncoder(), LatentCache(0)
    volumes = torch.randn(2, 1, 8, 8, 4)
    cache.encode(volumes, encoder)
    cache.encode(volumes, encoder)
    assert encoder.volumes == 4 and not cache.latents


@pytest.mark.parametrize("bound", [-1, float("inf"), float("nan"), True, "1024"])
def test_a_bad_bound_is_refused_by_name(bound):
    with pytest.raises(ValueError, match="latent_cache_mb must be a finite number of MiB >= 0"):
        LatentCache(bound)

from __future__ import annotations

import pytest
import torch

from common.networks import VQGAN, CodebookQuantizer


@pytest.mark.parametrize(
    "factor, image, latent",
    [(2, (1, 1, 16, 16, 16), (1, 8, 8, 8, 8)), (4, (1, 1, 32, 32, 8), (1, 8, 8, 8, 2))],
)
def test_latent_shape_follows_the_compression(factor, image, latent):
    net = VQGAN(downsample_factor=factor, base_channels=4, num_embeddings=32)
    x = torch.randn(image)
    assert net.encode(x).shape == latent
    recon, commitment = net(x)
    assert recon.shape == image and commitment.ndim == 0


def test_paper_layout_and_codebook():
    net = VQGAN(downsample_factor=4)
    assert net.channels == (16, 32, 64)
    assert isinstance(net.codebook, CodebookQuantizer)
    assert net.codebook.embedding.weight.shape == (16384, 8)
    assert net.codebook.decay == 0.99 and net.codebook.commitment_cost == 0.25


def test_rejects_a_compression_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        VQGAN(downsample_factor=3)


def test_forward_with_latent_downsample_also_decodes_the_pooled_latent():
    net = VQGAN(downsample_factor=2, base_channels=4, num_embeddings=32).eval()
    x = torch.randn(2, 1, 16, 16, 8)
    with torch.no_grad():
        reconstruction, commitment, pooled = net(x, 2)
        latent, _ = net.quantize(net.encode(x))
        assert torch.allclose(reconstruction, net(x)[0])
        assert torch.allclose(pooled, net.decode(torch.nn.functional.avg_pool3d(latent, 2)))
    assert pooled.shape == (2, 1, 8, 8, 4) and commitment.ndim == 0
    with pytest.raises(ValueError, match="latent_downsample must be >= 1 and divide every axis"):
        net(x, 0)
    with pytest.raises(ValueError, match=r"divide every axis of the latent \(8, 8, 4\), got 8"):
        net(x, 8)


def test_the_pooled_decoding_trains_the_encoder_through_the_quantiser():
    """The scale-equivariance term reaches the encoder (straight through the nearest-code step), not only the decoder."""
    net = VQGAN(downsample_factor=2, base_channels=4, num_embeddings=32)
    _, _, pooled = net(torch.randn(1, 1, 8, 8, 8), 2)
    pooled.abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())

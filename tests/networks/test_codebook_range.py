from __future__ import annotations

import pytest
import torch
from monai.networks.nets import VQVAE

from common.networks import CodebookRangeAutoencoder, LatentScale
from tests.helpers import tiny_vqgan


def _trained_like(vqgan):
    """Give the codebook data-derived codes, as a trained one has."""
    vqgan.train()
    vqgan(torch.randn(2, 1, 16, 16, 16))
    return vqgan.eval()


def test_round_trip_equals_the_vqgans_own_quantised_reconstruction():
    vqgan = _trained_like(tiny_vqgan())
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected, _ = vqgan(x)
        wrapper = CodebookRangeAutoencoder(vqgan)
        latent = wrapper.encode_stage_2_inputs(x)
        got = wrapper.decode_stage_2_outputs(latent)
    assert torch.allclose(got, expected, atol=1e-5)


def test_latents_are_mapped_with_the_codebook_range():
    vqgan = _trained_like(tiny_vqgan())
    wrapper = CodebookRangeAutoencoder(vqgan)
    codes = vqgan.codebook.embedding.weight
    assert torch.isclose(wrapper.normalize(codes.min()), torch.tensor(-1.0))
    assert torch.isclose(wrapper.normalize(codes.max()), torch.tensor(1.0))
    z = torch.randn(1, 4, 3, 3, 3)
    assert torch.allclose(wrapper.denormalize(wrapper.normalize(z)), z, atol=1e-5)


@pytest.mark.parametrize("mode", [True, False])
def test_decoding_never_changes_the_codebook(mode):
    vqgan = _trained_like(tiny_vqgan())
    vqgan.train()  # even a VQ-GAN left in train mode must not update while wrapped
    wrapper = CodebookRangeAutoencoder(vqgan)
    wrapper.train(mode)
    assert not vqgan.training and not vqgan.codebook.training
    state = {k: v.clone() for k, v in vqgan.codebook.state_dict().items()}
    wrapper.decode_stage_2_outputs(torch.randn(2, 4, 8, 8, 8))
    wrapper(torch.randn(1, 1, 16, 16, 16))
    for key, value in vqgan.codebook.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in vqgan.parameters())


def test_works_with_a_stock_monai_vqvae():
    vqvae = VQVAE(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), num_res_channels=(4, 8), num_res_layers=1,
        downsample_parameters=((2, 4, 1, 1), (1, 3, 1, 1)), upsample_parameters=((1, 3, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=16, embedding_dim=4,
    ).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected, _ = vqvae(x)
        got = CodebookRangeAutoencoder(vqvae)(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_degenerate_codebook_is_refused():
    vqgan = tiny_vqgan()
    vqgan.codebook.embedding.weight.data.fill_(0.5)
    wrapper = CodebookRangeAutoencoder(vqgan)
    with pytest.raises(ValueError, match="degenerate"):
        wrapper.encode_stage_2_inputs(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(TypeError, match="VQVAE"):
        CodebookRangeAutoencoder(torch.nn.Linear(2, 2))


def test_a_unit_variance_scale_multiplies_the_latents_and_decodes_the_same_volumes():
    vqgan = _trained_like(tiny_vqgan())
    x = torch.randn(2, 1, 16, 16, 16)
    paper = CodebookRangeAutoencoder(vqgan)
    scale = LatentScale("unit_variance")
    scaled = CodebookRangeAutoencoder(vqgan, latent_scale=scale)
    with torch.no_grad():
        latents = paper.encode_stage_2_inputs(x)
        with pytest.raises(RuntimeError, match="latent scale .*'unit_variance'.* is not set"):
            scaled.encode_stage_2_inputs(x)
        scale.fit(float(latents.std()))
        assert float(scaled.encode_stage_2_inputs(x).std()) == pytest.approx(1.0, rel=1e-4)
        assert torch.allclose(scaled.decode_stage_2_outputs(scaled.encode_stage_2_inputs(x)), paper(x), atol=1e-5)
    with pytest.raises(ValueError, match="cannot scale latents of standard deviation 0"):
        scale.fit(0.0)


def test_a_target_standard_deviation_scales_the_latents_to_it_and_is_checked():
    scale = LatentScale("unit_variance", target_std=0.4)
    scale.fit(0.2)
    assert float(scale.factor()) == pytest.approx(2.0)  # latents of std 0.2 given to the denoiser at std 0.4
    default = LatentScale("unit_variance")
    default.fit(0.2)
    assert float(default.factor()) == pytest.approx(5.0)  # unit variance by default
    for wrong in (0, -0.4, float("nan"), float("inf"), True, "0.4"):
        with pytest.raises(ValueError, match="target standard deviation must be a positive number"):
            LatentScale("unit_variance", target_std=wrong)
    with pytest.raises(ValueError, match="scales latents only with latent_scaling 'unit_variance'"):
        LatentScale("codebook_range", target_std=0.4)  # would be ignored: refused instead


def test_the_scale_comes_from_the_checkpoint_and_an_older_checkpoint_is_the_papers(tmp_path):
    fitted = LatentScale("unit_variance")
    fitted.fit(0.2)
    torch.save({"ema_network": {}, "latent_scale": fitted.state_dict()}, tmp_path / "scaled.pt")
    torch.save({"ema_network": {}}, tmp_path / "older.pt")  # written before the scale was stored
    assert float(LatentScale.from_checkpoint(tmp_path / "scaled.pt", "unit_variance").factor()) == pytest.approx(5.0)
    assert float(LatentScale.from_checkpoint(tmp_path / "older.pt").factor()) == 1.0  # the paper's
    with pytest.raises(ValueError, match="older.pt holds no latent scale: it was trained with latent_scaling 'codebook_range'"):
        LatentScale.from_checkpoint(tmp_path / "older.pt", "unit_variance")
    with pytest.raises(ValueError, match="latent scaling must be one of"):
        LatentScale("unit")


@pytest.mark.parametrize("stock", [False, True])
def test_the_codes_in_the_diffusion_space_are_what_the_decoder_reads(stock):
    vqgan = VQVAE(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), num_res_channels=(4, 8), num_res_layers=1,
        downsample_parameters=((2, 4, 1, 1), (1, 3, 1, 1)), upsample_parameters=((1, 3, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=16, embedding_dim=4,
    ) if stock else tiny_vqgan()
    vqgan = _trained_like(vqgan)
    scale = LatentScale("unit_variance")
    scale.fit(0.5)
    wrapper = CodebookRangeAutoencoder(vqgan, latent_scale=scale)
    codes = wrapper.codes()
    assert codes.shape == vqgan.quantizer.quantizer.embedding.weight.shape
    assert torch.allclose(codes, wrapper.normalize(vqgan.quantizer.quantizer.embedding.weight) * 2)
    with torch.no_grad():
        latent = wrapper.encode_stage_2_inputs(torch.randn(2, 1, 16, 16, 16))
        snapped, indices = wrapper.snap_to_codes(latent)
        assert indices.shape == (2, *latent.shape[2:]) and torch.equal(wrapper.code_indices(snapped), indices)
        distances = torch.cdist(latent.movedim(1, -1).reshape(-1, 4), codes, compute_mode="donot_use_mm_for_euclid_dist")
        chosen = distances.gather(1, indices.flatten()[:, None])[:, 0]  # a nearest code, in the scaled space too
        assert torch.allclose(chosen, distances.min(dim=1).values, atol=1e-4)  # (a trained codebook can hold twins)
        # snapping changes nothing the decoder sees
        assert torch.allclose(wrapper.decode_stage_2_outputs(snapped), wrapper.decode_stage_2_outputs(latent), atol=1e-5)

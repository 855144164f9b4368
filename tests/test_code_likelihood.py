"""The codes' likelihood at a noisy voxel (``common.networks.code_log_likelihood``, the bundles' ``code_likelihood``):
its value against the Gaussian density, what it says at no noise and at pure noise, the schedules' noising line it
reads, and its addition to a code classifier's logits in training (``SampledVoxelsInferer``) and sampling
(``CodeExpectation``, ``LatentSampler``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.engines import SampledVoxelsInferer
from common.networks import RectifiedFlowScheduler, code_log_likelihood, expected_codes, noising_line
from common.sampling import CodeExpectation, LatentSampler, make_noise_scheduler, make_sampling_scheduler


def test_the_likelihood_is_the_gaussian_density_of_each_code_up_to_a_constant_per_voxel():
    torch.manual_seed(0)
    codes, noisy = torch.randn(6, 3), torch.randn(2, 3, 4, 5, 2)
    signal, noise = torch.tensor([0.9, 0.3]), torch.tensor([0.4, 0.95])
    logits = code_log_likelihood(noisy, codes, signal, noise)
    assert logits.shape == (2, 6, 4, 5, 2) and logits.dtype == torch.float32
    # the log density of N(signal c_k, noise^2 I) at every voxel, written out
    difference = noisy[:, None] - signal.view(2, 1, 1, 1, 1, 1) * codes.view(1, 6, 3, 1, 1, 1)
    density = -(difference ** 2).sum(2) / (2 * noise.view(2, 1, 1, 1, 1) ** 2)
    assert torch.allclose(logits.log_softmax(1), density.log_softmax(1), atol=1e-5)
    assert not torch.allclose(logits, density)  # the per-voxel constant is left out


def test_the_likelihood_names_the_nearest_code_with_little_noise_and_nothing_at_pure_noise():
    torch.manual_seed(1)
    codes = torch.randn(16, 4)
    chosen = torch.randint(0, 16, (1, 3, 3, 3))
    clean = codes[chosen].movedim(-1, 1)
    noisy = 0.999 * clean + 0.01 * torch.randn_like(clean)
    assert torch.equal(code_log_likelihood(noisy, codes, torch.tensor([0.999]), torch.tensor([0.01])).argmax(1), chosen)
    flat = code_log_likelihood(torch.randn(1, 4, 3, 3, 3), codes, torch.tensor([0.0]), torch.tensor([1.0]))
    assert torch.equal(flat, torch.zeros_like(flat))  # the voxel says nothing: the classifier's logits alone count


def test_the_likelihood_stays_in_float32_under_autocast():
    torch.manual_seed(5)
    codes, noisy = torch.randn(64, 8), torch.randn(2, 8, 6, 6, 6)
    signal, noise = torch.tensor([0.9999, 0.7]), torch.tensor([0.0126, 0.714])  # the cosine schedule's t = 1 and 150
    exact = code_log_likelihood(noisy, codes, signal, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the bundles' trainer and a bf16 denoiser run
        under = code_log_likelihood(noisy.bfloat16(), codes, signal, noise)
    assert under.dtype == torch.float32
    assert torch.allclose(under, code_log_likelihood(noisy.bfloat16().float(), codes, signal, noise), rtol=1e-5, atol=1e-2)
    assert exact.abs().max() > 1e4  # logits of this size lose whole units in bfloat16


def test_the_likelihood_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="with the same C"):
        code_log_likelihood(torch.zeros(1, 3, 4), torch.zeros(5, 2), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="one signal and noise coefficient per volume"):
        code_log_likelihood(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.ones(1), torch.ones(2))


@pytest.mark.parametrize("scheduler", [make_noise_scheduler(300, "cosine", "sample"), make_noise_scheduler(300, "linear_beta", "sample"),
                                       RectifiedFlowScheduler(300, "sample")], ids=["cosine", "linear", "rectified_flow"])
def test_the_noising_line_is_how_the_scheduler_noises(scheduler):
    clean, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    timesteps = torch.tensor([1, 150, 299])
    signal, level = noising_line(scheduler, timesteps)
    expected = signal.view(-1, 1, 1, 1, 1) * clean + level.view(-1, 1, 1, 1, 1) * noise
    assert torch.allclose(scheduler.add_noise(clean, noise, timesteps), expected, atol=1e-5)


class ZeroLogits(nn.Module):
    """A code classifier that knows nothing: zero logits for ``codes`` codes, at the voxels asked for."""

    def __init__(self, codes: int) -> None:
        super().__init__()
        self.codes = codes

    def forward(self, x, timesteps, context=None, voxels=None):
        return torch.zeros(x.shape[0], self.codes, *(x.shape[2:] if voxels is None else voxels.shape[1:]))


class Codes:
    """The part of ``CodebookRangeAutoencoder`` the training inferer reads: its codes."""

    def __init__(self, codes: torch.Tensor) -> None:
        self._codes = codes

    def codes(self) -> torch.Tensor:
        return self._codes


def test_training_adds_the_likelihood_at_the_sampled_voxels_and_at_every_voxel():
    torch.manual_seed(2)
    codes = torch.randn(8, 2)
    scheduler = make_noise_scheduler(300, "cosine", "sample")
    inferer = SampledVoxelsInferer(scheduler, autoencoder=Codes(codes), code_classification=True, code_likelihood=True)
    clean, noise = codes[torch.randint(0, 8, (2, 4, 4, 4))].movedim(-1, 1), torch.randn(2, 2, 4, 4, 4)
    timesteps, voxels = torch.tensor([3, 200]), torch.randint(0, 64, (2, 10))
    noisy = scheduler.add_noise(clean, noise, timesteps)
    signal, level = noising_line(scheduler, timesteps)
    whole = code_log_likelihood(noisy, codes, signal, level)
    sampled = inferer(clean, ZeroLogits(8), noise, timesteps, voxels=voxels)
    assert sampled.shape == (2, 8, 10)
    assert torch.allclose(sampled, whole.flatten(2).gather(2, voxels[:, None].expand(-1, 8, -1)), atol=1e-4)
    assert torch.allclose(inferer(clean, ZeroLogits(8), noise, timesteps), whole, atol=1e-4)
    # without it the call is the network's alone
    plain = SampledVoxelsInferer(scheduler, autoencoder=Codes(codes), code_classification=True)
    assert torch.equal(plain(clean, ZeroLogits(8), noise, timesteps, voxels=voxels), torch.zeros(2, 8, 10))


def test_a_self_conditioned_classifier_with_the_likelihood_estimates_from_both():
    torch.manual_seed(3)
    codes = torch.randn(8, 2)
    scheduler = make_noise_scheduler(300, "cosine", "sample")
    inferer = SampledVoxelsInferer(scheduler, self_conditioning=True, autoencoder=Codes(codes), code_classification=True,
                                   code_likelihood=True)
    noisy, timesteps = torch.randn(2, 2, 4, 4, 4), torch.tensor([3, 299])
    estimate = inferer.own_estimate(ZeroLogits(8), noisy, timesteps, None)
    signal, level = noising_line(scheduler, timesteps)
    assert torch.allclose(estimate[0], expected_codes(code_log_likelihood(noisy[:1], codes, signal[:1], level[:1])[0], codes), atol=1e-5)
    assert torch.allclose(estimate[1], codes.mean(0).view(2, 1, 1, 1).expand(2, 4, 4, 4), atol=1e-3)  # pure noise: the mean code


def test_the_likelihood_is_refused_without_code_classification_and_the_codes():
    scheduler = make_noise_scheduler(300, "cosine", "sample")
    with pytest.raises(ValueError, match="code_likelihood adds every code's likelihood .* needs code_classification true"):
        SampledVoxelsInferer(scheduler, autoencoder=Codes(torch.zeros(2, 2)), code_likelihood=True)
    with pytest.raises(ValueError, match="needs the autoencoder"):
        SampledVoxelsInferer(scheduler, code_classification=True, code_likelihood=True)
    with pytest.raises(ValueError, match="code_likelihood must be true or false"):
        SampledVoxelsInferer(scheduler, code_classification=True, code_likelihood="yes")


def test_sampling_adds_the_likelihood_at_each_steps_noise():
    torch.manual_seed(4)
    codes = torch.randn(8, 2)
    scheduler = make_sampling_scheduler(300, 10, "cosine", "sample")
    x = codes[torch.randint(0, 8, (2, 3, 3, 3))].movedim(-1, 1) + 0.01 * torch.randn(2, 2, 3, 3, 3)
    alone = CodeExpectation(ZeroLogits(8), codes, temperature=1.0)
    assert torch.allclose(alone(x, torch.tensor(5)), codes.mean(0).view(1, 2, 1, 1, 1).expand_as(x), atol=1e-5)
    guided = CodeExpectation(ZeroLogits(8), codes, temperature=1.0, likelihood=scheduler)
    signal, level = noising_line(scheduler, torch.tensor([5, 5]))
    expected = torch.stack([expected_codes(logits, codes) for logits in code_log_likelihood(x, codes, signal, level)])
    assert torch.allclose(guided(x, torch.tensor(5)), expected, atol=1e-5)
    with pytest.raises(TypeError, match="likelihood must be the sampling scheduler"):
        CodeExpectation(ZeroLogits(8), codes, likelihood="ddim")


def test_the_sampler_refuses_the_likelihood_for_a_regressing_denoiser(tmp_path):
    from monai.networks.nets import VQVAE

    from common.networks import CodebookRangeAutoencoder

    autoencoder = CodebookRangeAutoencoder(VQVAE(spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 4), num_res_channels=(4, 4),
                                                 num_res_layers=1, downsample_parameters=((2, 4, 1, 1), (1, 3, 1, 1)),
                                                 upsample_parameters=((2, 4, 1, 1, 0), (1, 3, 1, 1, 0)), num_embeddings=8, embedding_dim=2))
    with pytest.raises(ValueError, match="code_likelihood adds every code's likelihood .* needs code_classification true"):
        LatentSampler(autoencoder, ZeroLogits(2), make_sampling_scheduler(300, 5, "cosine", "epsilon"), (2, 4, 4, 4),
                      str(tmp_path / "out"), code_likelihood=True)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

"""Self-conditioning (Chen et al., ICLR 2023): the clean-latent estimate of every prediction type
(``common.networks.clean_estimate``), the denoiser's extra input (``DepthAttentionUNet``'s ``self_conditioning``),
its training on its own estimate (``SampledVoxelsInferer``) and its sampling from the estimate of the step before
(``SelfConditionedDenoiser``, through ``LatentSampler``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.engines import SampledVoxelsInferer
from common.networks import DepthAttentionUNet, RectifiedFlowScheduler, clean_estimate, expected_codes
from common.sampling import SelfConditionedDenoiser, make_noise_scheduler, make_sampling_scheduler

SMALL = dict(channels=(8, 16), num_heads=2, head_channels=4, norm_groups=4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_clean_estimate_of_the_true_target_is_the_clean_latent_for_every_ddpm_prediction_type(prediction_type):
    scheduler = make_noise_scheduler(300, "cosine", prediction_type)
    clean, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    timesteps = torch.tensor([5, 150, 290])  # one per volume, as in training
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = {"epsilon": noise, "sample": clean, "v_prediction": scheduler.get_velocity(clean, noise, timesteps)}[prediction_type]
    assert torch.allclose(clean_estimate(scheduler, noisy, target, timesteps, clip=False), clean, atol=1e-4)
    # and at one timestep for the batch, as in sampling, clipped as the scheduler clips
    one = torch.tensor([150])
    noisy = scheduler.add_noise(clean, noise, one.expand(3))
    target = {"epsilon": noise, "sample": clean, "v_prediction": scheduler.get_velocity(clean, noise, one.expand(3))}[prediction_type]
    assert torch.allclose(clean_estimate(scheduler, noisy, target, one), clean.clamp(-1, 1), atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_the_clean_estimate_of_rectified_flow_is_what_its_step_estimates(prediction_type):
    scheduler = RectifiedFlowScheduler(300, prediction_type, clip_sample=True)
    scheduler.set_timesteps(10)
    scheduler.clip_sample_values = [-0.5, 0.5]
    x, prediction = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    assert torch.allclose(clean_estimate(scheduler, x, prediction, torch.tensor([240])), scheduler.step(prediction, 240, x)[1])
    with pytest.raises(ValueError, match="one value or one per volume"):
        clean_estimate(scheduler, x, prediction, torch.tensor([240, 120, 60]))


def test_the_network_reads_its_estimate_beside_the_noisy_latent_and_zeros_without_one():
    torch.manual_seed(0)
    network = DepthAttentionUNet(2, self_conditioning=True, **SMALL).eval()
    assert network.init_conv.in_channels == 4
    x, t = torch.randn(2, 2, 8, 8, 4), torch.tensor([10])
    with torch.no_grad():
        alone = network(x, t)
        assert torch.equal(alone, network(x, t, self_condition=torch.zeros_like(x)))
        assert not torch.allclose(alone, network(x, t, self_condition=torch.randn_like(x)))
    with pytest.raises(ValueError, match="self_condition must have the shape of x"):
        network(x, t, self_condition=torch.zeros(1, 2, 8, 8, 4))
    patched = DepthAttentionUNet(2, self_conditioning=True, patch_size=2, position_channels=True, **SMALL)
    assert patched.init_conv.in_channels == 2 * 2 * 8 + 3 and patched(x, t, self_condition=x).shape == x.shape
    with pytest.raises(ValueError, match="built without self_conditioning"):
        DepthAttentionUNet(2, **SMALL)(x, t, self_condition=x)
    with pytest.raises(ValueError, match="self_conditioning must be True or False"):
        DepthAttentionUNet(2, self_conditioning=1, **SMALL)


class Recording(nn.Module):
    """A denoiser whose prediction is ``x * factor``; it records the estimate it was handed at every call."""

    def __init__(self, factor: float = 0.5, channels: int | None = None) -> None:
        super().__init__()
        self.factor, self.channels, self.given = factor, channels, []

    def forward(self, x, timesteps, context=None, voxels=None, self_condition=None):
        self.given.append(None if self_condition is None else self_condition.clone())
        out = x * self.factor
        if self.channels is not None:  # a code classifier: one logit per code
            out = out.mean(dim=1, keepdim=True).expand(-1, self.channels, *x.shape[2:]) * torch.arange(self.channels).view(1, -1, 1, 1, 1)
        return out if voxels is None else out.flatten(2).gather(2, voxels[:, None].expand(-1, out.shape[1], -1))


def test_sampling_hands_each_step_the_clipped_estimate_of_the_step_before_and_a_new_batch_none():
    scheduler = make_sampling_scheduler(300, 4, "cosine", "v_prediction")
    scheduler.clip_sample_values = [-0.3, 0.3]
    network = Recording()
    denoiser = SelfConditionedDenoiser(network, scheduler)
    x = torch.randn(2, 1, 4, 4, 4)
    for t in scheduler.timesteps:
        prediction = denoiser(x, t)
        x = scheduler.step(prediction, int(t), x)[0]
    assert network.given[0] is None and all(given is not None for given in network.given[1:])
    assert float(network.given[-1].abs().max()) <= 0.3 + 1e-6  # clipped as the scheduler clips
    last_x, last_t = x.clone(), scheduler.timesteps[-1]
    denoiser(last_x, last_t)
    expected = clean_estimate(scheduler, last_x, last_x * 0.5, last_t)  # Recording predicts x * 0.5
    assert torch.allclose(denoiser.previous, expected)
    denoiser(torch.randn(3, 1, 4, 4, 4), scheduler.timesteps[0])  # another batch size: no estimate of its own yet
    assert network.given[-1] is None
    denoiser.reset()
    denoiser(last_x, scheduler.timesteps[0])
    assert network.given[-1] is None


@pytest.mark.parametrize("code_classification", [False, True])
def test_training_gives_half_of_the_batches_the_networks_own_estimate_made_without_one(code_classification):
    scheduler = make_noise_scheduler(300, "cosine", "sample" if code_classification else "v_prediction")
    codes = torch.randn(5, 2)

    class Codes:  # the autoencoder wrapper's codebook in the diffusion space
        def codes(self):
            return codes

    network = Recording(channels=5 if code_classification else None)
    inferer = SampledVoxelsInferer(scheduler, self_conditioning=True, autoencoder=Codes(), code_classification=code_classification)
    torch.manual_seed(0)
    clean, noise, timesteps = torch.randn(2, 2, 4, 4, 4), torch.randn(2, 2, 4, 4, 4), torch.tensor([30, 200])
    voxels = torch.tensor([[0, 5, 9], [1, 2, 63]]) if code_classification else None
    estimated = 0
    for _ in range(40):
        network.given.clear()
        out = inferer(clean, network, noise, timesteps, voxels=voxels)
        assert out.shape == ((2, 5, 3) if code_classification else clean.shape)
        if len(network.given) == 2:  # first its own estimate without one, then trained on it
            estimated += 1
            assert network.given[0] is None and not network.given[1].requires_grad
            noisy = scheduler.add_noise(clean, noise, timesteps)
            if code_classification:
                logits = Recording(channels=5)(noisy, timesteps)
                own = torch.stack([expected_codes(volume, codes) for volume in logits])
            else:
                own = clean_estimate(scheduler, noisy, noisy * 0.5, timesteps, clip=False)
            assert torch.allclose(network.given[1], own, atol=1e-6)
        else:
            assert network.given == [None]
    assert 10 <= estimated <= 30
    with pytest.raises(ValueError, match="needs the autoencoder"):
        SampledVoxelsInferer(scheduler, self_conditioning=True, code_classification=True)
    with pytest.raises(ValueError, match="must be true or false"):
        SampledVoxelsInferer(scheduler, self_conditioning="yes")


def test_the_sampler_wraps_a_self_conditioned_denoiser_and_refuses_a_setting_that_is_not_the_networks(tmp_path, caplog):
    from monai.inferers import LatentDiffusionInferer

    from common.networks import CodebookRangeAutoencoder
    from common.sampling import AutoGuidedDenoiser, LatentSampler
    from tests.helpers import tiny_vqgan

    vqgan = tiny_vqgan()
    built = DepthAttentionUNet(4, self_conditioning=True, **SMALL)
    inferer = LatentDiffusionInferer(make_sampling_scheduler(20, 3), scale_factor=1.0)
    sampler = LatentSampler(CodebookRangeAutoencoder(vqgan), built, inferer, (4, 8, 8, 4), str(tmp_path), verbose=False,
                            self_conditioning=True)
    assert isinstance(sampler.denoiser, SelfConditionedDenoiser) and sampler.denoiser.network is built
    for network, setting in ((built, False), (DepthAttentionUNet(4, **SMALL), True)):
        with pytest.raises(ValueError, match="self_conditioning must be the denoiser's own setting"):
            LatentSampler(CodebookRangeAutoencoder(vqgan), network, inferer, (4, 8, 8, 4), str(tmp_path), self_conditioning=setting)
    guided = AutoGuidedDenoiser(built, DepthAttentionUNet(4, self_conditioning=True, **SMALL), 2.0)
    with caplog.at_level("WARNING", logger="common.sampling.latent"):
        LatentSampler(CodebookRangeAutoencoder(vqgan), guided, inferer, (4, 8, 8, 4), str(tmp_path), self_conditioning=True)
    assert "self_conditioning with autoguidance (scale 2.0)" in caplog.text

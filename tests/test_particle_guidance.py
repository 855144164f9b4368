"""Particle guidance (``common.sampling.particle_guidance``): the repulsion of a batch's x0 estimates, carried into
every prediction type the schedulers read, and the sampler's checks of its setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.networks import RectifiedFlowScheduler
from common.sampling import ParticleGuidedDenoiser, checked_particle_guidance_scale, make_sampling_scheduler
from common.sampling.particle_guidance import checked_particle_guidance_pool, repulsion


class Fixed(nn.Module):
    """A 'denoiser' whose prediction is a fixed tensor, whatever its input."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction

    def forward(self, x, timesteps, context=None):
        return self.prediction.clone()


def test_repulsion_of_two_is_their_difference_and_of_identical_estimates_nothing():
    a, b = torch.randn(2, 1, 4, 4, 4).unbind()
    offsets = repulsion(torch.stack([a, b]))
    assert torch.allclose(offsets[0], a - b) and torch.allclose(offsets[1], b - a)
    same = repulsion(torch.stack([a, a, a]))
    assert torch.isfinite(same).all() and torch.count_nonzero(same) == 0
    with pytest.raises(ValueError, match="at least 2 samples"):
        repulsion(a[None])


def test_repulsion_moves_a_close_pair_apart_and_the_far_estimate_away_from_them():
    base = torch.zeros(3, 8)
    base[1, 0], base[2, 0] = 0.1, 5.0  # 0 and 1 are close, 2 is far
    offsets = repulsion(base)
    moved = base + 0.5 * offsets
    assert torch.dist(moved[0], moved[1]) > torch.dist(base[0], base[1])
    assert offsets[2, 0] > 0 and offsets[0, 0] < 0 and offsets[1, 0] < 0  # the pair and the far one part ways
    assert offsets[0, 0] < offsets[1, 0]  # and the pair's own members are pushed apart


def test_pooled_repulsion_pushes_the_layout_and_leaves_the_texture():
    checkers = (torch.arange(8)[:, None, None] + torch.arange(8)[None, :, None] + torch.arange(8)[None, None, :]) % 2 * 2.0 - 1
    texture = torch.stack([torch.zeros(1, 8, 8, 8), checkers[None]])  # differ only voxel by voxel
    assert torch.count_nonzero(repulsion(texture, pool=2)) == 0 and torch.count_nonzero(repulsion(texture)) > 0
    layout = torch.stack([torch.zeros(1, 8, 8, 8), torch.ones(1, 8, 8, 8)])  # differ as a whole
    assert torch.allclose(repulsion(layout, pool=4), repulsion(layout))
    odd = torch.randn(2, 1, 5, 6, 7)  # sizes that are no multiple of the pool keep their shape
    assert repulsion(odd, pool=4).shape == odd.shape


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_shift_reaches_the_clean_estimate_the_ddim_scheduler_computes(prediction_type):
    scheduler = make_sampling_scheduler(300, 10, "cosine", prediction_type)
    scheduler.clip_sample = False
    x, prediction = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    t = int(scheduler.timesteps[2])
    guided = ParticleGuidedDenoiser(Fixed(prediction), scheduler, scale=0.3)(x, torch.tensor([t]))
    plain_x0 = torch.stack([scheduler.step(prediction[i : i + 1], t, x[i : i + 1])[1][0] for i in range(3)])
    guided_x0 = torch.stack([scheduler.step(guided[i : i + 1], t, x[i : i + 1])[1][0] for i in range(3)])
    share = 1 - float(scheduler.alphas_cumprod[t])
    assert torch.allclose(guided_x0, plain_x0 + 0.3 * share * repulsion(plain_x0), atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_the_shift_reaches_the_clean_estimate_of_rectified_flow(prediction_type):
    scheduler = RectifiedFlowScheduler(300, prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    x, prediction = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t = 240
    guided = ParticleGuidedDenoiser(Fixed(prediction), scheduler, scale=1.0)(x, torch.tensor([t]))
    plain_x0, guided_x0 = scheduler.step(prediction, t, x)[1], scheduler.step(guided, t, x)[1]
    u = t / 300
    assert torch.allclose(guided_x0, plain_x0 + u * u / ((1 - u) ** 2 + u * u) * repulsion(plain_x0), atol=1e-5)


def test_nothing_changes_at_scale_0_for_a_single_sample_or_at_the_clean_end():
    scheduler = make_sampling_scheduler(300, 10, "cosine", "v_prediction")
    x, prediction = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t = torch.tensor([int(scheduler.timesteps[0])])
    assert torch.equal(ParticleGuidedDenoiser(Fixed(prediction), scheduler, 0.0)(x, t), prediction)
    assert torch.equal(ParticleGuidedDenoiser(Fixed(prediction[:1]), scheduler, 1.0)(x[:1], t), prediction[:1])
    assert not torch.equal(ParticleGuidedDenoiser(Fixed(prediction), scheduler, 1.0)(x, t), prediction)
    flow = RectifiedFlowScheduler(300, "v_prediction")
    assert torch.equal(ParticleGuidedDenoiser(Fixed(prediction), flow, 1.0)(x, torch.tensor([0])), prediction)


def test_classifier_free_guidance_moves_the_guided_estimates_as_the_inferer_combines_the_halves():
    scheduler = make_sampling_scheduler(300, 10, "cosine", "sample")
    x, unconditional, conditional = torch.randn(3, 2, 1, 4, 4, 4).unbind()
    t = torch.tensor([float(scheduler.timesteps[1])])  # as MONAI's inferer passes it
    stacked = ParticleGuidedDenoiser(Fixed(torch.cat([unconditional, conditional])), scheduler, 0.5, cfg_scale=3.0)
    u, c = stacked(torch.cat([x, x]), t).chunk(2)
    guided = torch.lerp(unconditional, conditional, 3.0).clamp(*scheduler.clip_sample_values)
    share = 1 - float(scheduler.alphas_cumprod[int(t)])
    expected = (guided + 0.5 * share * repulsion(guided)).clamp(*scheduler.clip_sample_values)
    assert torch.allclose(u + 3.0 * (c - u), expected, atol=1e-5)  # what the inferer hands the scheduler


def test_the_push_survives_the_schedulers_clipping():
    scheduler = make_sampling_scheduler(300, 10, "cosine", "epsilon")  # clips x0 to [-1, 1]
    x, prediction = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t = int(scheduler.timesteps[5])  # raw estimates partly outside [-1, 1]
    guided = ParticleGuidedDenoiser(Fixed(prediction), scheduler, 0.5)(x, torch.tensor([t]))
    plain_x0 = torch.cat([scheduler.step(prediction[i : i + 1], t, x[i : i + 1])[1] for i in range(2)])
    guided_x0 = torch.cat([scheduler.step(guided[i : i + 1], t, x[i : i + 1])[1] for i in range(2)])
    share = 1 - float(scheduler.alphas_cumprod[t])
    assert (plain_x0.abs() == 1).any() and (plain_x0.abs() < 1).any()
    assert torch.allclose(guided_x0, (plain_x0 + 0.5 * share * repulsion(plain_x0)).clamp(-1, 1), atol=1e-4)
    assert torch.dist(guided_x0[0], guided_x0[1]) > torch.dist(plain_x0[0], plain_x0[1])


def test_a_broken_sample_is_not_spread_to_its_batch():
    scheduler = make_sampling_scheduler(300, 10, "cosine", "sample")
    prediction = torch.randn(3, 1, 4, 4, 4)
    prediction[1, 0, 0, 0, 0] = float("nan")
    out = ParticleGuidedDenoiser(Fixed(prediction), scheduler, 1.0)(torch.randn(3, 1, 4, 4, 4), torch.tensor([200]))
    assert torch.equal(out[0], prediction[0]) and torch.isfinite(out[2]).all()


@pytest.mark.parametrize("scale", [-0.1, float("nan"), True, "1"])
def test_bad_scales_are_refused_by_name(scale):
    with pytest.raises(ValueError, match="particle_guidance_scale must be a number >= 0"):
        checked_particle_guidance_scale(scale)


@pytest.mark.parametrize("pool", [0, 2.5, True, "2"])
def test_bad_pools_are_refused_by_name(pool):
    with pytest.raises(ValueError, match="particle_guidance_pool must be a whole number >= 1"):
        checked_particle_guidance_pool(pool)

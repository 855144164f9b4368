from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from common.io import save_nifti
from common.networks import CodebookRangeAutoencoder, DepthAttentionUNet, RectifiedFlowScheduler
from common.engines import PredictionTargetPrepareBatch
from common.sampling import (
    LatentSampler, StochasticDDIMScheduler, make_noise_scheduler, make_sampling_scheduler, volume_affine,
)
from tests.helpers import tiny_vqgan


def test_full_steps_use_the_papers_ddpm_and_fewer_use_ddim():
    ddpm = make_sampling_scheduler(300)
    assert isinstance(ddpm, DDPMScheduler) and len(ddpm.timesteps) == 300 and ddpm.clip_sample
    ddim = make_sampling_scheduler(300, 50)
    assert isinstance(ddim, DDIMScheduler) and len(ddim.timesteps) == 50 and ddim.clip_sample
    with pytest.raises(ValueError, match=r"\[1, 300\]"):
        make_sampling_scheduler(300, 301)


def test_rectified_flow_noises_on_a_straight_line_and_its_euler_steps_follow_it():
    training = make_noise_scheduler(300, "rectified_flow", "v_prediction")
    assert isinstance(training, RectifiedFlowScheduler) and training.prediction_type == "v_prediction"
    torch.manual_seed(0)
    clean, noise = torch.rand(2, 3, 4, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4, 4)
    noisy = training.add_noise(clean, noise, torch.tensor([300, 100]))
    assert torch.allclose(noisy[0], noise[0]) and torch.allclose(noisy[1], clean[1] * 2 / 3 + noise[1] / 3, atol=1e-6)
    # the bundles' prepare batch takes the velocity x0 - noise as the target
    prepare = PredictionTargetPrepareBatch(300, training)
    _, target, _, kwargs = prepare({"image": clean})
    assert torch.allclose(target, clean - kwargs["noise"])

    sampling = make_sampling_scheduler(300, 10, "rectified_flow", "v_prediction")
    assert isinstance(sampling, RectifiedFlowScheduler) and sampling.timesteps.tolist() == list(range(300, 0, -30))
    velocity = clean - noise  # the exact velocity: every step lands on the line, the clean estimate is the latent
    following, estimate = sampling.step(velocity, 150, clean / 2 + noise / 2, 120)
    assert torch.allclose(estimate, clean, atol=1e-6) and torch.allclose(following, clean * 0.6 + noise * 0.4, atol=1e-6)
    # the clean estimate is clipped (LatentSampler sets the range), and the step goes through the clipped estimate
    sampling.clip_sample_values = [-0.5, 0.5]
    following, estimate = sampling.step(velocity, 150, clean / 2 + noise / 2, 120)
    assert float(estimate.abs().max()) <= 0.5 and torch.allclose(following, estimate * 0.6 + (clean / 2 + noise / 2 - estimate / 2) * 0.8, atol=1e-6)
    # a denoiser of the clean latent (a code classifier's estimate) steps the same way
    sample_scheduler = make_sampling_scheduler(300, 10, "rectified_flow", "sample")
    assert torch.allclose(sample_scheduler.step(clean, 150, clean / 2 + noise / 2, 120)[0], clean * 0.6 + noise * 0.4, atol=1e-6)
    assert torch.allclose(sample_scheduler.step(clean, 30, noise, 0)[0], clean)  # the last step ends on the estimate


def test_rectified_flow_refuses_epsilon_and_a_stochastic_eta():
    with pytest.raises(ValueError, match="learns the velocity .* not 'epsilon'"):
        make_noise_scheduler(300, "rectified_flow", "epsilon")
    for steps in (None, 10):
        with pytest.raises(ValueError, match=r"rectified flow samples deterministically \(eta 0\)"):
            make_sampling_scheduler(300, steps, "rectified_flow", "v_prediction", eta=0.5)
    assert len(make_sampling_scheduler(300, None, "rectified_flow", "v_prediction").timesteps) == 300
    assert isinstance(make_noise_scheduler(300), DDPMScheduler)  # the paper's by default


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [3, 7, 10, 25])
def test_every_ddim_step_lands_at_the_noise_level_the_next_call_is_told(steps, prediction_type):
    # a denoiser that knows the clean latent and the noise: each step must put the sample exactly where add_noise puts
    # it at the next timestep, and the last step on the clean latent. MONAI's own step moves it to t - T // N instead
    # (with 10 steps, the call told t 0 gets a sample at t 3), which this catches.
    scheduler = make_sampling_scheduler(300, steps, "cosine", prediction_type)
    scheduler.clip_sample_values = [-10.0, 10.0]
    training = make_noise_scheduler(300, "cosine", prediction_type)
    torch.manual_seed(0)
    clean, noise = torch.rand(1, 2, 4, 4, 4) * 2 - 1, torch.randn(1, 2, 4, 4, 4)
    sample = training.add_noise(clean, noise, torch.tensor([int(scheduler.timesteps[0])]))
    for t in scheduler.timesteps:
        t_tensor = torch.tensor([int(t)])
        assert torch.allclose(sample, training.add_noise(clean, noise, t_tensor), atol=2e-3), f"told t={int(t)}"
        target = {"epsilon": noise, "sample": clean, "v_prediction": training.get_velocity(clean, noise, t_tensor)}
        sample, estimate = scheduler.step(target[prediction_type], t, sample)
        assert torch.allclose(estimate, clean, atol=1e-3)
    assert torch.allclose(sample, clean, atol=1e-3)
    assert scheduler.previous_timestep(int(scheduler.timesteps[-1])) == -1


def test_ddim_eta_adds_fresh_noise_at_every_step_and_is_refused_for_ddpm():
    deterministic, stochastic = make_sampling_scheduler(300, 10), make_sampling_scheduler(300, 10, eta=1.0)
    assert isinstance(stochastic, StochasticDDIMScheduler) and stochastic.eta == 1.0
    t, latent, noise = int(stochastic.timesteps[0]), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    assert torch.equal(deterministic.step(noise, t, latent)[0], torch.zeros(1, 2, 4))  # eta 0: the mean step alone
    torch.manual_seed(0)
    first = stochastic.step(noise, t, latent)[0]
    torch.manual_seed(0)
    assert first.abs().sum() > 0 and torch.equal(first, stochastic.step(noise, t, latent)[0])  # seeded by the caller
    with pytest.raises(ValueError, match="DDPM over all 300 steps already adds noise"):
        make_sampling_scheduler(300, None, eta=0.5)
    for eta in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
            make_sampling_scheduler(300, 10, eta=eta)


def test_affine_has_the_spacing_and_centres_the_volume():
    affine = volume_affine((64, 64, 32), (1.5, 1.5, 3.0))
    assert np.allclose(np.diag(affine)[:3], [1.5, 1.5, 3.0])
    centre = affine @ np.array([31.5, 31.5, 15.5, 1.0])
    assert np.allclose(centre[:3], 0)


def test_save_nifti_leaves_no_temporary_file(tmp_path):
    path = save_nifti(np.random.rand(4, 5, 6), volume_affine((4, 5, 6), (2, 2, 2)), tmp_path / "x.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]
    image = nib.load(path)
    assert image.shape == (4, 5, 6) and np.allclose(image.header.get_zooms(), 2)


@pytest.mark.parametrize("steps", [20, 3], ids=["ddpm", "ddim"])
def test_sampler_writes_volumes_seeds_and_a_picture(tmp_path, steps):
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    sampler = LatentSampler(
        CodebookRangeAutoencoder(vqgan), net, make_sampling_scheduler(20, steps), latent_shape=(4, 8, 8, 4),
        output_dir=str(tmp_path), num_samples=3, batch_size=1, seed=10, spacing=(2.0, 2.0, 2.5), verbose=False,
    )
    paths = sampler.run()
    assert [p.split("/")[-1] for p in paths] == [f"sample_{i:04d}_seed{10 + i}.nii.gz" for i in range(3)]
    image = nib.load(paths[1])
    assert image.shape == (16, 16, 8) and np.allclose(image.header.get_zooms(), (2.0, 2.0, 2.5))
    assert (tmp_path / "samples.png").stat().st_size > 1000
    # a sample regenerated alone from its recorded seed is the same volume, also with DDPM's per-step noise
    torch.manual_seed(1234)  # whatever the caller's random state
    again = sampler.sample([11])[0, 0].numpy()
    assert np.array_equal(again, np.asanyarray(image.dataobj))
    other = sampler.sample([12])[0, 0].numpy()
    assert not np.allclose(other, again)


def test_the_same_seed_writes_bit_identical_nifti_data_in_separate_runs(tmp_path):
    """Two runs with the same seed and batch size (and another caller random state) write the same voxels, with
    the seeds recorded; another batch size changes only the rounding of the batched arithmetic."""
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    written = []
    for run, batch_size in enumerate((2, 2, 1)):
        torch.manual_seed(run)
        sampler = LatentSampler(
            CodebookRangeAutoencoder(vqgan), net, make_sampling_scheduler(20, 20), latent_shape=(4, 8, 8, 4),
            output_dir=str(tmp_path / f"run{run}"), num_samples=2, batch_size=batch_size, seed=7, verbose=False,
        )
        written.append([np.asanyarray(nib.load(path).dataobj) for path in sampler.run()])
        record = json.loads((tmp_path / f"run{run}" / "samples.json").read_text())
        assert record["seeds"] == [7, 8] and record["files"] == ["sample_0000_seed7.nii.gz", "sample_0001_seed8.nii.gz"]
    for first, second, other_batching in zip(*written):
        assert first.dtype == second.dtype and first.tobytes() == second.tobytes()
        assert np.allclose(first, other_batching, atol=0.02)


def test_the_samplers_take_the_bundles_inferer_and_refuse_one_that_does_not_fit(tmp_path):
    from monai.inferers import DiffusionInferer, LatentDiffusionInferer

    from common.med_ddpm import MaskConditionedSampler

    vqgan, net = tiny_vqgan(), DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    scheduler = make_sampling_scheduler(20, 3)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=1.0)
    sampler = LatentSampler(CodebookRangeAutoencoder(vqgan), net, inferer, (4, 8, 8, 4), str(tmp_path), verbose=False)
    assert sampler.inferer is inferer
    with pytest.raises(ValueError, match="LatentDiffusionInferer with scale_factor 1.0"):
        LatentSampler(CodebookRangeAutoencoder(vqgan), net, LatentDiffusionInferer(scheduler, scale_factor=0.5), (4, 8, 8, 4), str(tmp_path))
    with pytest.raises(ValueError, match="LatentDiffusionInferer with scale_factor 1.0"):
        LatentSampler(CodebookRangeAutoencoder(vqgan), net, DiffusionInferer(scheduler), (4, 8, 8, 4), str(tmp_path))
    arguments = dict(mask_files=[], read_mask=None, num_classes=1, image_size=(8, 8, 8), spacing=(1.0,) * 3,
                     image_channels=1, output_dir=tmp_path)
    assert isinstance(MaskConditionedSampler(net, scheduler, **arguments).inferer, DiffusionInferer)
    with pytest.raises(ValueError, match=r"a \(pixel-space\) DiffusionInferer or a scheduler"):
        MaskConditionedSampler(net, inferer, **arguments)


def test_the_x0_clip_is_in_codebook_range_units_and_follows_the_latent_scale(tmp_path):
    from common.networks import LatentScale

    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    scale = LatentScale("unit_variance")
    scale.fit(0.25)  # latents multiplied by 4
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    scheduler = make_sampling_scheduler(300, 5, prediction_type="v_prediction")
    LatentSampler(CodebookRangeAutoencoder(vqgan.eval(), latent_scale=scale), net, scheduler, (4, 8, 8, 8), str(tmp_path),
                  clip_sample_range=1.25)
    assert scheduler.prediction_type == "v_prediction" and scheduler.clip_sample_values == [-5.0, 5.0]
    with pytest.raises(ValueError, match="clip_sample_range must be a positive number"):
        LatentSampler(CodebookRangeAutoencoder(vqgan), net, scheduler, (4, 8, 8, 8), str(tmp_path), clip_sample_range=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))])
def test_both_samplers_leave_the_callers_random_state_as_it_was(tmp_path, device):
    """The latent and the mask-conditioned samplers share one loop: the caller's random state (CPU, and the
    sampling device's) is untouched, the pairs' record is in seed order, and a seed gives the same image twice."""
    from monai.data import MetaTensor
    from monai.networks.nets import DiffusionModelUNet

    from common.med_ddpm import MaskConditionedSampler

    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    denoiser = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    latent = LatentSampler(CodebookRangeAutoencoder(vqgan).to(device), denoiser.to(device), make_sampling_scheduler(20, 20),
                           (4, 8, 8, 4), str(tmp_path / "latent"), num_samples=2, device=device, verbose=False)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    mask_path = save_nifti(mask, np.eye(4), tmp_path / "mask.nii.gz", dtype=np.uint8)

    def read_mask(path: str) -> MetaTensor:
        return MetaTensor(torch.as_tensor(np.asanyarray(nib.load(path).dataobj))[None], affine=torch.eye(4))

    network = DiffusionModelUNet(3, 2, 1, channels=(8, 8), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4)
    masked = MaskConditionedSampler(
        network.to(device), make_sampling_scheduler(10, 10), [mask_path], read_mask, num_classes=1, image_size=(8, 8, 8),
        spacing=(1.0,) * 3, image_channels=1, output_dir=tmp_path / "pairs", samples_per_mask=2, seed=3, device=device,
        verbose=False,
    )
    for sampler in (latent, masked):
        torch.manual_seed(99)
        before = (torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None)
        sampler.run()
        after = (torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None)
        assert torch.equal(after[0], before[0]) and (device == "cpu" or torch.equal(after[1], before[1]))
    records = json.loads((tmp_path / "pairs" / "samples.json").read_text())["samples"]
    assert [r["seed"] for r in records] == [3, 4] and records[0]["image"] == "images/mask_seed3.nii.gz"
    first = np.asanyarray(nib.load(tmp_path / "pairs" / "images" / "mask_seed3.nii.gz").dataobj)
    torch.manual_seed(5)  # another caller state: the same image
    assert np.array_equal(masked.sample(read_mask(str(mask_path)), 3).numpy()[0], first)


def test_guidance_scale_one_is_the_conditional_model_zero_the_unconditional_and_labels_are_recorded(tmp_path):
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    torch.manual_seed(0)
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4, class_counts=[2, 3])
    for table in net.class_embedding.tables:  # as if trained: every label moves the prediction
        torch.nn.init.normal_(table.weight)
    classes = {"side": ["left", "right"], "grade": ["low", "mid", "high"]}

    def sampler(scale, labels, folder="s"):
        return LatentSampler(CodebookRangeAutoencoder(vqgan), net, make_sampling_scheduler(20, 3), (4, 8, 8, 4), str(tmp_path / folder),
                             num_samples=2, verbose=False, class_labels=classes, labels=labels, guidance_scale=scale)

    asked = {"side": "right", "grade": "high"}
    conditional = sampler(1.0, asked).sample([0], [(1, 2)])
    unconditional = sampler(1.0, None).sample([0], [None])
    assert not torch.allclose(conditional, unconditional)
    # MONAI's guidance at scale 1 (one batch of both predictions) gives the conditional model's volume
    guided = sampler(1.0, asked)
    guided.guidance_scale = 1.0 + 1e-9  # the path with both predictions, at scale 1 in float32
    assert torch.allclose(guided.sample([0], [(1, 2)]), conditional, atol=1e-5)
    assert torch.allclose(sampler(0.0, asked).sample([0], [(1, 2)]), unconditional, atol=1e-5)
    assert not torch.allclose(sampler(3.0, asked).sample([0], [(1, 2)]), conditional, atol=1e-3)
    # no label asked for: guidance changes nothing, and the denoiser sees one prediction's batch, not two
    batches = []
    hook = net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    assert torch.allclose(sampler(3.0, None).sample([0, 1], [None, None])[:1], unconditional, atol=1e-5)
    hook.remove()
    assert set(batches) == {2}

    paths = sampler(2.0, [asked, None], "written").run()
    record = json.loads((tmp_path / "written" / "samples.json").read_text())
    assert record["labels"] == [asked, None] and record["guidance_scale"] == 2.0 and record["class_labels"] == classes
    assert [nib.load(p).header["descrip"].item().decode() for p in paths] == ["side=right grade=high", "no label"]
    with pytest.raises(ValueError, match="the denoiser is class-conditional but class_labels is not set"):
        LatentSampler(CodebookRangeAutoencoder(vqgan), net, make_sampling_scheduler(20, 3), (4, 8, 8, 4), str(tmp_path))
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        sampler(-1.0, asked)


class _Constant(torch.nn.Module):
    """A 'denoiser' that predicts a constant and counts its calls."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))
        self.calls = 0

    def forward(self, x, timesteps, context=None):
        self.calls += 1
        return torch.full_like(x, float(self.value.detach()))


def test_autoguidance_extrapolates_from_the_guide_and_scale_one_is_the_network_alone():
    from common.sampling import AutoGuidedDenoiser

    network, guide = _Constant(1.0), _Constant(0.25)
    x, t = torch.zeros(1, 4, 8, 8, 4), torch.tensor([5])
    assert torch.allclose(AutoGuidedDenoiser(network, guide, 2.0)(x, t), torch.full_like(x, 0.25 + 2 * 0.75))
    alone = AutoGuidedDenoiser(network, guide, 1.0)(x, t)
    assert torch.equal(alone, torch.ones_like(x)) and guide.calls == 1  # the guide is not evaluated at scale 1
    for wrong in (0.5, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="autoguidance_scale must be a number >= 1"):
            AutoGuidedDenoiser(network, guide, wrong)
    with pytest.raises(ValueError, match="another network"):
        AutoGuidedDenoiser(network, network, 2.0)


def test_an_autoguidance_interval_guides_only_the_steps_of_its_noise_levels():
    from common.sampling import AutoGuidedDenoiser

    network, guide = _Constant(1.0), _Constant(0.25)
    guided = AutoGuidedDenoiser(network, guide, 2.0, interval=[0.2, 0.5], num_train_timesteps=100)
    x = torch.zeros(3, 4, 8, 8, 4)
    assert torch.equal(guided(x, torch.tensor(90)), torch.ones_like(x)) and guide.calls == 0  # outside: not evaluated
    assert torch.equal(guided(x, torch.tensor(10)), torch.ones_like(x)) and guide.calls == 0
    assert torch.allclose(guided(x, torch.tensor(50)), torch.full_like(x, 1.75)) and guide.calls == 1  # bounds inside
    mixed = guided(x, torch.tensor([20, 60, 35]))  # a batch at several noise levels: each sample by its own
    assert [float(v) for v in mixed.flatten(1)[:, 0]] == [1.75, 1.0, 1.75]
    for wrong in ([0.5, 0.2], [0.0, 1.5], [-0.1, 0.5], (0.3,), "0.2,0.5", [0.1, float("nan")], [True, 0.5]):
        with pytest.raises(ValueError, match="autoguidance_interval must be null .* or \\[low, high\\]"):
            AutoGuidedDenoiser(network, guide, 2.0, interval=wrong, num_train_timesteps=100)
    with pytest.raises(ValueError, match="an autoguidance interval needs num_train_timesteps"):
        AutoGuidedDenoiser(network, guide, 2.0, interval=[0.2, 0.5])


def test_autoguided_loads_the_guide_from_its_checkpoint_and_refuses_what_does_not_fit(tmp_path, caplog):
    from common.checkpoints import ModelSettings
    from common.networks import LatentScale
    from common.sampling import AutoGuidedDenoiser, autoguided

    def checkpoint(path, net, scale, iteration=None):
        trainer = {} if iteration is None else {"trainer": {"iteration": iteration}}
        torch.save({"ema_network": net.state_dict(), "latent_scale": scale.state_dict(), "model_settings": settings.state_dict(), **trainer}, path)

    settings = ModelSettings(prediction_type="v_prediction", latent_scaling="unit_variance")
    scale = LatentScale("unit_variance")
    scale.fit(0.2)
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    earlier = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    checkpoint(tmp_path / "diffusion.pt", net, scale)
    checkpoint(tmp_path / "guide.pt", earlier, scale)
    guided = autoguided(net, tmp_path / "guide.pt", 1.5, settings, scale, tmp_path / "diffusion.pt")
    assert isinstance(guided, AutoGuidedDenoiser) and guided.network is net and guided.scale == 1.5
    assert all(torch.equal(a, b) for a, b in zip(guided.guide.state_dict().values(), earlier.state_dict().values()))
    x, t = torch.randn(1, 4, 8, 8, 4), torch.tensor([7])
    with torch.no_grad():
        assert torch.allclose(guided(x, t), earlier(x, t) + 1.5 * (net(x, t) - earlier(x, t)), atol=1e-5)
    assert autoguided(net, None, 1.0, settings, scale, tmp_path / "diffusion.pt") is net
    with pytest.raises(ValueError, match="autoguidance_scale is 2.0 but no guide_path is set"):
        autoguided(net, None, 2.0, settings, scale, tmp_path / "diffusion.pt")
    with pytest.raises(FileNotFoundError, match="guide_path .*missing.pt is not a file"):
        autoguided(net, tmp_path / "missing.pt", 2.0, settings, scale, tmp_path / "diffusion.pt")
    with pytest.raises(ValueError, match="guide_path is the denoiser's own checkpoint"):
        autoguided(net, tmp_path / "diffusion.pt", 2.0, settings, scale, tmp_path / "diffusion.pt")
    other = LatentScale("unit_variance")
    other.fit(0.4)  # trained on other latents
    checkpoint(tmp_path / "other.pt", earlier, other)
    with pytest.raises(ValueError, match=r"the guide .*other.pt was trained on latents scaled by 2.5, the denoiser .* by 5"):
        autoguided(net, tmp_path / "other.pt", 2.0, settings, scale, tmp_path / "diffusion.pt")
    checkpoint(tmp_path / "diffusion.pt", net, scale, iteration=40)
    checkpoint(tmp_path / "late.pt", earlier, scale, iteration=40)  # the final weights: guidance would change nothing
    with pytest.raises(ValueError, match="the guide .*late.pt was written at iteration 40, the denoiser .* at 40: the guide must be an earlier"):
        autoguided(net, tmp_path / "late.pt", 2.0, settings, scale, tmp_path / "diffusion.pt")
    checkpoint(tmp_path / "early.pt", earlier, scale, iteration=10)
    assert isinstance(autoguided(net, tmp_path / "early.pt", 2.0, settings, scale, tmp_path / "diffusion.pt"), AutoGuidedDenoiser)
    banded = autoguided(net, tmp_path / "early.pt", 2.0, settings, scale, tmp_path / "diffusion.pt", (0.1, 0.9), 300)
    assert banded.interval == (0.1, 0.9) and banded.num_train_timesteps == 300
    with caplog.at_level(logging.WARNING, logger="common.sampling.autoguidance"):
        assert autoguided(net, None, 1.0, settings, scale, tmp_path / "diffusion.pt", [0.1, 0.9], 300) is net
    assert "autoguidance_interval [0.1, 0.9] is set but nothing is guided" in caplog.text
    with pytest.raises(Exception, match="prediction_type"):  # the guide was trained as another model
        autoguided(net, tmp_path / "guide.pt", 2.0, ModelSettings(prediction_type="epsilon", latent_scaling="unit_variance"),
                   scale, tmp_path / "diffusion.pt")


def test_a_class_conditional_denoiser_is_autoguided_with_its_labels_and_classifier_free_guidance_on_top(tmp_path):
    from common.sampling import AutoGuidedDenoiser

    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    torch.manual_seed(0)
    net, guide = (DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4,
                                     class_counts=[2]) for _ in range(2))
    for table in (*net.class_embedding.tables, *guide.class_embedding.tables):  # as if trained: labels move the prediction
        torch.nn.init.normal_(table.weight)
    guided = AutoGuidedDenoiser(net, guide, 2.0)
    x, t = torch.randn(2, 4, 8, 8, 4), torch.tensor([5])
    labels = torch.tensor([[0], [1]])
    with torch.no_grad():  # each network sees the labels
        assert torch.allclose(guided(x, t, labels), 2 * net(x, t, labels) - guide(x, t, labels), atol=1e-5)
    # the sampler takes it as the conditional model it wraps, and guides by class on top (both predictions in one batch)
    sampler = LatentSampler(CodebookRangeAutoencoder(vqgan), guided, make_sampling_scheduler(20, 3), (4, 8, 8, 4), str(tmp_path),
                            num_samples=1, verbose=False, class_labels={"side": ["left", "right"]}, labels={"side": "right"},
                            guidance_scale=3.0)
    batches = []
    hooks = [m.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0])) for m in (net, guide)]
    volume = sampler.sample([0], [(1,)])
    for hook in hooks:
        hook.remove()
    assert volume.shape == (1, 1, 16, 16, 8) and torch.isfinite(volume).all() and set(batches) == {2} and len(batches) == 6
    assert not torch.allclose(volume, LatentSampler(CodebookRangeAutoencoder(vqgan), net, make_sampling_scheduler(20, 3), (4, 8, 8, 4),
                                                    str(tmp_path / "alone"), verbose=False, class_labels={"side": ["left", "right"]},
                                                    labels={"side": "right"}, guidance_scale=3.0).sample([0], [(1,)]))


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x, timesteps, context=None):
        return self.logits


def test_a_code_classifiers_estimate_is_the_softmax_weighted_mean_code_and_temperature_zero_the_most_likely():
    from common.sampling import CodeExpectation

    codes = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])
    logits = torch.randn(2, 3, 4, 4, 2)
    x, t = torch.zeros(2, 2, 4, 4, 2), torch.tensor([5, 5])
    for temperature in (1.0, 0.5):
        expected = torch.einsum("bk...,kc->bc...", (logits / temperature).softmax(dim=1), codes)
        assert torch.allclose(CodeExpectation(_FixedLogits(logits), codes, temperature)(x, t), expected, atol=1e-6)
    most_likely = codes[logits.argmax(dim=1)].movedim(-1, 1)
    assert torch.equal(CodeExpectation(_FixedLogits(logits), codes, 0)(x, t), most_likely)
    for temperature in (-1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="code_temperature must be a number >= 0"):
            CodeExpectation(_FixedLogits(logits), codes, temperature)
    with pytest.raises(ValueError, match=r"codes must be \(K, C\)"):
        CodeExpectation(_FixedLogits(logits), codes.flatten())
    with pytest.raises(ValueError, match="not one logit per code \\(4 codes\\).*trained with code_classification"):
        CodeExpectation(_FixedLogits(logits), torch.zeros(4, 2))(x, t)


def test_expected_codes_take_channel_first_logits_of_one_volume_and_refuse_a_count_that_is_not_the_codes():
    from common.sampling.code_expectation import expected_codes

    codes = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])
    logits = torch.randn(3, 4, 5, 2)  # (K, H, W, D), as the classifier gives one volume's
    estimate = expected_codes(logits, codes, 0.5)
    assert estimate.shape == (2, 4, 5, 2)
    voxel = (logits[:, 1, 3, 0] / 0.5).softmax(dim=0) @ codes  # one voxel worked out by hand
    assert torch.allclose(estimate[:, 1, 3, 0], voxel, atol=1e-6)
    assert torch.equal(expected_codes(logits, codes, 0)[:, 1, 3, 0], codes[logits[:, 1, 3, 0].argmax()])
    with pytest.raises(ValueError, match="4 logits a voxel for 3 codes"):
        expected_codes(torch.randn(4, 2, 2, 2), codes)


def test_the_sampler_samples_a_code_classifier_through_its_expected_code_and_records_the_temperature(tmp_path):
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(1, 1, 16, 16, 16))
    autoencoder = CodebookRangeAutoencoder(vqgan.eval())
    net = DepthAttentionUNet(4, out_channels=64, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    sampler = LatentSampler(autoencoder, net, make_sampling_scheduler(20, 3, prediction_type="sample"), (4, 8, 8, 8),
                            str(tmp_path), num_samples=1, verbose=False, code_classification=True, code_temperature=0.25)
    assert torch.equal(sampler.denoiser.codes, autoencoder.codes()) and sampler.denoiser.temperature == 0.25
    sampler.run()
    assert json.loads((tmp_path / "samples.json").read_text())["code_classification"] == {"temperature": 0.25, "likelihood": False}
    assert np.isfinite(np.asanyarray(nib.load(str(tmp_path / "sample_0000_seed0.nii.gz")).dataobj)).all()
    with pytest.raises(ValueError, match="code_classification true.*set prediction_type 'sample', not 'epsilon'"):
        LatentSampler(autoencoder, net, make_sampling_scheduler(20, 3), (4, 8, 8, 8), str(tmp_path), code_classification=True)
    # autoguided: the guide's and the network's expected codes are combined, not their logits
    from common.sampling import AutoGuidedDenoiser, CodeExpectation

    guide = DepthAttentionUNet(4, out_channels=64, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    guided = LatentSampler(autoencoder, AutoGuidedDenoiser(net, guide, 2.0), make_sampling_scheduler(20, 3, prediction_type="sample"),
                           (4, 8, 8, 8), str(tmp_path / "guided"), num_samples=1, verbose=False, code_classification=True,
                           code_temperature=0.25)
    denoiser = guided.denoiser
    assert isinstance(denoiser, AutoGuidedDenoiser) and denoiser.scale == 2.0
    assert isinstance(denoiser.network, CodeExpectation) and denoiser.network.classifier is net
    assert isinstance(denoiser.guide, CodeExpectation) and denoiser.guide.classifier is guide and denoiser.guide.temperature == 0.25
    x, t = torch.randn(1, 4, 8, 8, 8), torch.tensor([10])
    with torch.no_grad():
        alone, of_guide = (CodeExpectation(n, autoencoder.codes(), 0.25)(x, t) for n in (net, guide))
        assert torch.allclose(denoiser(x, t), of_guide + 2.0 * (alone - of_guide), atol=1e-5)
        by_logits = CodeExpectation(AutoGuidedDenoiser(net, guide, 2.0), autoencoder.codes(), 0.25)(x, t)
        assert not torch.allclose(denoiser(x, t), by_logits, atol=1e-3)
    guided.run()
    assert json.loads((tmp_path / "guided" / "samples.json").read_text())["code_classification"] == {"temperature": 0.25, "likelihood": False}
    banded = LatentSampler(autoencoder, AutoGuidedDenoiser(net, guide, 2.0, interval=(0.0, 0.3), num_train_timesteps=20),
                           make_sampling_scheduler(20, 3, prediction_type="sample"), (4, 8, 8, 8), str(tmp_path / "banded"),
                           verbose=False, code_classification=True).denoiser  # the interval carried to the expected codes
    assert banded.interval == (0.0, 0.3) and banded.num_train_timesteps == 20
    with torch.no_grad():
        assert torch.equal(banded(x, torch.tensor([10])), banded.network(x, torch.tensor([10])))  # 0.5: not guided
    with pytest.raises(ValueError, match=r"autoguidance_interval \[0.6, 0.7\] holds none of the 3 sampling steps, whose "
                                         r"noise shares t / 20 are 0.95, 0.5, 0: widen it"):
        LatentSampler(autoencoder, AutoGuidedDenoiser(net, guide, 2.0, interval=(0.6, 0.7), num_train_timesteps=20),
                      make_sampling_scheduler(20, 3, prediction_type="sample"), (4, 8, 8, 8), str(tmp_path / "none"),
                      code_classification=True)
    with pytest.raises(ValueError, match="not one logit per code"):  # a regressing denoiser sampled as a classifier
        regressing = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
        LatentSampler(autoencoder, regressing, make_sampling_scheduler(20, 3, prediction_type="sample"), (4, 8, 8, 8),
                      str(tmp_path / "wrong"), verbose=False, code_classification=True).run()

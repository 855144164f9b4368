from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from common.engines import LatentDiffusionPrepareBatch, SampledVoxelsInferer
from common.networks import CodebookRangeAutoencoder, DepthAttentionUNet, RectifiedFlowScheduler
from tests.helpers import tiny_vqgan


def _autoencoder() -> CodebookRangeAutoencoder:
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(2, 1, 16, 16, 8))
    return CodebookRangeAutoencoder(vqgan)


def test_batches_are_encoded_latents_with_noise_and_timesteps():
    autoencoder = _autoencoder()
    prepare = LatentDiffusionPrepareBatch(autoencoder, num_train_timesteps=300)
    images = torch.randn(3, 1, 16, 16, 8)
    latents, target, args, kwargs = prepare({"image": images})
    assert torch.allclose(latents, autoencoder.encode_stage_2_inputs(images))
    assert latents.shape == (3, 4, 8, 8, 4) and args == ()
    assert torch.equal(target, kwargs["noise"]) and target.shape == latents.shape
    assert kwargs["timesteps"].shape == (3,) and 0 <= int(kwargs["timesteps"].min()) and int(kwargs["timesteps"].max()) < 300


def test_supervised_trainer_fits_the_noise_on_latents():
    autoencoder = _autoencoder()
    net = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine")
    data = [{"image": torch.randn(1, 16, 16, 8)} for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    losses = []
    trainer = SupervisedTrainer(
        device="cpu", max_epochs=15, train_data_loader=loader, network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=2e-3), loss_function=torch.nn.L1Loss(),
        inferer=DiffusionInferer(scheduler), prepare_batch=LatentDiffusionPrepareBatch(autoencoder, 300),
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach().item()))
    trainer.run()
    # L1 of a zero prediction of unit Gaussian noise is about 0.8; the denoiser must do better than that
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
    assert sum(losses[-6:]) / 6 < 0.75


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_target_is_what_the_scheduler_predicts(prediction_type):
    autoencoder = _autoencoder()
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type=prediction_type)
    prepare = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler)
    latents, target, _, kwargs = prepare({"image": torch.randn(3, 1, 16, 16, 8)})
    noise, timesteps = kwargs["noise"], kwargs["timesteps"]
    alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": latents, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents}
    assert torch.allclose(target, expected[prediction_type], atol=1e-6)


def test_rectified_flow_velocity_and_code_targets_train_on_straight_line_inputs_through_the_supervised_trainer():
    autoencoder = _autoencoder()
    seen = []

    class Recording(torch.nn.Module):  # the denoiser, remembering the noisy input the inferer gives it
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, timesteps, context=None, voxels=None):
            seen.append((x.detach(), timesteps))
            return self.net(x, timesteps, context) if voxels is None else self.net(x, timesteps, context, voxels=voxels)

    data = [{"image": torch.randn(1, 16, 16, 8)} for _ in range(4)]
    for prediction_type, classify in (("v_prediction", False), ("sample", True)):
        scheduler, seen[:] = RectifiedFlowScheduler(300, prediction_type), []
        prepare = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=classify)
        out_channels = len(autoencoder.codes()) if classify else 4
        net = Recording(DepthAttentionUNet(4, out_channels=out_channels, channels=(8, 16), num_res_blocks=1, num_heads=2,
                                           head_channels=4, norm_groups=4))
        batches, losses = [], []
        wrapped = lambda batch, device=None, non_blocking=False, **kw: batches.append(prepare(batch, device, non_blocking, **kw)) or batches[-1]
        trainer = SupervisedTrainer(
            device="cpu", max_epochs=10, train_data_loader=torch.utils.data.DataLoader(data, batch_size=2), network=net,
            optimizer=torch.optim.Adam(net.parameters(), lr=2e-3),
            loss_function=torch.nn.CrossEntropyLoss() if classify else torch.nn.L1Loss(),
            inferer=SampledVoxelsInferer(scheduler), prepare_batch=wrapped, decollate=False,
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach().item()))
        trainer.run()
        latents, target, _, kwargs = batches[0]
        share = kwargs["timesteps"].float().view(-1, 1, 1, 1, 1) / 300
        assert 1 <= int(kwargs["timesteps"].min()) and int(kwargs["timesteps"].max()) <= 300
        assert torch.allclose(seen[0][0], (1 - share) * latents + share * kwargs["noise"], atol=1e-6)
        if not classify:
            assert torch.allclose(target, latents - kwargs["noise"], atol=1e-6)  # the velocity, MONAI's sign
        else:
            assert target.dtype == torch.long and torch.allclose(latents, autoencoder.codes()[target].movedim(-1, 1), atol=1e-6)
        assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, prediction_type


def test_a_scheduler_that_disagrees_is_refused():
    with pytest.raises(ValueError, match="scheduler has 1000 training timesteps but num_train_timesteps is 300"):
        LatentDiffusionPrepareBatch(_autoencoder(), 300, DDPMScheduler(num_train_timesteps=1000))


def test_code_classification_trains_on_the_nearest_codes_with_their_indices_as_target():
    autoencoder = _autoencoder()
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="sample")
    prepare = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True)
    images = torch.randn(3, 1, 16, 16, 8)
    latents, target, _, _ = prepare({"image": images})
    assert target.shape == (3, 8, 8, 4) and target.dtype == torch.long
    codes = autoencoder.codes()
    assert torch.allclose(latents, codes[target].movedim(-1, 1), atol=1e-6)  # every voxel is the code it is labelled
    assert torch.equal(target, autoencoder.code_indices(autoencoder.encode_stage_2_inputs(images)))  # the nearest one


@pytest.mark.parametrize("code_voxels", [None, 40])
def test_a_code_classifier_trains_with_the_cross_entropy_at_every_voxel_or_at_sampled_ones(code_voxels):
    autoencoder = _autoencoder()
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="sample")
    prepare = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, code_voxels=code_voxels)
    codes = autoencoder.codes()
    net = DepthAttentionUNet(4, out_channels=len(codes), channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    data = [{"image": torch.randn(1, 16, 16, 8)} for _ in range(4)]
    losses = []
    trainer = SupervisedTrainer(
        device="cpu", max_epochs=10, train_data_loader=torch.utils.data.DataLoader(data, batch_size=2), network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=2e-3), loss_function=torch.nn.CrossEntropyLoss(),
        inferer=SampledVoxelsInferer(scheduler), prepare_batch=prepare, decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach().item()))
    trainer.run()
    assert losses[0] == pytest.approx(float(torch.log(torch.tensor(len(codes)))), rel=0.2)  # about uniform at first
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_code_classification_needs_the_sample_prediction_type():
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="code_classification true.*set prediction_type 'sample', not 'v_prediction'"):
        LatentDiffusionPrepareBatch(_autoencoder(), 300, scheduler, code_classification=True)
    with pytest.raises(ValueError, match="code_classification must be true or false, got 'yes'"):
        LatentDiffusionPrepareBatch(_autoencoder(), 300, code_classification="yes")


def test_sampled_voxels_are_distinct_their_targets_the_codes_there_and_the_inferer_hands_them_to_the_network():
    autoencoder = _autoencoder()
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="sample")
    images = torch.randn(3, 1, 16, 16, 8)
    torch.manual_seed(0)
    latents, target, _, kwargs = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, code_voxels=50)(
        {"image": images})
    voxels = kwargs["voxels"]
    assert voxels.shape == target.shape == (3, 50) and all(len(set(row.tolist())) == 50 for row in voxels)
    assert torch.equal(target, autoencoder.code_indices(latents).flatten(1).gather(1, voxels))
    net = DepthAttentionUNet(4, out_channels=64, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    inferer = SampledVoxelsInferer(scheduler)
    with torch.no_grad():
        chosen = inferer(latents, net, kwargs["noise"], kwargs["timesteps"], voxels=voxels)
        full = inferer(latents, net, kwargs["noise"], kwargs["timesteps"])  # MONAI's call: every voxel
    assert chosen.shape == (3, 64, 50) and full.shape == (3, 64, 8, 8, 4)
    assert torch.allclose(chosen, full.flatten(2).gather(2, voxels[:, None].expand(-1, 64, -1)), atol=1e-5)
    with pytest.raises(ValueError, match=r"code_voxels is 300 but a latent of \(8, 8, 4\) has 256 voxels"):
        LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, code_voxels=300)({"image": images})
    for wrong in (0, 2.5, True):
        with pytest.raises(ValueError, match="code_voxels must be a positive integer or None"):
            LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, code_voxels=wrong)


class _NearestCodeOracle(torch.nn.Module):
    """A perfect code classifier at low noise: the logits are minus the distances of each voxel to every code."""

    def __init__(self, codes: torch.Tensor) -> None:
        super().__init__()
        self.codes = codes

    def forward(self, x, timesteps, context=None, voxels=None):
        flat = x.flatten(2).transpose(1, 2)  # (B, voxels, C)
        logits = -100 * torch.cdist(flat, self.codes[None].expand(len(x), -1, -1)).transpose(1, 2)  # (B, K, voxels)
        if voxels is not None:
            return logits.gather(2, voxels[:, None].expand(-1, logits.shape[1], -1))
        return logits.reshape(len(x), -1, *x.shape[2:])


@pytest.mark.parametrize("code_voxels", [None, 40])
def test_the_loss_of_a_perfect_classifier_is_zero_so_targets_and_predictions_are_of_the_same_voxels(code_voxels):
    autoencoder = _autoencoder()
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="sample")
    prepare = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, code_voxels=code_voxels)
    prepare.get_timesteps = lambda images: torch.zeros(len(images), dtype=torch.long)  # the least noisy step
    inputs, target, _, kwargs = prepare({"image": torch.randn(3, 1, 16, 16, 8)})
    logits = SampledVoxelsInferer(scheduler)(inputs, _NearestCodeOracle(autoencoder.codes()), **kwargs)
    loss = torch.nn.CrossEntropyLoss()
    assert float(loss(logits, target)) < 0.05
    assert float(loss(logits, target.roll(1, dims=-1))) > 1.0  # the same codes one voxel off: far from it


def test_the_latent_cache_gives_the_batches_that_encoding_every_batch_gives():
    autoencoder = _autoencoder().eval()
    images = torch.randn(3, 1, 16, 16, 8)
    cached = LatentDiffusionPrepareBatch(autoencoder, 300, latent_cache_mb=16)
    for _ in range(2):  # filled, then read
        latents = cached({"image": images})[0]
        assert torch.allclose(latents, autoencoder.encode_stage_2_inputs(images), atol=1e-6)
    assert (cached.latent_cache.hits, cached.latent_cache.misses) == (3, 3)
    scheduler = DDPMScheduler(num_train_timesteps=300, schedule="cosine", prediction_type="sample")
    snapped = LatentDiffusionPrepareBatch(autoencoder, 300, scheduler, code_classification=True, latent_cache_mb=16)
    snapped({"image": images})
    latents, target, _, _ = snapped({"image": images})
    expected, indices = autoencoder.snap_to_codes(autoencoder.encode_stage_2_inputs(images))
    assert torch.allclose(latents, expected, atol=1e-6) and torch.equal(target, indices)

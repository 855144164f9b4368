from __future__ import annotations

import importlib.util

import pytest
import torch
from monai.networks.nets import PatchDiscriminator

from common import losses
from common.losses import (
    VQGANLoss,
    build_perceptual_loss,
    depth_slices,
    feature_matching_loss,
    hinge_discriminator_loss,
)


def _loss(**kwargs) -> VQGANLoss:
    image_d = PatchDiscriminator(spatial_dims=2, in_channels=1, channels=4, num_layers_d=2)
    volume_d = PatchDiscriminator(spatial_dims=3, in_channels=1, channels=4, num_layers_d=2)
    settings = dict(perceptual_weight=0.0, adversarial_start=5)
    settings.update(kwargs)
    return VQGANLoss(image_d, volume_d, **settings)


def test_depth_slices_takes_each_volumes_own_slice():
    volumes = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 1, 3, 4, 5)
    out = depth_slices(volumes, torch.tensor([1, 4]))
    assert torch.equal(out[0, 0], volumes[0, 0, :, :, 1])
    assert torch.equal(out[1, 0], volumes[1, 0, :, :, 4])


def test_feature_matching_is_zero_for_identical_features_and_ignores_logits():
    feats = [torch.ones(1, 2, 3), torch.zeros(1, 1, 2)]
    other_logits = [torch.ones(1, 2, 3), torch.full((1, 1, 2), 9.0)]
    assert feature_matching_loss(feats, other_logits) == 0
    assert feature_matching_loss([torch.zeros(1, 2, 3), feats[1]], feats) == 1


def test_adversarial_terms_start_after_the_configured_iteration():
    loss = _loss()
    real, fake = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16, requires_grad=True)
    index = torch.tensor([0, 3])
    early = loss.generator_loss(real, fake, torch.tensor(0.1), index, iteration=5)
    assert set(early) == {"l1", "commitment", "loss"}
    assert torch.isclose(early["loss"], 4 * early["l1"] + 0.1)
    late = loss.generator_loss(real, fake, torch.tensor(0.1), index, iteration=6)
    assert {"image_gan", "volume_gan", "feature_matching"} <= set(late)
    expected = 4 * late["l1"] + 0.1 + late["image_gan"] + late["volume_gan"] + 16 * late["feature_matching"]
    assert torch.isclose(late["loss"], expected)
    late["loss"].backward()
    assert fake.grad is not None
    disc = loss.discriminator_loss(real, fake, index)
    assert disc["loss"] > 0 and torch.isclose(disc["loss"], disc["image_disc"] + disc["volume_disc"])


def test_the_discriminators_hinge_is_on_the_raw_logits():
    # 0.5 * (relu(1 - real) + relu(1 + fake)): logits of 0 cost 1; +12 on both costs 0.5 * (0 + 13), not the 1 that a
    # tanh before the hinge (MONAI's PatchAdversarialLoss) gives every saturated discriminator
    assert hinge_discriminator_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3)) == 1
    logits = torch.full((2, 1, 3), 12.0, requires_grad=True)
    fake = torch.full((2, 1, 3), 12.0, requires_grad=True)
    loss = hinge_discriminator_loss(logits, fake)
    assert torch.isclose(loss, torch.tensor(6.5))
    loss.backward()
    assert torch.all(fake.grad > 0) and torch.all(logits.grad == 0)  # pushes fake down; real is past its margin


def test_a_discriminator_that_rates_everything_real_learns_to_tell_reconstructions_apart():
    torch.manual_seed(0)
    loss = _loss()
    volume_d = loss.volume_discriminator
    last = [m for m in volume_d.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.bias.fill_(10.0)  # every logit far past the hinge's margin: "real"
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-2)
    real = torch.rand(2, 1, 16, 16, 16)
    fake = torch.nn.functional.avg_pool3d(real, 3, stride=1, padding=1)  # blurred
    index = torch.tensor([3, 8])
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        terms = loss.discriminator_loss(real, fake, index)
        terms["loss"].backward()
        optimizer.step()
        history.append(float(terms["volume_disc"].detach()))
    assert history[0] > 5  # 0.5 * (0 + ~11): a tanh before the hinge would read 1 here, and give no gradient
    assert history[-1] < 2  # back inside the hinge's margin (0.9 to 1.0 over seeds 0 to 3)
    with torch.no_grad():  # and it rates the blurred volume below the real one (by 0.06 to 0.25 over seeds 0 to 3)
        assert volume_d(real)[-1].mean() > volume_d(fake)[-1].mean()


def test_adversarial_balance_is_the_ratio_of_the_gradient_norms_at_the_layer():
    weight = torch.ones(2, 3, requires_grad=True)
    balance = losses.adversarial_balance((3 * weight).sum(), (12 * weight).sum(), weight)
    assert torch.isclose(balance, torch.tensor(0.25), atol=1e-5) and not balance.requires_grad
    # no adversarial gradient at the layer: the factor is clamped, not infinite
    assert losses.adversarial_balance((3 * weight).sum(), torch.zeros(()) + 0 * weight.sum(), weight) == 1e4


def test_adaptive_adversarial_weight_gives_the_gan_terms_the_reconstructions_gradient_at_the_last_layer():
    torch.manual_seed(0)
    last_layer = torch.nn.Conv3d(2, 1, 3, padding=1)
    real, features = torch.rand(2, 1, 16, 16, 16) * 2 - 1, torch.rand(2, 2, 16, 16, 16)
    index = torch.tensor([0, 3])
    loss = _loss(adaptive_adversarial_weight=True, feature_matching_weight=0.0, image_gan_weight=0.5, volume_gan_weight=0.5)
    fake = last_layer(features)
    terms = loss.generator_loss(real, fake, torch.tensor(0.0), index, iteration=6, last_layer=last_layer.weight)
    gradient = {name: torch.autograd.grad(term, last_layer.weight, retain_graph=True)[0].norm()
                for name, term in (("reconstruction", 4 * terms["l1"]), ("adversarial", terms["loss"] - 4 * terms["l1"]))}
    # weights 0.5 and 0.5: the adversarial terms' gradient is half the reconstruction's (1 at weights 1)
    assert torch.isclose(gradient["adversarial"], 0.5 * gradient["reconstruction"], rtol=1e-3), gradient
    assert torch.isclose(terms["loss"], 4 * terms["l1"] + 0.5 * terms["adversarial_balance"] * (terms["image_gan"] + terms["volume_gan"]))
    with pytest.raises(ValueError, match="adaptive_adversarial_weight needs last_layer"):
        loss.generator_loss(real, last_layer(features), torch.tensor(0.0), index, iteration=6)
    assert "adversarial_balance" not in loss.generator_loss(real, fake, torch.tensor(0.0), index, iteration=5)


def test_scale_equivariance_term_compares_the_pooled_decoding_with_the_image_pooled_alike():
    loss = _loss(scale_equivariance_weight=2.0)
    real, fake = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    pooled_real = torch.nn.functional.avg_pool3d(real, 2)
    index = torch.tensor([0, 3])
    exact = loss.generator_loss(real, fake, torch.tensor(0.0), index, iteration=1, pooled_fake=pooled_real)
    assert exact["scale_equivariance"] == 0 and torch.isclose(exact["loss"], 4 * exact["l1"])
    off = loss.generator_loss(real, fake, torch.tensor(0.0), index, iteration=1, pooled_fake=pooled_real + 0.25)
    assert torch.isclose(off["scale_equivariance"], torch.tensor(0.25))
    assert torch.isclose(off["loss"], 4 * off["l1"] + 2 * 0.25)
    with pytest.raises(ValueError, match="needs pooled_fake"):
        loss.generator_loss(real, fake, torch.tensor(0.0), index, iteration=1)
    assert "scale_equivariance" not in _loss().generator_loss(real, fake, torch.tensor(0.0), index, iteration=1)


def test_scale_equivariance_refuses_a_decoding_that_is_not_the_image_pooled_by_one_factor():
    loss = _loss(scale_equivariance_weight=1.0)
    real, index = torch.rand(1, 1, 8, 8, 6), torch.tensor([0])
    with pytest.raises(ValueError, match=r"spatial size \(4, 4, 2\) is not the image's \(8, 8, 6\) divided by one factor"):
        loss.generator_loss(real, real, torch.tensor(0.0), index, iteration=1, pooled_fake=torch.rand(1, 1, 4, 4, 2))


def test_scale_factor_divides_the_latent_and_is_1_when_the_term_is_off():
    loss = _loss(scale_equivariance_weight=1.0)
    assert {loss.scale_factor([8, 8, 8]) for _ in range(40)} == {2, 4}
    assert {loss.scale_factor([8, 8, 6]) for _ in range(10)} == {2}  # 6 is not divisible by 4
    assert _loss().scale_factor([5, 5, 5]) == 1
    with pytest.raises(ValueError, match=r"divides no latent of spatial size \(8, 5, 8\)"):
        loss.scale_factor([8, 5, 8])


def test_the_scale_factor_draws_leave_the_global_random_state_alone():
    """The term's factors come from the loss's own generator: turning it on does not change the data order."""
    torch.manual_seed(3)
    loss = _loss(scale_equivariance_weight=1.0)
    before = torch.get_rng_state()
    draws = [loss.scale_factor([8, 8, 8]) for _ in range(20)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(3)
    again = _loss(scale_equivariance_weight=1.0)
    assert [again.scale_factor([8, 8, 8]) for _ in range(20)] == draws and set(draws) == {2, 4}  # seeded alike


def test_the_size_check_before_training_refuses_a_latent_no_factor_divides():
    losses.check_scale_equivariance(1.0, [24, 24, 12], 2)  # latent 12, 12, 6: pooled by 2
    losses.check_scale_equivariance(0.0, [18, 18, 18], 2)  # the term off: any size
    with pytest.raises(ValueError, match=r"divides no latent of spatial size \(9, 9, 9\)"):
        losses.check_scale_equivariance(1.0, [18, 18, 18], 2)


@pytest.mark.parametrize(
    "name", ["l1_weight", "perceptual_weight", "image_gan_weight", "volume_gan_weight", "feature_matching_weight",
             "scale_equivariance_weight"]
)
def test_negative_loss_weights_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0, got -1"):
        _loss(**{name: -1.0})


def test_perceptual_weight_needs_a_perceptual_loss():
    with pytest.raises(ValueError, match="perceptual_weight to 0"):
        _loss(perceptual_weight=4.0, perceptual_loss=None)


def test_perceptual_term_is_weighted_on_the_slice():
    class MeanGap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.5)  # LPIPS heads have dropout: must stay off during VQ-GAN training

        def forward(self, x, y):
            assert x.ndim == 4  # a 2D slice batch
            return (x - y).mean().abs()

    loss = _loss(perceptual_weight=2.0, perceptual_loss=MeanGap()).train()
    assert loss.image_discriminator.training and not loss.perceptual_loss.training
    real, fake = torch.zeros(1, 1, 8, 8, 4), torch.ones(1, 1, 8, 8, 4)
    terms = loss.generator_loss(real, fake, torch.tensor(0.0), torch.tensor([1]), iteration=1)
    assert torch.isclose(terms["perceptual"], torch.tensor(1.0))
    assert torch.isclose(terms["loss"], torch.tensor(4.0 + 2.0))


def test_perceptual_loss_errors_are_plain(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="network_type"):
        build_perceptual_loss("resnet9")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(losses.importlib.util, "find_spec", lambda name: None if name == "lpips" else real_find_spec(name))
    with pytest.raises(ImportError, match="perceptual_weight to 0"):
        build_perceptual_loss("alex")
    monkeypatch.setattr(losses.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_perceptual_loss("alex", cache_dir=str(tmp_path))


def test_too_small_input_for_the_discriminator_says_what_to_change():
    loss = _loss(adversarial_start=0)
    real = torch.rand(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="too small for a 2D patch discriminator with 2 layers"):
        loss.generator_loss(real, real.clone(), torch.tensor(0.0), torch.tensor([0, 1]), iteration=1)


def test_lpips_from_a_local_weights_folder(tmp_path):
    """Runs where lpips and torchvision are installed (not in the default test install): a weights file in the
    torch-hub layout is used offline. The weights here are random; only the loading path is under test."""
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("lpips")
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    loss = build_perceptual_loss("alex", cache_dir=str(tmp_path))
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert float(loss(x, x)) == 0.0 and float(loss(x, y)) > 0.0

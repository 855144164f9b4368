from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.networks.nets import PatchDiscriminator
from monai.transforms import Compose, EnsureTyped, RandFlipd, ScaleIntensityd

from common.engines import VQGANTrainer
from common.engines.vqgan_trainer import last_decoder_weight
from common.losses import VQGANLoss
from tests.bundles.bundle_runs import SMALL_AUTOENCODER, SMALL_SHARED, error_chain
from tests.helpers import tiny_vqgan

REPO = Path(__file__).resolve().parents[2]


def _reconstruction_error(vqgan, volume: torch.Tensor) -> float:
    vqgan.eval()
    with torch.no_grad():
        recon, _ = vqgan(volume)
    return float((recon - volume).abs().mean())


def _bundle_trainer(tmp_path: Path, batches: int | list[dict], **overrides):
    """The brain bundle's VQ-GAN trainer at a tiny size for one epoch over ``batches`` (a count of random batches of
    2 volumes of 16^3, or the batches themselves), with ``overrides`` of its config ids."""
    if isinstance(batches, int):
        batches = [{"image": torch.rand(2, 1, 16, 16, 16) * 2 - 1} for _ in range(batches)]
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "brain_mri" / "configs" / "train_autoencoder.json"))
    parser.update({
        "bundle_root": str(REPO / "bundles" / "brain_mri"), "device": "$torch.device('cpu')", "ckpt_dir": str(tmp_path),
        "log_dir": str(tmp_path / "logs"), "initialize": [], "image_size": [16, 16, 16], **SMALL_SHARED, **SMALL_AUTOENCODER,
        "train#handlers": [], "train#trainer#max_epochs": 1, "train#dataloader": "$@_batches", "_batches": batches, **overrides,
    })
    return parser.get_parsed_content("train#trainer")


def test_vqgan_learns_to_reconstruct_a_real_t1_volume(real_t1):
    """Seconds of training on nibabel's real T1 crop: the quantised reconstruction error must fall well
    below its starting value, with both discriminators switched on part way, and codebook usage logged."""
    volume = real_t1[:32, :40, :24][None]  # (1, 32, 40, 24), divisible by the compression
    transform = Compose(
        [
            ScaleIntensityd("image", minv=-1.0, maxv=1.0),
            RandFlipd("image", prob=0.5, spatial_axis=0),
            EnsureTyped("image", track_meta=False),
        ]
    )
    loader = DataLoader(Dataset([{"image": volume}] * 8, transform), batch_size=2, shuffle=True)
    vqgan = tiny_vqgan(base_channels=8, num_embeddings=256, embedding_dim=8)
    image_d = PatchDiscriminator(spatial_dims=2, in_channels=1, channels=8, num_layers_d=2)
    volume_d = PatchDiscriminator(spatial_dims=3, in_channels=1, channels=8, num_layers_d=2)
    loss = VQGANLoss(image_d, volume_d, perceptual_weight=0.0, adversarial_start=80)
    scaled = torch.as_tensor(ScaleIntensityd("image", minv=-1.0, maxv=1.0)({"image": volume})["image"])[None]
    start_error = _reconstruction_error(vqgan, scaled)

    trainer = VQGANTrainer(
        device="cpu",
        max_epochs=25,
        train_data_loader=loader,
        network=vqgan,
        optimizer=torch.optim.Adam(vqgan.parameters(), lr=2e-3, betas=(0.5, 0.9)),
        loss_function=loss,
        discriminator_optimizer=torch.optim.Adam(list(image_d.parameters()) + list(volume_d.parameters()), lr=2e-3),
    )
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["losses"]))
    trainer.run()

    end_error = _reconstruction_error(vqgan, scaled)
    print(f"VQ-GAN reconstruction L1 on the real T1 crop: start {start_error:.4f}, end {end_error:.4f}")
    assert end_error < 0.35 * start_error, (start_error, end_error)  # 0.23 here in 100 iterations (seeded)
    assert {"perplexity", "codebook_usage", "codebook_restarts", "l1", "commitment"} <= set(logged[0])
    assert "image_gan" not in logged[79] and {"image_gan", "volume_gan", "disc_loss"} <= set(logged[80])
    assert all(np.isfinite(v) for v in logged[-1].values())
    assert logged[-1]["perplexity"] > 1.0


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # this test's hooks, on the input convolution
def test_bundle_trainer_under_bfloat16_on_a_cpu_runs_its_steps_without_onednn(amp, tmp_path):
    """oneDNN's CPU bfloat16 3D-convolution weight gradients were now and then non-finite (torch 2.13, Zen 4): the
    bundle's VQ-GAN trainer, with amp on a CPU (bfloat16), runs both steps, forward and backward, without it; in
    float32 it keeps it."""
    trainer = _bundle_trainer(tmp_path, 2, adversarial_start=0, **{"train#trainer#amp": amp,
                                                                   "train#trainer#amp_dtype": "bfloat16" if amp else None})
    seen: list[bool] = []
    record = lambda *_: seen.append(torch.backends.mkldnn.enabled)  # noqa: E731
    for module in (trainer.network, trainer.loss_function.volume_discriminator.final_conv.conv):
        module.register_forward_hook(record)
        module.register_full_backward_hook(record)
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["losses"]))
    trainer.run()

    assert len(seen) >= 2 * 4 and set(seen) == {torch.backends.mkldnn.is_available() and not amp}
    assert torch.backends.mkldnn.enabled == torch.backends.mkldnn.is_available()  # as it was before the run
    assert len(logged) == 2 and "disc_loss" in logged[-1] and all(np.isfinite(v) for v in logged[-1].values())


def test_bundle_trainer_balances_the_adversarial_terms_at_the_decoders_last_weight(tmp_path):
    """With ``loss#adaptive_adversarial_weight`` the bundle's trainer hands the loss the decoder's output weight once
    the adversarial terms count, and logs the balance; before that it computes none."""
    trainer = _bundle_trainer(tmp_path, 3, adversarial_start=1, **{"loss#adaptive_adversarial_weight": True})
    given, generator_loss = [], trainer.loss_function.generator_loss
    trainer.loss_function.generator_loss = lambda *a, **k: given.append(k.get("last_layer")) or generator_loss(*a, **k)
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["losses"]))
    trainer.run()

    output_weight = [p for p in trainer.network.decoder.parameters() if p.ndim > 1][-1]
    assert output_weight.shape[1] == 1  # the transposed convolution to the one image channel
    assert given[0] is None and all(layer is output_weight for layer in given[1:])
    assert "adversarial_balance" not in logged[0]
    assert all(np.isfinite(step["adversarial_balance"]) and step["adversarial_balance"] > 0 for step in logged[1:])
    with pytest.raises(ValueError, match="needs an autoencoder with a decoder holding weights; Linear has none"):
        last_decoder_weight(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs an autoencoder with a decoder holding weights; Linear has none"):
        # refused when the trainer is built, before any step
        VQGANTrainer("cpu", 1, [], torch.nn.Linear(2, 2), trainer.optimizer, trainer.loss_function, trainer.discriminator_optimizer)


def _pooled_decoding_error(vqgan, volumes: torch.Tensor) -> float:
    """L1 between the decoding of the latent pooled by 2 and the volumes pooled by 2."""
    vqgan.eval()
    with torch.no_grad():
        _, _, pooled = vqgan(volumes, 2)
    return float((pooled - torch.nn.functional.avg_pool3d(volumes, 2)).abs().mean())


def test_bundle_scale_equivariance_teaches_the_decoder_to_decode_a_pooled_latent(real_t1, tmp_path):
    """The bundle's VQ-GAN stage with ``scale_equivariance_weight`` > 0 logs the term, and the same training with it
    decodes the pooled latent into the pooled volume closer than without it (from the same start and batches)."""
    volume = torch.as_tensor(real_t1[:16, :16, :16])[None, None]
    volume = (volume - volume.min()) / (volume.max() - volume.min()) * 2 - 1
    batches = [{"image": torch.cat([volume, volume.flip(2)])} for _ in range(100)]
    errors, logged = {}, []
    for weight in (0.0, 4.0):
        torch.manual_seed(0)
        trainer = _bundle_trainer(tmp_path, batches, lr=4e-3, adversarial_start=1000, scale_equivariance_weight=weight)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["losses"]))
        trainer.run()
        errors[weight] = _pooled_decoding_error(trainer.network, volume)
    print(f"pooled decoding L1 without the term {errors[0.0]:.3f}, with it {errors[4.0]:.3f}")
    assert "scale_equivariance" not in logged[0] and "scale_equivariance" in logged[-1]
    term = [step["scale_equivariance"] for step in logged[100:]]
    assert sum(term[-20:]) < 0.75 * sum(term[:20])  # it falls while it trains (0.56 here; factors 2 and 4 in both windows)
    assert errors[4.0] < 0.8 * errors[0.0], errors  # 0.13 against 0.20 here (seeded)


def test_bundle_trainer_fits_the_decoder_alone_to_a_frozen_codebook_in_its_last_iterations(tmp_path):
    """``frozen_codebook_iterations``: in the run's last N iterations (of max_epochs x the epoch's) the encoder and the
    codebook stay exactly as they were (no EMA update, no restart) while the decoder and the discriminators still
    learn; before them everything trains. The log says which iterations were frozen."""
    torch.manual_seed(0)
    trainer = _bundle_trainer(tmp_path, 3, adversarial_start=2, frozen_codebook_iterations=2, **{"train#trainer#max_epochs": 2})
    vqgan = trainer.network
    parts = {"encoder": vqgan.encoder, "decoder": vqgan.decoder, "discriminator": trainer.loss_function.volume_discriminator}
    snapshots, logged = [], []

    def snapshot(engine):
        state = {name: [p.detach().clone() for p in part.parameters()] for name, part in parts.items()}
        state["codebook"] = [vqgan.codebook.embedding.weight.detach().clone()]
        snapshots.append(state)
        logged.append(engine.state.output["losses"])

    trainer.add_event_handler(Events.STARTED, lambda e: snapshots.append(None))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, snapshot)
    trainer.run()

    def changed(name: str, before: int, after: int) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(snapshots[before][name], snapshots[after][name]))

    assert [step["codebook_frozen"] for step in logged] == [0, 0, 0, 0, 1, 1]
    assert changed("encoder", 1, 4) and changed("codebook", 1, 4)  # trained before the frozen phase
    assert not changed("encoder", 4, 6) and not changed("codebook", 4, 6)
    assert changed("decoder", 4, 6) and changed("discriminator", 4, 6)
    assert "codebook_usage" in logged[3] and "codebook_usage" not in logged[4] and "codebook_restarts" not in logged[5]
    assert all(np.isfinite(v) for v in logged[-1].values())


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bundle_trainer_refuses_a_frozen_codebook_phase_that_is_not_a_count(value, tmp_path):
    with pytest.raises(Exception) as raised:
        _bundle_trainer(tmp_path, 2, frozen_codebook_iterations=value)
    assert f"frozen_codebook_iterations must be an integer >= 0, got {value!r}" in error_chain(raised.value)


def test_bundle_trainer_refuses_a_frozen_codebook_phase_as_long_as_the_run(tmp_path):
    """A run whose every iteration would be frozen would never train the encoder or the codebook, and one whose
    length is unknown cannot say which iterations are its last: both refused when the trainer is built."""
    with pytest.raises(Exception) as raised:
        _bundle_trainer(tmp_path, 3, frozen_codebook_iterations=6, **{"train#trainer#max_epochs": 2})
    assert "frozen_codebook_iterations (6) must be fewer than the run's 6 iterations (max_epochs 2 x 3" in error_chain(raised.value)

    built = _bundle_trainer(tmp_path, 3)
    unsized = (batch for batch in built.data_loader)  # no len()
    with pytest.raises(ValueError, match="frozen_codebook_iterations needs the run's length"):
        VQGANTrainer("cpu", 1, unsized, built.network, built.optimizer, built.loss_function, built.discriminator_optimizer,
                     frozen_codebook_iterations=3)
    assert VQGANTrainer("cpu", 1, unsized, built.network, built.optimizer, built.loss_function, built.discriminator_optimizer,
                        epoch_length=4, frozen_codebook_iterations=np.int64(3)).frozen_codebook_iterations == 3

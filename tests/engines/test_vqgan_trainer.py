from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.networks.nets import PatchDiscriminator
from monai.transforms import Compose, EnsureTyped, RandFlipd, ScaleIntensityd

from common.engines import VQGANTrainer
from common.losses import VQGANLoss
from tests.conftest import tiny_vqgan


def _reconstruction_error(vqgan, volume: torch.Tensor) -> float:
    vqgan.eval()
    with torch.no_grad():
        recon, _ = vqgan(volume)
    return float((recon - volume).abs().mean())


def test_vqgan_learns_to_reconstruct_a_real_t1_volume(real_t1):
    """A few minutes of training on nibabel's real T1 crop: the quantised reconstruction error must fall well
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
    loss = VQGANLoss(image_d, volume_d, perceptual_weight=0.0, adversarial_start=240)
    scaled = torch.as_tensor(ScaleIntensityd("image", minv=-1.0, maxv=1.0)({"image": volume})["image"])[None]
    start_error = _reconstruction_error(vqgan, scaled)

    trainer = VQGANTrainer(
        device="cpu",
        max_epochs=70,
        train_data_loader=loader,
        network=vqgan,
        optimizer=torch.optim.Adam(vqgan.parameters(), lr=1e-3, betas=(0.5, 0.9)),
        loss_function=loss,
        discriminator_optimizer=torch.optim.Adam(list(image_d.parameters()) + list(volume_d.parameters()), lr=1e-3),
    )
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["losses"]))
    trainer.run()

    end_error = _reconstruction_error(vqgan, scaled)
    print(f"VQ-GAN reconstruction L1 on the real T1 crop: start {start_error:.4f}, end {end_error:.4f}")
    assert end_error < 0.35 * start_error, (start_error, end_error)
    assert {"perplexity", "codebook_usage", "codebook_restarts", "l1", "commitment"} <= set(logged[0])
    assert "image_gan" not in logged[239] and {"image_gan", "volume_gan", "disc_loss"} <= set(logged[240])
    assert all(np.isfinite(v) for v in logged[-1].values())
    assert logged[-1]["perplexity"] > 1.0

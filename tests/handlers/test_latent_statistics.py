from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.handlers import LatentStatistics, measure_latents
from common.networks import CodebookRangeAutoencoder, LatentScale
from tests.helpers import tiny_vqgan


def _autoencoder(scaling: str = "codebook_range") -> CodebookRangeAutoencoder:
    vqgan = tiny_vqgan().train()
    vqgan(torch.randn(2, 1, 16, 16, 8))
    return CodebookRangeAutoencoder(vqgan.eval(), latent_scale=LatentScale(scaling))


def _loader(count: int = 6) -> torch.utils.data.DataLoader:
    data = [{"image": torch.randn(1, 16, 16, 8)} for _ in range(count)]
    return torch.utils.data.DataLoader(data, batch_size=2)


def _run(handler: LatentStatistics, loader) -> Engine:
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run(loader, max_epochs=1)
    return engine


def test_the_statistics_are_those_of_the_latents_of_the_volumes_measured():
    autoencoder = _autoencoder()
    loader = _loader()
    found = measure_latents(autoencoder, loader, max_volumes=3)  # one and a half batches
    with torch.no_grad():
        latents = autoencoder.codebook_range_latents(torch.cat([b["image"] for b in loader])[:3])
    assert found["volumes"] == 3
    assert found["mean"] == pytest.approx(float(latents.mean()), abs=1e-5)
    assert found["std"] == pytest.approx(float(latents.std(unbiased=False)), rel=1e-4)
    assert found["min"] == pytest.approx(float(latents.min())) and found["max"] == pytest.approx(float(latents.max()))
    per_channel = latents.transpose(0, 1).flatten(1).std(1, unbiased=False)
    assert found["channel_std"] == pytest.approx([float(s) for s in per_channel], rel=1e-4)


def test_unit_variance_is_fitted_once_and_logged_to_tensorboard(tmp_path, caplog):
    autoencoder = _autoencoder("unit_variance")
    handler = LatentStatistics(autoencoder, max_volumes=4, log_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        _run(handler, _loader())
    std = handler.statistics["std"]
    assert float(autoencoder.latent_scale.factor()) == pytest.approx(1 / std) and handler.statistics["given_std"] == pytest.approx(1.0)
    assert "latent_scaling unit_variance (scale" in caplog.text and "the denoiser is given std 1.000" in caplog.text
    assert "signal-to-noise" not in caplog.text  # unit variance: nothing to warn about
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"latent/std", "latent/scale", "latent/given_std", "latent/std_channel_0"} <= set(events.Tags()["scalars"])
    # a resumed run keeps the scale it was trained with (the resumer loaded it before this handler runs)
    autoencoder.latent_scale.value.fill_(7.0)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _run(LatentStatistics(autoencoder, max_volumes=4), _loader())
    assert float(autoencoder.latent_scale.factor()) == 7.0 and "from the checkpoint" in caplog.text
    # resumed under another latent_target_std than the checkpoint's scale gives: kept, and said
    assert "not the latent_target_std 1.0 configured" in caplog.text
    autoencoder.latent_scale.value.fill_(1 / std)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _run(LatentStatistics(autoencoder, max_volumes=4), _loader())
    assert "from the checkpoint" in caplog.text and "latent_target_std" not in caplog.text  # as configured: no warning


def test_latents_far_from_unit_variance_are_warned_about_with_the_setting_that_helps(caplog):
    autoencoder = _autoencoder()
    with caplog.at_level(logging.WARNING):
        handler = LatentStatistics(autoencoder, max_volumes=4)
        _run(handler, _loader())
    given = handler.statistics["given_std"]
    assert given < 0.5  # codebook-range latents of a VQ-GAN are far narrower than the noise
    assert f"latents of std {given:.3f}" in caplog.text and "latent_scaling 'unit_variance'" in caplog.text
    assert f"{20 * torch.log10(torch.tensor(given)):+.1f} dB" in caplog.text


def test_a_target_standard_deviation_below_one_is_fitted_and_the_warning_names_its_setting(caplog):
    autoencoder = _autoencoder()
    autoencoder.latent_scale = LatentScale("unit_variance", target_std=0.3)
    with caplog.at_level(logging.WARNING):
        handler = LatentStatistics(autoencoder, max_volumes=4)
        _run(handler, _loader())
    assert handler.statistics["given_std"] == pytest.approx(0.3, rel=1e-6)
    assert "latents of std 0.300" in caplog.text and "latent_target_std sets the std" in caplog.text
    assert "scales them to std 1" not in caplog.text  # not the advice for the paper's codebook range


def test_a_sliver_of_the_codebook_range_is_reported():
    autoencoder = _autoencoder()
    autoencoder.autoencoder.codebook.embedding.weight.data[0] = 100.0  # one stale code far away stretches the range
    logger = logging.getLogger("common.handlers.latent_statistics")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        _run(LatentStatistics(autoencoder, max_volumes=2), _loader())
    finally:
        logger.removeHandler(handler)
    assert sum("stretch the codebook range" in r for r in records) == 1


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="must be a CodebookRangeAutoencoder"):
        LatentStatistics(torch.nn.Identity())
    with pytest.raises(ValueError, match="max_volumes must be >= 1"):
        LatentStatistics(_autoencoder(), max_volumes=0)

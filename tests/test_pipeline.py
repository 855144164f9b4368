"""The demo's own settings, at a small scale: real-anatomy demo brains, held-out reconstruction, the ratios to real,
the pictures, and the summary the demo prints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.pipeline import DEMO_SETTINGS, run_stages, summary
from tests.bundles.bundle_runs import in_repository, isolated_state


def test_the_demo_settings_at_a_small_scale(tmp_path, demo_brains):
    demo_brains(tmp_path / "demo_data")  # where the demo writes its data, made once for the session
    settings = copy.deepcopy(DEMO_SETTINGS["brain_mri"])
    settings["autoencoder"].update({"train#trainer#max_epochs": 2})  # 20 iterations instead of 1,000
    settings["diffusion"].update({"train#trainer#max_epochs": 2, "ema#start_iteration": 10, "guide_iteration": 5})
    settings["inference"].update({"num_samples": 3, "num_inference_steps": 3})
    with in_repository(), isolated_state():
        samples = Path(run_stages("brain_mri", str(tmp_path), None, "autoencoder,diffusion,inference,evaluation", settings, {}))
    metrics = json.loads((samples / "evaluation" / "metrics.json").read_text())
    # the demo samples with autoguidance by the denoiser's own snapshot
    record = json.loads((samples / "samples.json").read_text())
    assert record["autoguidance"] == {"scale": 2.0, "guide": str(tmp_path / "models" / "guide.pt"), "interval": None}
    # and its denoiser names the codes, with their likelihood at the noisy voxel added
    assert record["code_classification"] == {"temperature": 0.5, "likelihood": True}
    recon = metrics["reconstruction"]
    assert recon["volumes"] == "held-out volumes (heldout_dir)" and recon["count"] == 8 and recon["psnr_db"]["mean"] > 5
    assert metrics["real_volumes"] == 20 and "real_heldout" in metrics["diversity_ms_ssim"]
    assert set(metrics["ratios_to_real"]) >= {"diversity_ms_ssim", "mmd", "histogram_wasserstein", "histogram_jensen_shannon", "slice_consistency_ssim", "sharpness", "reconstruction_sharpness"}
    sharpness = metrics["sharpness"]  # the reconstructions' ratio is over their own inputs, the held-out volumes
    assert metrics["ratios_to_real"]["reconstruction_sharpness"] == sharpness["reconstructions"] / sharpness["reconstructed_volumes"]
    assert all(e["nearest_real"].startswith(str(tmp_path / "demo_data" / "train")) for e in metrics["memorisation_audit"]["samples"])
    for picture in ("samples_and_real", "reconstructions", "nearest_neighbours", "training_curves"):
        assert (samples / "evaluation" / f"{picture}.png").is_file(), picture
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "heldout/psnr_db" in tags  # the VQ-GAN training reported its held-out quality, once per measurement
    assert not [tag for tag in tags if tag.startswith("heldout_psnr")]  # and not again per epoch
    printed = summary(metrics, samples / "evaluation", "[brain_mri] ")
    assert "[brain_mri] VQ-GAN reconstruction of 8 held-out volumes: PSNR" in printed and "near copies of a training volume: " in printed
    assert f"sharpness {metrics['ratios_to_real']['sharpness']:.2f}x (reconstructions: " in printed


def test_without_autoguidance_strips_every_autoguidance_id_and_leaves_the_rest():
    from common.pipeline import without_autoguidance

    settings = copy.deepcopy(DEMO_SETTINGS["brain_mri"])
    settings["inference"]["autoguidance_interval"] = [0.2, 0.8]
    alone = without_autoguidance(settings)
    assert "guide_iteration" not in alone["diffusion"] and "guide_iteration" in settings["diffusion"]
    assert not {"guide_path", "autoguidance_scale", "autoguidance_interval"} & set(alone["inference"])
    assert settings["inference"]["autoguidance_interval"] == [0.2, 0.8]  # the settings given are not changed
    assert alone["inference"]["num_inference_steps"] == settings["inference"]["num_inference_steps"]
    assert alone["autoencoder"] == settings["autoencoder"]

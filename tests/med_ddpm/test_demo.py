"""The Med-DDPM demo's own steps and settings, at a small scale: real-anatomy pairs with simulated lesions, the
bundle's training, evaluation and sampling for edited masks, and the summary it prints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.med_ddpm import demo
from common.med_ddpm.demo import CLASS_NAMES, DEMO_SETTINGS, run_demo, summary
from tests.bundles.bundle_runs import in_repository, isolated_state


def test_the_demo_settings_at_a_small_scale(tmp_path, monkeypatch):
    settings = copy.deepcopy(DEMO_SETTINGS)
    settings["shared"]["image_size"] = [16, 16, 16]
    settings["train"].update({"train#trainer#max_epochs": 2, "ema#start_iteration": 1})
    settings["inference"].update({"num_inference_steps": 3})
    settings["evaluation"].update({"num_masks": 4, "samples_for_one_mask": 2, "utility_epochs": 2})
    # at 16^3 a glioma-sized lesion with its oedema fills so much of the brain that no edit can move it: the demo
    # says so before it trains anything
    with in_repository(), isolated_state(), pytest.raises(ValueError, match="only 0 of 2 held-out pairs have a lesion that every edit can place"):
        run_demo(str(tmp_path / "large"), settings, training_pairs=4, heldout_pairs=2, edited_cases=1)
    assert not (tmp_path / "large" / "models").exists()
    monkeypatch.setattr(demo, "LESION_RADIUS", (4.0, 8.0))  # add_lesion's default radii leave room at 16^3
    with in_repository(), isolated_state():
        samples = Path(run_demo(str(tmp_path), settings, training_pairs=4, heldout_pairs=2, edited_cases=1))
    metrics = json.loads((samples / "evaluation" / "metrics.json").read_text())
    assert (metrics["masks"], metrics["test_pairs"]) == (4, 2) and metrics["test_pairs_are"] == "held-out pairs (heldout_dir)"
    utility = metrics["segmentation_utility"]
    assert utility["classes"] == CLASS_NAMES
    for key in ("trained_on_synthetic", "trained_on_real", "trained_on_real_and_synthetic"):
        assert len(utility[key]["dice_per_class"]) == 4, key
    contrast = metrics["class_contrast"]
    assert contrast["against"] == "brain" and list(contrast["per_class"]) == CLASS_NAMES[:3]
    real = {name: values["real"] for name, values in contrast["per_class"].items()}
    assert real["enhancing rim"] > real["necrotic core"]  # the real pairs as the bundle reads them: a rim brighter than the core
    edits = metrics["edited_masks"]
    assert edits["cases"] == 1 and set(edits["class_contrast_ratio_to_real"]) == {"original", "moved", "grown", "added"}
    assert Path(edits["picture"]).stat().st_size > 1000
    written = sorted(p.name for p in (tmp_path / "edited_masks").iterdir())
    assert written == sorted(f"demo_lesion_heldout_000_{v}.nii.gz" for v in ("original", "moved", "grown", "added"))
    original, moved = (np.asarray(nib.load(tmp_path / "edited_masks" / f"demo_lesion_heldout_000_{v}.nii.gz").dataobj) for v in ("original", "moved"))
    assert original.shape == (16, 16, 16) and set(np.unique(original)) <= {0, 1, 2, 3, 4}
    assert nib.load(tmp_path / "edited_masks" / "demo_lesion_heldout_000_moved.nii.gz").header.get_zooms() == (10.0, 12.0, 10.0)  # 2 mm x 80/96/80 / 16
    assert [(moved == c).sum() for c in range(5)] == [(original == c).sum() for c in range(5)] and (moved != original).any()
    records = json.loads((samples / "edited_masks" / "samples.json").read_text())["samples"]
    assert len(records) == 4 and all((samples / "edited_masks" / r["image"]).is_file() for r in records)
    for picture in ("masks_real_synthetic", "one_mask_diversity", "edited_masks"):
        assert (samples / "evaluation" / f"{picture}.png").is_file(), picture
    printed = summary(metrics, samples / "evaluation")
    assert "Dice per class (necrotic core / oedema / enhancing rim / brain)" in printed
    assert "trained on both" in printed and "for moved lesions: necrotic core" in printed and "lesions are simulated" in printed

"""The class-conditional demo's own settings at a small scale: two classes of demo brains, the model trained with
their labels, samples asked for each class at each guidance scale, class consistency and realism per class."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from common.conditional_demo import CONDITIONAL_SETTINGS, run_conditional_demo, summary
from tests.bundles.bundle_runs import in_repository, isolated_state


def test_the_conditional_demo_settings_at_a_small_scale(tmp_path):
    settings = copy.deepcopy(CONDITIONAL_SETTINGS)
    settings["autoencoder"].update({"train#trainer#max_epochs": 2})
    settings["diffusion"].update({"train#trainer#max_epochs": 2, "ema#start_iteration": 2})
    settings["inference"].update({"num_samples": 2, "num_inference_steps": 3})
    with in_repository(), isolated_state():
        samples = Path(run_conditional_demo(str(tmp_path), settings, 2, 1, (1.0, 2.0)))
    metrics = json.loads((samples / "class_metrics.json").read_text())
    consistency = metrics["class_consistency"]
    assert consistency["heldout_real"]["volumes"] == 2
    assert {scale: result["volumes"] for scale, result in consistency["samples_by_guidance_scale"].items()} == {"1": 4, "2": 4}
    assert set(consistency["class_medians"]) == {"normal", "enlarged"}
    assert {k: len(v) for k, v in metrics["ventricle_volume"]["train_real"].items()} == {"normal": 2, "enlarged": 2}
    # each class was sampled with its label and evaluated against the real brains of that class only
    for scale in ("1", "2"):
        for name in ("normal", "enlarged"):
            folder = samples / f"guidance_{scale}" / f"ventricles={name}"
            record = json.loads((folder / "samples.json").read_text())
            assert record["labels"] == [{"ventricles": name}] * 2 and record["guidance_scale"] == float(scale)
            evaluated = json.loads((folder / "evaluation" / "metrics.json").read_text())
            assert evaluated["real_volumes"] == 2 and evaluated["classes"]["real_volumes_of_class"] == {"ventricles": name}
            assert evaluated["reconstruction"]["count"] == 1  # the held-out brain of this class alone
            assert all(f"/train/{name}/" in e["nearest_real"] for e in evaluated["memorisation_audit"]["samples"])
            assert "histogram_jensen_shannon" in metrics["ratios_to_real_per_class"][scale][name]
    profile = consistency["intensity_profile"]  # the generic classifier of evaluate_classes, beside the proxy
    assert profile["heldout_real"]["volumes"] == 2 and set(profile["samples_by_guidance_scale"]) == {"1", "2"}
    assert [c["labels"] for c in metrics["classes_evaluated"]] == [{"ventricles": "normal"}, {"ventricles": "enlarged"}]
    assert (samples / "classes_real_synthetic.png").stat().st_size > 1000
    checkpoint_settings = torch.load(tmp_path / "models" / "diffusion.pt", weights_only=True)["model_settings"]
    assert checkpoint_settings["class_labels"] == {"ventricles": ["normal", "enlarged"]}
    printed = summary(metrics, samples)
    assert "held-out real brains: " in printed and "samples at guidance scale 2: " in printed and "intensity profile" in printed

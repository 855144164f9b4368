"""evaluate.json on a tiny trained brain_mri model: metrics.json, the pictures, and the audit on known copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.transforms import Randomizable
from monai.bundle import ConfigParser

from common.sampling import save_nifti, volume_affine
from tests.bundles.bundle_runs import REPO, run_bundle
from tests.bundles.conftest import CONFIGS, EVALUATE


def test_evaluate_writes_every_metric_and_flags_training_volumes(evaluated_brain_model, tmp_path):
    brains, common, out = evaluated_brain_model["brains"], evaluated_brain_model["args"], evaluated_brain_model["evaluated"]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert (metrics["samples"], metrics["real_volumes"], metrics["image_size"]) == (3, 5, [32, 32, 32])
    assert 0 <= metrics["diversity_ms_ssim"]["synthetic"] <= 1 and 0 <= metrics["diversity_ms_ssim"]["real"] < 1
    assert {"synthetic_vs_real", "real_half_vs_half"} <= set(metrics["intensity_histogram"]) and "skipped" in metrics["fid"]
    assert metrics["reconstruction"]["psnr_db"]["mean"] > 0 and metrics["memorisation_audit"]["real_volumes_searched"] == 5
    assert all(entry["nearest_real"].startswith(str(brains)) for entry in metrics["memorisation_audit"]["samples"])
    for picture in ("samples_and_real", "adjacent_slices", "nearest_neighbours", "training_curves"):
        assert (out / "evaluation" / f"{picture}.png").is_file(), picture

    # the training volumes themselves, preprocessed as the model sees them, given as "samples": all are copies
    parser = ConfigParser()
    parser.read_config([str(REPO / CONFIGS / name) for name in ("train_autoencoder.json", "evaluate.json")])
    parser.update({"dataset_dir": str(brains), "image_size": [32, 32, 32]})
    dataset = parser.get_parsed_content("real_dataset")
    copies = tmp_path / "copies"
    copies.mkdir()
    files = [f"copy_{i}.nii.gz" for i in range(len(dataset))]
    for name, item in zip(files, dataset):
        save_nifti(np.asarray(item["image"][0]), volume_affine((32, 32, 32), (2.7,) * 3), copies / name)
    (copies / "samples.json").write_text(json.dumps({"files": files}))
    result = run_bundle(EVALUATE, *common, "--output_dir", str(copies), "--run", "['$@evaluator.run()']")
    assert result.returncode == 0, result.stderr[-3000:]
    audit = json.loads((copies / "evaluation" / "metrics.json").read_text())["memorisation_audit"]
    assert audit["near_copies"] == files and audit["real_duplicates"] == 0
    assert [e["nearest_real"] for e in audit["samples"]] == [item["image"] for item in parser.get_parsed_content("datalist")]


@pytest.mark.parametrize("bundle", ["brain_mri", "knee_mri", "breast_mri", "chest_ct"])
def test_every_bundle_evaluates_with_its_training_preprocessing_minus_the_random_flip(bundle, tmp_path):
    configs = REPO / "bundles" / bundle / "configs"
    assert (configs / "evaluate.json").read_text() == (REPO / CONFIGS / "evaluate.json").read_text()
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train_autoencoder.json", "inference.json", "evaluate.json")])
    parser.update({"demo_dir": str(tmp_path)})
    training = parser.get_parsed_content("train#preprocessing").transforms
    evaluation = parser.get_parsed_content("evaluation_preprocessing").transforms
    assert [type(t).__name__ for t in training if not isinstance(t, Randomizable)] == [type(t).__name__ for t in evaluation]
    assert any(isinstance(t, Randomizable) for t in training) and parser["run"][-1] == "$@evaluator.run()"

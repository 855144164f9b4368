"""evaluate.json on a tiny trained brain_mri model: metrics.json, the pictures, and the audit on known copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Randomizable

from common.io import save_nifti, write_json
from common.sampling import volume_affine
from tests.bundles.bundle_runs import EVALUATE, REPO, config_files, run_bundle

CONFIGS = REPO / "bundles" / "brain_mri" / "configs"


def test_evaluate_writes_every_metric_and_flags_training_volumes(brain_model, tmp_path):
    brains, overrides, out = brain_model["brains"], brain_model["overrides"], brain_model["evaluated"]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert (metrics["samples"], metrics["real_volumes"], metrics["image_size"]) == (3, 5, [32, 32, 32])
    # MS-SSIM is at most 1 up to float rounding: two near-identical samples of a 2-epoch model measured 1.0000145
    assert 0 <= metrics["diversity_ms_ssim"]["synthetic"] <= 1 + 1e-4 and 0 <= metrics["diversity_ms_ssim"]["real"] < 1
    assert {"synthetic_vs_real", "real_half_vs_half"} <= set(metrics["intensity_histogram"]) and "skipped" in metrics["fid"]
    assert metrics["reconstruction"]["psnr_db"]["mean"] > 0 and metrics["memorisation_audit"]["real_volumes_searched"] == 5
    assert all(entry["nearest_real"].startswith(str(brains)) for entry in metrics["memorisation_audit"]["samples"])
    for picture in ("samples_and_real", "adjacent_slices", "nearest_neighbours", "training_curves"):
        assert (out / "evaluation" / f"{picture}.png").is_file(), picture

    # the training volumes themselves, preprocessed as the model sees them, given as "samples": all are copies
    parser = ConfigParser()
    parser.read_config(EVALUATE)
    parser.update({"dataset_dir": str(brains), "image_size": [32, 32, 32]})
    dataset = parser.get_parsed_content("real_dataset")
    copies = tmp_path / "copies"
    copies.mkdir()
    files = [f"copy_{i}.nii.gz" for i in range(len(dataset))]
    for name, item in zip(files, dataset):
        save_nifti(np.asarray(item["image"][0]), volume_affine((32, 32, 32), (2.7,) * 3), copies / name)
    write_json({"files": files}, copies / "samples.json")
    run_bundle(EVALUATE, **overrides, output_dir=str(copies), run=["$@evaluator.run()"])
    audit = json.loads((copies / "evaluation" / "metrics.json").read_text())["memorisation_audit"]
    assert audit["near_copies"] == files and audit["real_duplicates"] == 0
    assert [e["nearest_real"] for e in audit["samples"]] == [item["image"] for item in parser.get_parsed_content("datalist")]


@pytest.mark.parametrize("bundle", ["brain_mri", "knee_mri", "breast_mri", "chest_ct"])
def test_every_bundle_evaluates_with_its_training_preprocessing_minus_the_random_flip(bundle, tmp_path):
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "train_autoencoder", "inference", "evaluate"))
    parser.update({"demo_dir": str(tmp_path)})
    training = parser.get_parsed_content("train#preprocessing").transforms
    evaluation = parser.get_parsed_content("evaluation_preprocessing").transforms
    assert [type(t).__name__ for t in training if not isinstance(t, Randomizable)] == [type(t).__name__ for t in evaluation]
    assert any(isinstance(t, Randomizable) for t in training) and parser["run"][-1] == "$@evaluator.run()"

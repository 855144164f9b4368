"""evaluate.json on a tiny trained brain_mri model: metrics.json, the pictures, and the audit on known copies."""

from __future__ import annotations

import json

import numpy as np
from monai.bundle import ConfigParser

from common.sampling import save_nifti, volume_affine
from tests.bundles.bundle_runs import REPO, SMALL_DENOISER, SMALL_SHARED, run_bundle, run_pipeline

CONFIGS = "bundles/brain_mri/configs"
EVALUATE = f"['{CONFIGS}/train_autoencoder.json','{CONFIGS}/inference.json','{CONFIGS}/evaluate.json']"
SHARED = ["--image_size", "[32,32,32]", *SMALL_SHARED]  # 3D MS-SSIM at 3 scales needs 25 voxels per axis


def test_evaluate_writes_every_metric_and_flags_training_volumes(brain_folder, tmp_path):
    run = run_pipeline("brain_mri", brain_folder, tmp_path, SHARED)
    common = [
        "--dataset_dir", str(brain_folder), "--ckpt_dir", str(run["models"]), "--log_dir", str(run["logs"]),
        *SHARED, *SMALL_DENOISER, "--num_workers", "0",
    ]
    out = tmp_path / "evaluated"
    result = run_bundle(EVALUATE, *common, "--output_dir", str(out), "--num_samples", "3", "--num_inference_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert (metrics["samples"], metrics["real_volumes"], metrics["image_size"]) == (3, 4, [32, 32, 32])
    assert 0 <= metrics["diversity_ms_ssim"]["synthetic"] <= 1 and 0 <= metrics["diversity_ms_ssim"]["real"] < 1
    assert {"synthetic_vs_real", "real_half_vs_half"} <= set(metrics["intensity_histogram"]) and "skipped" in metrics["fid"]
    assert metrics["reconstruction"]["psnr_db"]["mean"] > 0 and metrics["memorisation_audit"]["real_volumes_searched"] == 4
    assert all(entry["nearest_real"].startswith(str(brain_folder)) for entry in metrics["memorisation_audit"]["samples"])
    for picture in ("samples_and_real", "adjacent_slices", "nearest_neighbours", "training_curves"):
        assert (out / "evaluation" / f"{picture}.png").is_file(), picture

    # the training volumes themselves, preprocessed as the model sees them, given as "samples": all are copies
    parser = ConfigParser()
    parser.read_config([str(REPO / CONFIGS / name) for name in ("train_autoencoder.json", "evaluate.json")])
    parser.update({"dataset_dir": str(brain_folder), "image_size": [32, 32, 32]})
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
    assert audit["near_copies"] == files
    assert [e["nearest_real"] for e in audit["samples"]] == [item["image"] for item in parser.get_parsed_content("datalist")]

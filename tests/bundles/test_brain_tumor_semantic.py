"""The mask-conditioned (Med-DDPM) bundle: training on image/label pairs, sampling that follows the masks, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import DatasetError, paired_datalist
from common.deploy import check_bundle, package_bundle
from tests.bundles.med_ddpm_runs import SAMPLING, SIZE, SMALL, TRAINING, head_labels, write_pairs
from tests.bundles.bundle_runs import (
    REPO,
    as_arguments,
    checkpoints_in,
    config_files,
    error_chain,
    run_bundle,
)

BUNDLE = "brain_tumor_semantic"
CONFIGS = f"bundles/{BUNDLE}/configs"


@pytest.fixture
def trained(semantic_model) -> dict:
    return semantic_model


def test_samples_follow_their_masks(trained, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    centres = {"left": (4, 8, 8), "right": (11, 8, 8)}
    for name, centre in centres.items():
        nib.save(nib.Nifti1Image(head_labels(centre), np.eye(4)), str(masks / f"{name}.nii.gz"))
    out = tmp_path / "out"
    run_bundle(
        config_files(BUNDLE, "inference"), ckpt_dir=str(trained["models"]), **SAMPLING, mask_dir=str(masks),
        output_dir=str(out), num_inference_steps=25, samples_per_mask=2,  # DDIM 25: as close to the masks as 50 here
    )
    record = json.loads((out / "samples.json").read_text())["samples"]
    assert [r["seed"] for r in record] == [0, 1, 2, 3] and len(record) == 4
    # every image sits next to its mask, with the mask's affine: a training pair for segmentation
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (out / "labels").iterdir())
    images = {}
    for name in centres:
        for seed in {"left": (0, 1), "right": (2, 3)}[name]:
            image = nib.load(str(out / "images" / f"{name}_seed{seed}.nii.gz"))
            label = nib.load(str(out / "labels" / f"{name}_seed{seed}.nii.gz"))
            assert np.allclose(image.affine, label.affine) and np.array_equal(np.asanyarray(label.dataobj), head_labels(centres[name]))
            images[seed] = np.asanyarray(image.dataobj)
    for seed, name in ((0, "left"), (2, "right")):
        labels = head_labels(centres[name])
        mean = [images[seed][labels == c].mean() for c in (0, 1, 2)]
        assert mean[0] < mean[1] < mean[2], mean  # each sample follows its own mask's classes
    # where the masks differ, so do the samples: the tumour is bright in its own sample, not in the other
    only_left = (head_labels(centres["left"]) == 2) & (head_labels(centres["right"]) != 2)
    only_right = (head_labels(centres["right"]) == 2) & (head_labels(centres["left"]) != 2)
    # every sample of the mask with the tumour there is brighter there than every sample of the other mask, by a tenth
    # of the intensity range (the seconds-trained test model reaches about 0.4)
    assert min(images[0][only_left].mean(), images[1][only_left].mean()) > max(images[2][only_left].mean(), images[3][only_left].mean()) + 0.2
    assert min(images[2][only_right].mean(), images[3][only_right].mean()) > max(images[0][only_right].mean(), images[1][only_right].mean()) + 0.2
    assert not np.allclose(images[0], images[1])  # two seeds, two different images for one mask


def test_masks_that_do_not_fit_are_named(trained, tmp_path):
    cases = {
        "labels.nii.gz": (np.where(head_labels((8, 8, 8)) == 2, 5, head_labels((8, 8, 8))).astype(np.uint8), np.eye(4), "label values \\[5.0\\] are not in the expected label set"),
        "shape.nii.gz": (np.zeros((SIZE, SIZE, 8), np.uint8), np.eye(4), "mask of shape \\(16, 16, 8\\), but the model makes images of \\(16, 16, 16\\)"),
        "spacing.nii.gz": (head_labels(None), np.diag([2.0, 2.0, 2.0, 1.0]), "voxels of \\(2.0, 2.0, 2.0\\) mm, but the model was trained at \\(1.0, 1.0, 1.0\\) mm"),
    }
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(head_labels((8, 8, 8)), np.eye(4)), str(masks / "a_good_one.nii.gz"))
    for name, (labels, affine, message) in cases.items():
        nib.save(nib.Nifti1Image(labels, affine), str(masks / name))
    # every mask is checked before anything is sampled; the run names each bad file (the first it meets here)
    with pytest.raises(Exception) as info:  # MONAI's parser wraps the error of a "$" expression
        run_bundle(
            config_files(BUNDLE, "inference"), ckpt_dir=str(trained["models"]), **SAMPLING, mask_dir=str(masks),
            output_dir=str(tmp_path / "out"), num_inference_steps=2,
        )
    assert f"DatasetError: {masks / 'labels.nii.gz'}: label values [5.0]" in error_chain(info.value)
    assert not (tmp_path / "out").exists()
    parser = ConfigParser()
    parser.read_config(config_files(BUNDLE, "inference"))
    parser.update({"ckpt_dir": str(trained["models"]), "mask_dir": str(masks), **SMALL})
    sampler = parser.get_parsed_content("sampler")
    for name, (_, _, message) in cases.items():
        with pytest.raises(DatasetError, match=re.escape(str(masks / name)) + ": " + message):
            sampler.load(str(masks / name))


def test_pairs_are_checked_before_training(tmp_path):
    data = write_pairs(tmp_path / "data", 3)
    (data / "labels" / "case_1.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((SIZE, SIZE, 12), np.uint8), np.eye(4)), str(data / "labels" / "case_2.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((SIZE,) * 3, np.uint8), np.eye(4) * 2), str(data / "labels" / "case_0.nii.gz"))
    with pytest.raises(DatasetError) as info:
        paired_datalist(data)
    message = str(info.value)
    assert "3 of 3 image/label pairs" in message
    assert f"{data / 'images' / 'case_1.nii.gz'}: has no label" in message
    assert f"{data / 'labels' / 'case_2.nii.gz'}: label mask of shape (16, 16, 12) does not match its image" in message
    assert f"{data / 'labels' / 'case_0.nii.gz'}: its affine" in message
    with pytest.raises(DatasetError, match="needs images/ and labels/ folders"):
        paired_datalist(tmp_path)


def test_full_size_defaults_match_the_paper():
    parser = ConfigParser()
    parser.read_config(str(REPO / CONFIGS / "train.json"))
    network = parser.get_parsed_content("network_def")
    assert (network.in_channels, network.out_channels) == (3, 1)  # image + head + tumour channels in, image out
    assert parser["network_def"]["channels"] == [64, 64, 128, 192, 256] and parser["network_def"]["num_res_blocks"] == 1
    assert parser["network_def"]["attention_levels"] == [False, False, False, True, False]  # 16^3 of 128^3
    assert parser["num_train_timesteps"] == 250 and parser["lr"] == 1e-5 and parser["image_size"] == [128, 128, 128]
    assert parser.get_parsed_content("noise_scheduler#schedule") == "cosine" and parser["ema"]["decay"] == 0.995
    meta = json.loads((REPO / CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"] and "einops" in meta["required_packages_version"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"]) == (network.in_channels, parser["image_size"])


def test_evaluate_writes_the_metrics_that_apply(trained, tmp_path):
    out = tmp_path / "evaluated"
    run_bundle(
        config_files(BUNDLE, "train", "inference", "evaluate"), dataset_dir=str(trained["data"]),
        ckpt_dir=str(trained["models"]), **SMALL, num_workers=0, output_dir=str(out), num_inference_steps=10,
        num_masks=5, samples_for_one_mask=2, heldout_fraction=0.25, utility_epochs=3,
    )
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert (metrics["masks"], metrics["test_pairs"]) == (5, 2)
    assert "at least 25 voxels per axis" in metrics["diversity_ms_ssim"]["synthetic_one_mask"]["skipped"]  # 16^3
    synthetic, real = metrics["class_mean_intensity"]["synthetic"], metrics["class_mean_intensity"]["real"]
    assert real[0] < real[1] < real[2] and synthetic[0] < synthetic[2]  # the samples follow the masks' classes
    assert metrics["memorisation_audit"]["real_volumes_searched"] == 8
    assert set(metrics["segmentation_utility"]) >= {"trained_on_synthetic", "trained_on_real"}
    assert (out / "evaluation" / "masks_real_synthetic.png").is_file()


@pytest.mark.slow
def test_two_process_training_and_sampling(trained, tmp_path):
    models = tmp_path / "models"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    result = subprocess.run(
        [*command, "--config_file", f"['{CONFIGS}/train.json','{CONFIGS}/multi_gpu_train.json']",
         "--dataset_dir", str(trained["data"]), "--ckpt_dir", str(models), "--log_dir", str(tmp_path / "logs"), *as_arguments(TRAINING),
         "--num_workers", "0", "--batch_size", "2", "--train#trainer#max_epochs", "2", "--save_interval", "0",
         "--finalize", f"['$torch.save(@network.module.state_dict(), \\'{tmp_path}/rank\\' + str(dist.get_rank()) + \\'.pt\\')', '$@tensorboard.close()', '$common.io.end_process_group()']"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert checkpoints_in(models) == ["diffusion.pt"]  # written once, by rank 0
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, centre in (("a", (5, 8, 8)), ("b", (10, 8, 8)), ("c", (8, 5, 8))):
        nib.save(nib.Nifti1Image(head_labels(centre), np.eye(4)), str(masks / f"{name}.nii.gz"))
    out = tmp_path / "out"
    result = subprocess.run(
        [*command, "--config_file", f"['{CONFIGS}/inference.json','{CONFIGS}/multi_gpu_inference.json']",
         "--ckpt_dir", str(trained["models"]), *as_arguments(SAMPLING), "--mask_dir", str(masks), "--output_dir", str(out),
         "--num_inference_steps", "3"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())["samples"]
    assert [r["seed"] for r in record] == [0, 1, 2] and sorted(p.name for p in (out / "images").iterdir()) == [
        "a_seed0.nii.gz", "b_seed1.nii.gz", "c_seed2.nii.gz"]


def test_the_brats_variant_reads_four_modalities_and_adds_the_brain_area(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    labels = np.zeros((24, 24, 20), np.uint8)
    labels[8:14, 8:14, 6:12] = 2
    labels[10:12, 10:12, 8:10] = 4  # BraTS: 1, 2, 4 are tumour parts
    brain = np.zeros_like(labels, dtype=np.float32)
    brain[4:20, 4:20, 3:17] = 1.0
    modalities = np.stack([brain * (k + 1) + 0.01 * rng.standard_normal(labels.shape) for k in range(4)], -1).astype(np.float32)
    nib.save(nib.Nifti1Image(modalities, np.eye(4)), str(tmp_path / "images" / "brats_001.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "labels" / "brats_001.nii.gz"))
    parser = ConfigParser()
    parser.read_config([str(REPO / CONFIGS / "train.json"), str(REPO / CONFIGS / "brats_multimodal.json")])
    parser.update({"dataset_dir": str(tmp_path), "crop_size": [24, 24, 20], "image_size": [24, 24, 20], "num_workers": 0, "cache_rate": 0.0})
    item = parser.get_parsed_content("train#dataset")[0]
    assert item["image"].shape == (4, 24, 24, 20) and item["label"].shape == (4, 24, 24, 20)
    classes = item["label"].argmax(0) + 1
    inside = item["label"].sum(0) > 0
    assert torch.equal(inside, torch.as_tensor(brain > 0) | torch.as_tensor(labels > 0))  # brain area added from T1
    assert set(classes[inside].unique().tolist()) == {2, 3, 4}  # 2 -> 2, 4 -> 3, brain area -> 4
    network = parser.get_parsed_content("network_def")
    assert (network.in_channels, network.out_channels) == (8, 4)


def test_packaged_with_a_torchscript_denoiser_that_matches(trained, tmp_path):
    archive = package_bundle("brain_tumor_semantic", trained["models"], tmp_path, SMALL)
    folder = tmp_path / "brain_tumor_semantic"
    version = json.loads((REPO / CONFIGS / "metadata.json").read_text())["version"]
    assert archive.name == f"brain_tumor_semantic_v{version}.zip"
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["model.pt", "model.ts"]  # the zoo's names
    assert check_bundle(folder, packaged=True) == []  # the Model Zoo's checks, the denoiser's at its packaged size
    image = json.loads((folder / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"], len(image["channel_def"])) == (3, [SIZE] * 3, 3)
    # the BraTS overlay keeps its own settings: the overrides of this model are not written into it
    assert (folder / "configs" / "brats_multimodal.json").read_text() == (REPO / CONFIGS / "brats_multimodal.json").read_text()
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser.update({"bundle_root": str(folder)})
    network = parser.get_parsed_content("network").eval()
    traced = torch.jit.load(str(folder / "models" / "model.ts"))
    noisy, timesteps = torch.randn(2, 3, SIZE, SIZE, SIZE), torch.tensor([5, 200])
    with torch.no_grad():
        assert torch.allclose(traced(noisy, timesteps), network(noisy, timesteps), atol=1e-4)


def test_the_latent_pipeline_command_says_it_does_not_run_this_bundle(tmp_path):
    from common.pipeline import pipeline

    with pytest.raises(ValueError, match="'brain_tumor_semantic' is not a latent-diffusion bundle"):
        pipeline("brain_tumor_semantic", str(tmp_path))


def test_pairs_in_subfolders_are_matched_by_their_relative_path(tmp_path):
    for folder, value in (("site_a", 1.0), ("site_b", 2.0)):
        for sub in ("images", "labels"):
            (tmp_path / sub / folder).mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.full((SIZE,) * 3, value, np.float32), np.eye(4)), str(tmp_path / "images" / folder / "case.nii.gz"))
        nib.save(nib.Nifti1Image(head_labels(None), np.eye(4)), str(tmp_path / "labels" / folder / "case.nii.gz"))
    pairs = paired_datalist(tmp_path)
    assert [(Path(p["image"]).parent.name, Path(p["label"]).parent.name) for p in pairs] == [("site_a", "site_a"), ("site_b", "site_b")]
    nib.save(nib.Nifti1Image(np.zeros((SIZE, SIZE, SIZE, 1), np.float32), np.eye(4)), str(tmp_path / "images" / "site_a" / "case.nii.gz"))
    with pytest.raises(DatasetError, match=r"expected 1 3D volume\(s\), got shape \(16, 16, 16, 1\)"):
        paired_datalist(tmp_path)


def test_a_non_finite_loss_stops_the_mask_conditioned_training(trained, tmp_path):
    with pytest.raises(Exception) as info:
        run_bundle(
            config_files(BUNDLE, "train"), dataset_dir=str(trained["data"]), ckpt_dir=str(tmp_path / "models"),
            log_dir=str(tmp_path / "logs"), **TRAINING, num_workers=0, batch_size=2,
            **{"train#trainer#loss_function": "$lambda prediction, target: (prediction - target).abs().mean() * float('inf')"},
        )
    chain = error_chain(info.value)
    assert "NonFiniteLossError: training stopped at iteration 1 (epoch 1): loss = inf. The batch held: " in chain
    assert str(trained["data"] / "images") in chain.split("The batch held: ")[1]
    assert not (tmp_path / "models" / "diffusion.pt").exists()


def test_v_prediction_trains_and_samples_through_the_bundle_configs_and_other_settings_are_refused(trained, tmp_path):
    """``prediction_type`` is stored with the checkpoint; inference with another, or a checkpoint written before
    settings were stored sampled with a non-paper setting, is refused with the file named."""
    models = tmp_path / "models"
    run_bundle(
        config_files(BUNDLE, "train"), dataset_dir=str(trained["data"]), ckpt_dir=str(models), log_dir=str(tmp_path / "logs"),
        **TRAINING, num_workers=0, batch_size=4, save_interval=0, prediction_type="v_prediction",
        **{"train#trainer#max_epochs": 2, "ema#start_iteration": 1},
    )
    assert torch.load(models / "diffusion.pt", weights_only=True)["model_settings"]["prediction_type"] == "v_prediction"
    sampling = {**SAMPLING, "ckpt_dir": str(models), "num_inference_steps": 2}
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(head_labels((8, 8, 8)), np.eye(4)), str(masks / "one.nii.gz"))
    run_bundle(config_files(BUNDLE, "inference"), **sampling, mask_dir=str(masks), output_dir=str(tmp_path / "out"), prediction_type="v_prediction")
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["one_seed0.nii.gz"]
    with pytest.raises(Exception) as mismatch:
        run_bundle(config_files(BUNDLE, "inference"), **sampling, mask_dir=str(masks), output_dir=str(tmp_path / "refused"))
    assert "trained with prediction_type 'v_prediction' (configured: 'epsilon'); set --prediction_type" in error_chain(mismatch.value)
    assert not (tmp_path / "refused").exists()
    # the session's model was trained with the paper's settings, and stores them
    assert torch.load(trained["models"] / "diffusion.pt", weights_only=True)["model_settings"] == {
        "num_train_timesteps": 250, "noise_schedule": "cosine", "prediction_type": "epsilon"}
    # a checkpoint without settings (written before 0.2.3) is the paper's: sampling it with v-prediction is refused
    older = torch.load(models / "diffusion.pt", weights_only=True)
    del older["model_settings"]
    torch.save(older, tmp_path / "older.pt")
    with pytest.raises(Exception) as before:
        run_bundle(config_files(BUNDLE, "inference"), **sampling, mask_dir=str(masks), output_dir=str(tmp_path / "refused"),
                   diffusion_path=str(tmp_path / "older.pt"), prediction_type="v_prediction")
    assert f"checkpoint {tmp_path / 'older.pt'} holds no settings" in error_chain(before.value)

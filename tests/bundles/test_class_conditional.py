"""Class-conditional latent diffusion through the bundles' own configs: off by default; with ``class_labels`` and a
labels file the denoiser learns the labels (dropped at ``label_dropout`` for guidance), the checkpoint records the
classes, and inference samples the labels asked for, records them, and refuses what does not fit the model."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import LABELS_KEY
from tests.bundles.bundle_runs import REPO, SIZE_32, SMALL_DENOISER, VENTRICLES, config_files, error_chain, run_bundle

LATENT_BUNDLES = ["brain_mri", "knee_mri", "breast_mri", "chest_ct"]


@pytest.mark.parametrize("bundle", LATENT_BUNDLES)
def test_every_latent_bundle_is_unconditional_by_default_and_conditional_by_one_override(bundle):
    for classes, counts in ((None, None), (VENTRICLES, (2,))):
        parser = ConfigParser()
        parser.read_config(config_files(bundle, "train_autoencoder", "train_diffusion"))
        parser.update({"bundle_root": str(REPO / "bundles" / bundle), "class_labels": classes})
        network = parser.get_parsed_content("network_def")
        assert (network.class_embedding and network.class_embedding.class_counts) == counts
        assert parser.get_parsed_content("train#trainer#prepare_batch#condition_name", lazy=False) == (classes and LABELS_KEY)
        assert parser["train#dataset#data"] == "@labelled_datalist" and parser["label_dropout"] == 0.1
        inference = ConfigParser()
        inference.read_config(config_files(bundle, "inference"))
        assert {k: inference["sampler"][k] for k in ("class_labels", "labels", "guidance_scale")} == {
            "class_labels": "@class_labels", "labels": "@labels", "guidance_scale": "@guidance_scale"}
        assert inference["labels"] is None and inference["guidance_scale"] == 1.0


def test_the_knee_bundle_reads_mrnets_label_files_from_the_dataset_folder(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    rng = np.random.default_rng(0)
    for split, cases in (("train", [0, 1]), ("valid", [1130])):
        (root / split / "sagittal").mkdir(parents=True)
        for case in cases:
            np.save(root / split / "sagittal" / f"{case:04d}.npy", rng.integers(0, 255, (4, 256, 256), dtype=np.uint8))
        (root / f"{split}-acl.csv").write_text("".join(f"{case},{case % 2}\n" for case in cases))
    parser = ConfigParser()
    parser.read_config(config_files("knee_mri", "train_autoencoder", "train_diffusion"))
    parser.update({"bundle_root": str(REPO / "bundles" / "knee_mri"), "dataset_dir": str(root), "class_labels": {"acl": ["intact", "tear"]}})
    items = parser.get_parsed_content("labelled_datalist")
    assert [(item["image"].split("/")[-1], item[LABELS_KEY].tolist()) for item in items] == [
        ("0000.npy", [0]), ("0001.npy", [1]), ("1130.npy", [0])]


def test_a_conditional_model_trains_and_samples_the_labels_asked_for_through_the_bundle_configs(
    brain_model, conditional_brain_model, tmp_path,
):
    training = {**conditional_brain_model["training"], "ckpt_dir": str(tmp_path / "unlabelled")}
    (tmp_path / "unlabelled").mkdir()
    shutil.copy2(brain_model["models"] / "autoencoder.pt", tmp_path / "unlabelled" / "autoencoder.pt")
    # class_labels without labels: stopped before training, with what to give
    with pytest.raises(Exception) as missing:
        run_bundle(config_files("brain_mri", "train_autoencoder", "train_diffusion"), **training, class_labels=VENTRICLES)
    assert "every training volume needs its labels: give a labels file (--labels_file" in error_chain(missing.value)
    assert not (tmp_path / "unlabelled" / "diffusion.pt").exists()
    # the fixture's run, with the labels file: the checkpoint records the classes
    models = conditional_brain_model["models"]
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    assert checkpoint["model_settings"]["class_labels"] == VENTRICLES
    assert checkpoint["ema_network"]["class_embedding.tables.0.weight"].shape[0] == 3  # 2 classes and "not given"

    sampling = {"ckpt_dir": str(models), **SIZE_32, **SMALL_DENOISER, "num_samples": 3, "num_inference_steps": 3}
    asked = [{"ventricles": "enlarged"}, {"ventricles": "normal"}, None]
    out = tmp_path / "samples"
    run_bundle(config_files("brain_mri", "inference"), **sampling, class_labels=VENTRICLES, labels=asked, guidance_scale=2.0,
               output_dir=str(out))
    record = json.loads((out / "samples.json").read_text())
    assert record["labels"] == asked and record["guidance_scale"] == 2.0 and record["class_labels"] == VENTRICLES
    files = [out / name for name in record["files"]]
    assert [nib.load(f).header["descrip"].item().decode() for f in files] == ["ventricles=enlarged", "ventricles=normal", "no label"]
    assert all(np.isfinite(np.asanyarray(nib.load(f).dataobj)).all() for f in files)

    # what does not fit the model is refused before sampling, naming the setting or the label
    for overrides, message in (
        ({}, "trained with class_labels {'ventricles': ['normal', 'enlarged']} (configured: None); set --class_labels"),
        ({"class_labels": VENTRICLES, "labels": {"ventricles": "large"}}, "'ventricles' is 'large', not one of its classes ['normal', 'enlarged']"),
    ):
        with pytest.raises(Exception) as refused:
            run_bundle(config_files("brain_mri", "inference"), **sampling, **overrides, output_dir=str(tmp_path / "wrong"))
        assert message in error_chain(refused.value)
    # and the unconditional model of the fixture refuses labels: it was trained without them
    with pytest.raises(Exception) as refused:
        run_bundle(config_files("brain_mri", "inference"), **{**sampling, "ckpt_dir": str(brain_model["models"])},
                   class_labels=VENTRICLES, output_dir=str(tmp_path / "wrong"))
    assert "trained with class_labels None (configured: {'ventricles': ['normal', 'enlarged']})" in error_chain(refused.value)
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").glob("*.nii.gz"))

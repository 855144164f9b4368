"""Per-class evaluation of a class-conditional model on a labelled dataset, through the bundle's own configs:
``evaluate.json`` compares a class's samples with the real volumes of that class, and ``python -m common
evaluate_classes`` does it for every class and judges class consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.class_evaluation import evaluate_classes
from common.evaluation import SyntheticDataEvaluator
from tests.bundles.bundle_runs import EVALUATE, SIZE_32, SMALL_DENOISER, VENTRICLES, error_chain, in_repository, isolated_state, make_brains, run_bundle

ENLARGED = {1, 3}  # the brains the conditional model's labels file calls enlarged (the others are normal)


@pytest.fixture(scope="module")
def labelled(conditional_brain_model, brain_model, tmp_path_factory) -> dict:
    """The conditional model, its training brains and labels, and three held-out brains with their labels."""
    root = tmp_path_factory.mktemp("labelled")
    heldout = make_brains(root / "heldout", 3)
    heldout_labels = root / "heldout_labels.csv"
    heldout_labels.write_text("file,ventricles\nbrain_0,normal\nbrain_1,enlarged\nbrain_2,normal\n")
    training = conditional_brain_model["training"]
    sampling = {**SIZE_32, **SMALL_DENOISER, "num_workers": 0, "num_inference_steps": 3, "num_samples": 2,
                "class_labels": VENTRICLES, "log_dir": training["log_dir"]}
    return {"models": conditional_brain_model["models"], "dataset_dir": training["dataset_dir"],
            "labels_file": str(Path(conditional_brain_model["models"]).parent / "labels.csv"),
            "heldout_dir": str(heldout), "heldout_labels_file": str(heldout_labels), "sampling": sampling}


def test_evaluate_classes_compares_each_class_with_its_own_real_volumes_and_judges_consistency(labelled, tmp_path, capsys):
    out = tmp_path / "by_class"
    with in_repository(), isolated_state():
        evaluate_classes("brain_mri", str(labelled["models"]), str(out), labelled["dataset_dir"], labelled["labels_file"],
                         labelled["heldout_dir"], labelled["heldout_labels_file"], (1, 3), **labelled["sampling"])
    metrics = json.loads((out / "class_metrics.json").read_text())
    assert [(c["folder"], c["training_volumes"], c["heldout_volumes"]) for c in metrics["classes_evaluated"]] == [
        ("ventricles=normal", 3, 2), ("ventricles=enlarged", 2, 1)]
    for scale in ("1", "3"):
        for name in ("normal", "enlarged"):
            folder = out / f"guidance_{scale}" / f"ventricles={name}"
            record = json.loads((folder / "samples.json").read_text())
            assert record["labels"] == [{"ventricles": name}] * 2 and record["guidance_scale"] == float(scale)
            found = json.loads((folder / "evaluation" / "metrics.json").read_text())
            assert found["classes"] == {"samples_asked_for": {f"ventricles={name}": 2}, "real_volumes_of_class": {"ventricles": name},
                                        "guidance_scale": float(scale)}
            # compared with the training brains of its class only, and reconstructed from the held-out ones of it
            nearest = {Path(e["nearest_real"].split(" (")[0]).name for e in found["memorisation_audit"]["samples"]}
            assert nearest <= {f"brain_{i}.nii.gz" for i in range(5) if (i in ENLARGED) == (name == "enlarged")}
            assert found["real_volumes"] == (2 if name == "enlarged" else 3)
            assert found["reconstruction"]["count"] == (1 if name == "enlarged" else 2)
            assert metrics["ratios_to_real_per_class"][scale][f"ventricles={name}"]["real_volumes"] == found["real_volumes"]
    judged = metrics["class_consistency"]["per_variable"]["ventricles"]
    assert judged["heldout_real"]["volumes"] == 3
    assert {scale: result["volumes"] for scale, result in judged["samples_by_guidance_scale"].items()} == {"1": 4, "3": 4}
    assert all(0 <= result["accuracy"] <= 1 for result in judged["samples_by_guidance_scale"].values())
    printed = capsys.readouterr().out
    assert "ventricles: held-out real volumes " in printed and "ventricles: samples at guidance scale 3: " in printed
    assert "ventricles=enlarged at guidance 1, against its 2 real volumes: " in printed


@pytest.mark.parametrize("changes, message", [
    ({"class_labels": None}, "class_labels is required"),
    ({"labels_file": None}, "labels_file is required: the labels of the training volumes"),
    ({"heldout_labels_file": None}, "heldout_labels_file is required with heldout_dir"),
    ({"labels": {"ventricles": "normal"}}, "['labels'] are chosen per class by evaluate_classes"),
    ({"guidance_scales": "1,x"}, "guidance_scales must be numbers"),
    ({"guidance_scales": -1}, "guidance_scale must be a number >= 0"),
    ({"num_sample": 2}, "1 id given to evaluate_classes is not in train_autoencoder.json, inference.json, evaluate.json: --num_sample (did you mean --num_samples"),
])
def test_evaluate_classes_refuses_what_it_cannot_compare_before_sampling(labelled, tmp_path, changes, message):
    settings = {"ckpt_dir": str(labelled["models"]), "output_dir": str(tmp_path / "out"), "dataset_dir": labelled["dataset_dir"],
                "labels_file": labelled["labels_file"], "heldout_dir": labelled["heldout_dir"],
                "heldout_labels_file": labelled["heldout_labels_file"], **labelled["sampling"], **changes}
    with in_repository(), isolated_state(), pytest.raises(ValueError) as refused:
        evaluate_classes("brain_mri", **settings)
    assert message in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_evaluate_json_selects_the_class_by_its_labels_file_or_says_it_compared_with_every_class(labelled, tmp_path):
    common = {"ckpt_dir": str(labelled["models"]), "dataset_dir": labelled["dataset_dir"], **labelled["sampling"]}
    # the user's own run of evaluate.json for one class: the real volumes of that class only
    run_bundle(EVALUATE, **common, labels={"ventricles": "enlarged"}, labels_file=labelled["labels_file"],
               output_dir=str(tmp_path / "enlarged"))
    found = json.loads((tmp_path / "enlarged" / "evaluation" / "metrics.json").read_text())
    assert found["real_volumes"] == 2 and found["classes"]["real_volumes_of_class"] == {"ventricles": "enlarged"}
    # without labels of the real volumes: compared with every class, and metrics.json says so
    run_bundle(EVALUATE, **common, labels={"ventricles": "enlarged"}, output_dir=str(tmp_path / "all"))
    found = json.loads((tmp_path / "all" / "evaluation" / "metrics.json").read_text())
    assert found["real_volumes"] == 5 and found["classes"]["real_volumes_of_class"] is None
    assert found["classes"]["samples_asked_for"] == {"ventricles=enlarged": 2}
    # samples asked for several classes: compared with every class, however the labels are known
    run_bundle(EVALUATE, **common, labels=[{"ventricles": "enlarged"}, {"ventricles": "normal"}], labels_file=labelled["labels_file"],
               output_dir=str(tmp_path / "mixed"))
    found = json.loads((tmp_path / "mixed" / "evaluation" / "metrics.json").read_text())
    assert found["real_volumes"] == 5 and found["classes"]["real_volumes_of_class"] is None
    assert found["classes"]["samples_asked_for"] == {"ventricles=enlarged": 1, "ventricles=normal": 1}
    # held-out volumes of a class need their labels: refused before sampling, naming the setting
    with pytest.raises(Exception) as refused:
        run_bundle(EVALUATE, **common, labels={"ventricles": "enlarged"}, labels_file=labelled["labels_file"],
                   heldout_dir=labelled["heldout_dir"], output_dir=str(tmp_path / "refused"))
    assert "so those volumes need their labels too: set heldout_labels_file" in error_chain(refused.value)
    assert not (tmp_path / "refused" / "samples.json").exists()


def test_the_evaluator_refuses_samples_of_another_class_than_the_real_volumes(tmp_path):
    (tmp_path / "samples.json").write_text(json.dumps({"files": ["a.nii.gz", "b.nii.gz"],
                                                       "labels": [{"ventricles": "normal"}, {"ventricles": "enlarged"}]}))
    evaluator = SyntheticDataEvaluator(tmp_path, [], tmp_path / "evaluation", None, real_class={"ventricles": "normal"})
    with pytest.raises(ValueError, match=r"records samples asked for \['ventricles=enlarged'\], but the real volumes were selected for ventricles=normal"):
        evaluator.load_samples()
    (tmp_path / "samples.json").write_text(json.dumps({"files": ["a.nii.gz", "b.nii.gz"]}))
    with pytest.raises(ValueError, match="records no labels: the samples are of an unconditional model"):
        evaluator.load_samples()

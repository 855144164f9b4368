"""The class-conditional demo: train ``brain_mri`` on two classes of demo brains, normal ones and ones with
enlarged ventricles, sample each class at several guidance scales, and judge whether the samples show their class.

``python -m common demo --conditional`` runs it. Not in Medical Diffusion (Khader et al.), whose denoiser is
unconditional: the labels enter the depth-attention U-Net as a class embedding, with classifier-free guidance
(Ho & Salimans, 2022). The demo's models are those of the unconditional demo (``common.pipeline.DEMO_SETTINGS``),
trained with the class labels, with the v-prediction denoiser it was measured with
(``common.pipeline.V_PREDICTION_DENOISER``) rather than the unconditional demo's code classifier; each stage is one of the bundle's own configs run by ``monai.bundle.run``. The
class is judged by a measured proxy that defines it (``ventricle_volume``), a nearest-class-median classifier
fitted on the real training brains, and every class is evaluated against the real brains of that class.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

from common.class_evaluation import class_folder, evaluate_classes
from common.data import brain_ventricles_demo_datalist
from common.data.brain_population import VENTRICLE_CLASSES, ventricle_volume
from common.evaluation import NearestClassMedian
from common.evaluation.pictures import save_slices_through
from common.io import bundle_dir, write_text
from common.pipeline import DEMO_SETTINGS, V_PREDICTION_DENOISER, run_stages, without_autoguidance

__all__ = ["CONDITIONAL_SETTINGS", "GUIDANCE_SCALES", "conditional_demo", "run_conditional_demo", "summary"]

BUNDLE = "brain_mri"
LABELS = {"ventricles": list(VENTRICLE_CLASSES)}
TRAINING_PER_CLASS, HELDOUT_PER_CLASS = 10, 4
GUIDANCE_SCALES = (1.0, 3.0, 7.0)
# The unconditional demo's settings (20 training brains, as here: 10 of each class) with the class labels, and 50
# DDIM steps for its 8 samples per class and guidance scale. Measured on the demo (fresh clone, 33 min): samples showed
# their class by ventricle volume 81%, 100% and 100% of the time at guidance 1, 3 and 7 (bundles/brain_mri/docs/README.md);
# from 3 the normal class loses most of its ventricles, at 7 the enlarged one overshoots (histograms 5.4x / 3.6x real).
# Classifier-free guidance alone, as measured: without the unconditional demo's autoguidance.
CONDITIONAL_SETTINGS: dict[str, dict[str, Any]] = without_autoguidance(DEMO_SETTINGS[BUNDLE])
CONDITIONAL_SETTINGS["denoiser"]["class_labels"] = LABELS
CONDITIONAL_SETTINGS["denoiser"].update(V_PREDICTION_DENOISER)  # what it was measured with, not the demo's code classifier
CONDITIONAL_SETTINGS["inference"].update({"num_samples": 8, "num_inference_steps": 50})


def conditional_demo(output_dir: str = "conditional_demo_output") -> str:
    """Train, sample each class and evaluate into ``output_dir`` (models/, logs/, demo_data/, samples/); print the
    summary and return the samples folder."""
    return run_conditional_demo(output_dir, CONDITIONAL_SETTINGS, TRAINING_PER_CLASS, HELDOUT_PER_CLASS, GUIDANCE_SCALES)


def run_conditional_demo(
    output_dir: str, settings: dict[str, dict[str, Any]], per_class: int, heldout_per_class: int, guidance_scales: tuple[float, ...],
) -> str:
    """``conditional_demo`` with other settings (by stage, as ``CONDITIONAL_SETTINGS``), numbers of brains per class
    and guidance scales: what the tests run small."""
    out = Path(output_dir).resolve()
    data = out / "demo_data"
    train = brain_ventricles_demo_datalist(data, "train", per_class)
    heldout = brain_ventricles_demo_datalist(data, "heldout", heldout_per_class)
    settings = copy.deepcopy(settings)
    settings.setdefault("diffusion", {})["labels_file"] = str(data / "train" / "labels.csv")
    settings.setdefault("autoencoder", {})["heldout_dir"] = str(data / "heldout")
    timings: dict[str, float] = {}
    start = time.time()
    run_stages(BUNDLE, str(out), str(data / "train"), "autoencoder,diffusion", settings, {})
    timings["training"] = time.time() - start

    configs = bundle_dir(BUNDLE) / "configs"
    model = {**settings.get("shared", {}), **settings.get("denoiser", {}), **settings.get("inference", {})}
    samples = out / "samples"
    start = time.time()
    # what a user runs on a labelled dataset: every class sampled and compared with the real brains of its class
    evaluate_classes(
        BUNDLE, str(out / "models"), str(samples), str(data / "train"), str(data / "train" / "labels.csv"), str(data / "heldout"),
        str(data / "heldout" / "labels.csv"), guidance_scales, **model, log_dir=str(out / "logs"),
    )
    timings["sampling_and_evaluation"] = time.time() - start
    by_class = json.loads((samples / "class_metrics.json").read_text())

    metrics = {**by_class, **judge_classes(configs, settings, train, heldout, samples, guidance_scales)}
    metrics["class_consistency"]["intensity_profile"] = by_class["class_consistency"]["per_variable"]["ventricles"]
    metrics["ratios_to_real_per_class"] = {scale: {name: found[class_folder({"ventricles": name})] for name in VENTRICLE_CLASSES}
                                           for scale, found in by_class["ratios_to_real_per_class"].items()}
    metrics["demo_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_text(json.dumps(metrics, indent=2) + "\n", samples / "class_metrics.json")
    print(summary(metrics, samples), flush=True)
    return str(samples)


def _preprocessed(configs: Path, settings: dict[str, dict[str, Any]], datalist: list[dict[str, str]]) -> list[np.ndarray]:
    """The volumes as the bundle's training preprocessing gives them (the model's grid, intensities in [-1, 1])."""
    parser = ConfigParser()
    parser.read_config(str(configs / "train_autoencoder.json"))
    parser.update({"bundle_root": str(configs.parent), **settings.get("shared", {})})
    preprocessing = parser.get_parsed_content("train#preprocessing")
    return [np.asarray(preprocessing(dict(item))["image"])[0] for item in datalist]


def judge_classes(
    configs: Path, settings: dict[str, dict[str, Any]], train: list[dict[str, str]], heldout: list[dict[str, str]],
    samples: Path, guidance_scales: tuple[float, ...],
) -> dict[str, Any]:
    """Class consistency: ``ventricle_volume`` of every real and synthetic brain, a ``NearestClassMedian`` fitted on
    the real training brains, its accuracy on the held-out real brains and on the samples of each guidance scale;
    and a picture of each class, real beside synthetic, cut through the ventricles."""

    def by_class(datalist: list[dict[str, str]], volumes: list[np.ndarray]) -> dict[str, list[int]]:
        return {name: [ventricle_volume(v) for v, item in zip(volumes, datalist) if item["ventricles"] == name] for name in VENTRICLE_CLASSES}

    heldout_volumes = _preprocessed(configs, settings, heldout)  # measured and shown
    real_train, real_heldout = by_class(train, _preprocessed(configs, settings, train)), by_class(heldout, heldout_volumes)
    classifier = NearestClassMedian(real_train)
    synthetic: dict[str, dict[str, list[int]]] = {}
    shown: dict[str, list[np.ndarray]] = {name: [] for name in VENTRICLE_CLASSES}
    for scale in guidance_scales:
        for name in VENTRICLE_CLASSES:
            folder = samples / f"guidance_{scale:g}" / class_folder({"ventricles": name})
            files = json.loads((folder / "samples.json").read_text())["files"]
            volumes = [np.asarray(nib.load(str(folder / f)).dataobj, dtype=np.float32) for f in files]
            synthetic.setdefault(f"{scale:g}", {})[name] = [ventricle_volume(v) for v in volumes]
            if scale == guidance_scales[-1]:
                shown[name] = volumes[:3]
    rows, titles = [], []
    for name in VENTRICLE_CLASSES:
        real = [v for v, item in zip(heldout_volumes, heldout) if item["ventricles"] == name][:2]
        rows.append(real + shown[name])
        titles.append(f"{name} ventricles")
    columns = ["real (held out)"] * 2 + [f"synthetic, guidance {guidance_scales[-1]:g}"] * max(len(v) for v in shown.values())
    centre = [s // 2 for s in rows[0][0].shape]
    picture = save_slices_through(rows, [centre] * len(rows), samples / "classes_real_synthetic.png", columns[: max(len(r) for r in rows)], titles)
    return {
        "classes": LABELS,
        "class_consistency": {
            "measure": "ventricle_volume: voxels darker than -0.2 in the brain's central box (common.data.brain_population)",
            "classifier": "nearest class median of the real training brains",
            "class_medians": classifier.medians,
            "heldout_real": classifier.accuracy(real_heldout),
            "samples_by_guidance_scale": {scale: classifier.accuracy(values) for scale, values in synthetic.items()},
        },
        "ventricle_volume": {"train_real": real_train, "heldout_real": real_heldout, "samples_by_guidance_scale": synthetic},
        "picture": picture,
    }


def summary(metrics: dict[str, Any], samples: Path) -> str:
    """The demo's findings for the terminal: class consistency of real and synthetic brains by the proxy and by the
    generic classifier (``evaluate_classes`` printed the realism per class before)."""
    prefix = f"[{BUNDLE}] "
    consistency = metrics["class_consistency"]
    medians = consistency["class_medians"]
    lines = [
        f"{prefix}class consistency (ventricle volume, nearest class median: "
        + ", ".join(f"{name} {value:.0f}" for name, value in medians.items()) + " voxels):",
        f"{prefix}  held-out real brains: {consistency['heldout_real']['accuracy']:.0%} judged their own class",
    ]
    for scale, result in consistency["samples_by_guidance_scale"].items():
        per_class = ", ".join(f"{name} {share:.0%}" for name, share in result["per_class"].items())
        lines.append(f"{prefix}  samples at guidance scale {scale}: {result['accuracy']:.0%} ({per_class})")
    profile = consistency["intensity_profile"]
    lines.append(f"{prefix}the same judged by the generic classifier of `python -m common evaluate_classes` (intensity profile): "
                 f"held-out real {profile['heldout_real']['accuracy']:.0%}, samples "
                 + ", ".join(f"{result['accuracy']:.0%} at {scale}" for scale, result in profile["samples_by_guidance_scale"].items()))
    lines.append(f"{prefix}look at {samples}/classes_real_synthetic.png; per class and scale: {samples}/guidance_<scale>/ventricles=<class>/evaluation")
    return "\n".join(lines)

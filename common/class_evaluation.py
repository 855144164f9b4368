"""Evaluate a class-conditional latent bundle class by class on a labelled dataset: ``python -m common
evaluate_classes``.

For every class (every combination of the labelled variables' classes with at least 2 training volumes) and every
guidance scale, the bundle's own ``evaluate.json`` samples that class and compares the samples with the real
volumes of that class only (``labels_file``; the held-out ones with ``heldout_labels_file``). Then class
consistency: an ``IntensityProfileClassifier`` per variable, fitted on the real training volumes, judges the
held-out real volumes and the samples, so its accuracy on samples reads against its accuracy on real volumes.
Everything goes to ``class_metrics.json``. Not in Medical Diffusion (Khader et al.), whose model is unconditional.
"""

from __future__ import annotations

import json
import numbers
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle
from monai.data import DataLoader, Dataset

from common.data import LABELS_KEY, check_class_labels, class_names, labelled_datalist, labels_description
from common.evaluation import IntensityProfileClassifier
from common.io import bundle_dir, write_json
from common.overrides import refuse_unknown_ids
from common.pipeline import config_files_of
from common.sampling import checked_guidance_scale

__all__ = ["class_folder", "evaluate_classes", "summary"]

MIN_VOLUMES = 2  # real volumes of a class the evaluation needs (set-to-set measures)


def class_folder(labels: Mapping[str, str]) -> str:
    """The folder of one class's samples and evaluation: ``ventricles=enlarged`` (``acl=tear_meniscus=intact``)."""
    return labels_description(labels).replace(" ", "_").replace("/", "-")


def _scales(guidance_scales: object) -> tuple[float, ...]:
    """``guidance_scales`` as floats: one number, a list, or a comma-separated string."""
    if isinstance(guidance_scales, str):
        items: Sequence[object] = [item for item in guidance_scales.split(",") if item.strip()]
        try:
            items = [float(item) for item in items]
        except ValueError:
            raise ValueError(f"guidance_scales must be numbers, e.g. 1,3,7; got {guidance_scales!r}.") from None
    elif isinstance(guidance_scales, numbers.Real):
        items = [guidance_scales]
    elif isinstance(guidance_scales, Sequence):
        items = list(guidance_scales)
    else:
        raise ValueError(f"guidance_scales must be a number or a list of numbers, got {guidance_scales!r}.")
    if not items:
        raise ValueError("guidance_scales is empty: give at least one scale, e.g. 3.")
    return tuple(checked_guidance_scale(item) for item in items)


def _features(dataset: Dataset, classifier: IntensityProfileClassifier, num_workers: int) -> torch.Tensor:
    """The classifier's features of every volume of ``dataset``, read one at a time."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    return torch.cat([classifier.features(torch.as_tensor(item["image"], dtype=torch.float32)) for item in loader])


def _sample_features(folder: Path, classifier: IntensityProfileClassifier) -> torch.Tensor:
    files = json.loads((folder / "samples.json").read_text())["files"]
    volumes = [torch.as_tensor(np.asarray(nib.load(str(folder / name)).dataobj, dtype=np.float32))[None, None] for name in files]
    return torch.cat([classifier.features(volume) for volume in volumes])


def evaluate_classes(
    bundle: str = "brain_mri",
    ckpt_dir: str | None = None,
    output_dir: str = "class_evaluation",
    dataset_dir: str | None = None,
    labels_file: str | None = None,
    heldout_dir: str | None = None,
    heldout_labels_file: str | None = None,
    guidance_scales: object = 3.0,
    **overrides: Any,
) -> str:
    """Sample and evaluate every class of a class-conditional model against the real volumes of that class, judge
    class consistency, and write ``output_dir/class_metrics.json``; print the findings and return ``output_dir``.

    Args:
        bundle: a latent bundle under ``bundles/``.
        ckpt_dir: the trained models (``autoencoder.pt``, ``diffusion.pt``).
        output_dir: ``guidance_<scale>/<variable>=<class>/`` (samples and their ``evaluation/``) and ``class_metrics.json``.
        dataset_dir, labels_file: the training volumes and their labels, as the model was trained (knee_mri reads
            MRNet's label files from ``dataset_dir``).
        heldout_dir, heldout_labels_file: held-out volumes and their labels (strongly advised: without them the
            classifier's accuracy on real volumes is unknown).
        guidance_scales: the classifier-free guidance scales to sample each class at, e.g. ``1,3,7``.
        overrides: further overrides of the bundle's configs, as the model was trained and is sampled:
            ``class_labels`` (required), and for example ``num_samples``, ``image_size``, ``num_inference_steps``.
    """
    started = time.time()
    configs = bundle_dir(bundle) / "configs"
    if not (configs / "evaluate.json").is_file() or not (configs / "train.json").is_file():
        raise ValueError(f"bundle '{bundle}' is not a latent bundle with evaluate.json (brain_mri, knee_mri, breast_mri, chest_ct).")
    if ckpt_dir is None:
        raise ValueError("ckpt_dir is required: the folder of the trained class-conditional model (autoencoder.pt, diffusion.pt).")
    classes = check_class_labels(overrides.get("class_labels"))
    if classes is None:
        raise ValueError("class_labels is required: the labelled variables and their classes, as the model was trained, "
                         "e.g. --class_labels \"{'ventricles': ['normal', 'enlarged']}\".")
    refused = sorted({"labels", "guidance_scale"} & set(overrides))
    if refused:
        raise ValueError(f"{refused} are chosen per class by evaluate_classes: leave them out (guidance_scales sets the scales).")
    scales = _scales(guidance_scales)
    settings = {"bundle_root": str(configs.parent), "ckpt_dir": str(ckpt_dir), "dataset_dir": dataset_dir,
                "labels_file": labels_file, "heldout_dir": heldout_dir, "heldout_labels_file": heldout_labels_file, **overrides}
    files = config_files_of(configs)["evaluation"]
    refuse_unknown_ids(files, list(settings), "to evaluate_classes")  # a mistyped override stops here, not ignored
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(settings)
    real_labels = parser.get_parsed_content("real_labels")
    if real_labels is None:
        raise ValueError("labels_file is required: the labels of the training volumes (a CSV or JSON of file,"
                         f"{','.join(classes)}), to compare each class's samples with the real volumes of that class.")
    train = labelled_datalist(parser.get_parsed_content("datalist"), classes, real_labels, dataset_dir)
    heldout_datalist = parser.get_parsed_content("heldout_datalist")
    heldout = None
    if heldout_datalist:
        heldout_labels = parser.get_parsed_content("read_labels")(heldout_labels_file, heldout_dir)
        if heldout_labels is None:
            raise ValueError("heldout_labels_file is required with heldout_dir: the held-out volumes' labels, to judge the "
                             "classifier on real volumes it did not see and to compare each class with its held-out volumes.")
        heldout = labelled_datalist(heldout_datalist, classes, heldout_labels, heldout_dir, kind="held-out")

    def counts(datalist: list[dict[str, Any]] | None) -> Counter:
        return Counter(tuple(int(i) for i in item[LABELS_KEY]) for item in datalist or [])

    in_training, in_heldout = counts(train), counts(heldout)
    evaluated = [key for key in sorted(in_training) if in_training[key] >= MIN_VOLUMES]
    skipped = [{"labels": class_names(key, classes), "training_volumes": in_training[key]} for key in sorted(in_training) if key not in evaluated]
    if not evaluated:
        raise ValueError(f"no class has {MIN_VOLUMES} training volumes to compare samples with: {skipped}.")

    out = Path(output_dir).resolve()
    ratios: dict[str, dict[str, Any]] = {}
    for scale in scales:
        for key in evaluated:
            labels = class_names(key, classes)
            folder = out / f"guidance_{scale:g}" / class_folder(labels)
            print(f"[{bundle}] sampling and evaluating {labels_description(labels)} at guidance scale {scale:g}", flush=True)
            without_heldout = {"heldout_dir": None} if heldout is not None and in_heldout[key] == 0 else {}
            run_bundle(config_file=files, meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
                       **{**settings, **without_heldout}, labels=labels, guidance_scale=scale, output_dir=str(folder))
            found = json.loads((folder / "evaluation" / "metrics.json").read_text())
            ratios.setdefault(f"{scale:g}", {})[class_folder(labels)] = {**found["ratios_to_real"], "real_volumes": found["real_volumes"]}

    consistency = judge(parser, classes, train, heldout, out, evaluated, scales, int(overrides.get("num_workers", 0)))
    metrics = {
        "bundle": bundle,
        "class_labels": {name: list(names) for name, names in classes.items()},
        "classes_evaluated": [{"labels": class_names(key, classes), "folder": class_folder(class_names(key, classes)),
                               "training_volumes": in_training[key], "heldout_volumes": in_heldout[key] if heldout is not None else None}
                              for key in evaluated],
        "classes_skipped": skipped,
        "class_consistency": consistency,
        "ratios_to_real_per_class": ratios,
        "seconds": round(time.time() - started, 1),
    }
    write_json(metrics, out / "class_metrics.json")
    print(summary(metrics, out, f"[{bundle}] "), flush=True)
    return str(out)


def judge(
    parser: ConfigParser, classes: Mapping[str, Sequence[str]], train: list[dict[str, Any]], heldout: list[dict[str, Any]] | None,
    out: Path, evaluated: list[tuple[int, ...]], scales: tuple[float, ...], num_workers: int,
) -> dict[str, Any]:
    """Class consistency: per labelled variable, an ``IntensityProfileClassifier`` fitted on the real training
    volumes (the bundle's preprocessing, without random transforms), its accuracy on the held-out real volumes and
    on the samples of every guidance scale (each judged against the class it was asked for)."""
    preprocessing = parser.get_parsed_content("evaluation_preprocessing")
    profile = IntensityProfileClassifier(next(iter(classes.values())))  # features do not depend on the classes
    train_features = _features(Dataset(train, preprocessing), profile, num_workers)
    heldout_features = _features(Dataset(heldout, preprocessing), profile, num_workers) if heldout else None
    samples: dict[str, list[tuple[tuple[int, ...], torch.Tensor]]] = {}
    for scale in scales:
        for key in evaluated:
            folder = out / f"guidance_{scale:g}" / class_folder(class_names(key, classes))
            samples.setdefault(f"{scale:g}", []).append((key, _sample_features(folder, profile)))
    per_variable: dict[str, Any] = {}
    for position, (name, names) in enumerate(classes.items()):
        classifier = IntensityProfileClassifier(names).fit(train_features, [int(item[LABELS_KEY][position]) for item in train])
        per_variable[name] = {
            "heldout_real": classifier.accuracy(heldout_features, [names[int(item[LABELS_KEY][position])] for item in heldout])
            if heldout_features is not None else None,
            "samples_by_guidance_scale": {
                scale: classifier.accuracy(torch.cat([f for _, f in found]), [names[key[position]] for key, f in found for _ in range(len(f))])
                for scale, found in samples.items()
            },
        }
    return {
        "classifier": "IntensityProfileClassifier (common.evaluation): logistic regression on the intensity histogram and a "
                      "2x2x2 grid of mean intensities, fitted on the real training volumes, one per labelled variable",
        "per_variable": per_variable,
    }


def summary(metrics: dict[str, Any], out: Path, prefix: str = "") -> str:
    """The findings for the terminal: class consistency on held-out real volumes and on samples, realism per class."""
    lines = [f"{prefix}class consistency ({metrics['class_consistency']['classifier'].split(' (')[0]}, per variable):"]
    for name, found in metrics["class_consistency"]["per_variable"].items():
        real = "unknown (no heldout_dir)" if found["heldout_real"] is None else format(found["heldout_real"]["accuracy"], ".0%")
        lines.append(f"{prefix}  {name}: held-out real volumes {real} judged their own class")
        for scale, result in found["samples_by_guidance_scale"].items():
            per_class = ", ".join(f"{c} {share:.0%}" for c, share in result["per_class"].items())
            lines.append(f"{prefix}  {name}: samples at guidance scale {scale}: {result['accuracy']:.0%} ({per_class})")
    for scale, by_class in metrics["ratios_to_real_per_class"].items():
        for folder, ratios in by_class.items():
            shown = ", ".join(f"{key} {'n/a' if ratios.get(key) is None else format(ratios[key], '.2f') + 'x'}" for key in (
                "histogram_jensen_shannon", "histogram_wasserstein", "diversity_ms_ssim", "slice_consistency_ssim", "sharpness"))
            lines.append(f"{prefix}  {folder} at guidance {scale}, against its {ratios['real_volumes']} real volumes: {shown}")
    if metrics["classes_skipped"]:
        lines.append(f"{prefix}not evaluated (fewer than {MIN_VOLUMES} training volumes): "
                     + ", ".join(labels_description(c["labels"]) for c in metrics["classes_skipped"]))
    lines.append(f"{prefix}per class and scale: {out}/guidance_<scale>/<variable>=<class>/evaluation (metrics.json, samples_and_real.png)")
    return "\n".join(lines)

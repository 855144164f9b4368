"""The Med-DDPM demo: train ``brain_tumor_semantic`` on real-anatomy brains with simulated lesions, sample images
for held-out masks and for edited ones, and judge the pairs by what they are for.

``python -m common demo --bundle brain_tumor_semantic`` runs it. The pairs are ``common.data.brain_lesion_demo_datalist``'s
(the ICBM 2009a template, deformed, each with one simulated tumour-like lesion labelled as BraTS labels them); the
bundle reads them as it reads BraTS (``label_mapping`` 1, 2, 4 -> 1, 2, 3, the brain area added as class 4 by
``foreground_class``) at a CPU size. Every step is one of the bundle's own configs run by ``monai.bundle.run``:
``train.json``, then ``train.json`` + ``inference.json`` + ``evaluate.json`` (Med-DDPM's segmentation utility check,
Dorjsembe et al. Sec. III-E, on held-out real pairs), then ``inference.json`` on masks edited as a user would draw
them (``common.med_ddpm.mask_edits``: a lesion moved, grown, or a second one added; the paper's Fig. 4).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle

from common.data import brain_lesion_demo_datalist, nifti_stem
from common.evaluation.pictures import save_slices_through
from common.io import bundle_dir, save_nifti, write_text
from common.overrides import refuse_unknown_ids

from .evaluation import class_contrast, class_means, classes_of, mask_picture
from .mask_edits import EDITS, edit_mask

__all__ = ["CLASS_NAMES", "DEMO_SETTINGS", "LESION_RADIUS", "demo", "run_demo", "summary"]

BUNDLE = "brain_tumor_semantic"
# the classes after the bundle's BraTS label mapping, with the brain area as the last one (foreground_class)
CLASS_NAMES = ["necrotic core", "oedema", "enhancing rim", "brain"]
BRAIN_CLASS = 4
TRAINING_PAIRS, HELDOUT_PAIRS, EDITED_CASES = 16, 8, 2

# By step, as common.pipeline.DEMO_SETTINGS: "shared" goes to every config (the classes, the size and the network,
# which training and sampling must agree on), "data" to the configs that read pairs (as the bundle reads BraTS), the
# others to their step; inference's mask spacing is derived from "data" and the size. 2 mm brains cropped to
# 80x96x80 and resized to 32x40x32 (5 x 4.8 x 5 mm voxels); a denoiser of 16-32-64 channels (1.8 M parameters; the
# paper's has 64-64-128-192-256, 40 M) trained for 240 iterations of batch 4 at lr 1e-3 (the paper: 1e-5 for
# 100,000 iterations of batch 1), 1.7 to 2.4 s an iteration on 2 CPU cores: at most 10 minutes. Not the paper's: v-prediction and DDIM
# with 25 steps (the paper: epsilon, DDPM 250), measured together with glioma-sized tumours (LESION_RADIUS) against the
# paper's target with add_lesion's smaller default (whose rim was thinner than one 5 mm voxel): the samples then drew
# the rim as well as the core (contrast 0.75x and 1.09x real, was -0.11x and 0.75x) and a segmenter trained on the real
# pairs found the lesion classes (Dice 0.27 to 0.41, was 0.03 to 0.07). Which change did what was not separated.
LESION_RADIUS = (7.0, 12.0)  # the tumours' mean radii in 2 mm voxels: 14 to 24 mm, the oedema 1.3 to 1.9 times that
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "shared": {
        "num_classes": 4,
        "image_size": [32, 40, 32],
        "network_def#channels": [16, 32, 64],
        "network_def#attention_levels": [False, False, True],
        "network_def#num_head_channels": [16, 32, 64],
        "network_def#norm_num_groups": 8,
        "prediction_type": "v_prediction",
    },
    "data": {
        "label_mapping": {"1": 1, "2": 2, "4": 3},
        "foreground_class": BRAIN_CLASS,
        "source_spacing": [2.0, 2.0, 2.0],
        "crop_size": [80, 96, 80],
        "num_workers": 0,
    },
    "train": {
        "batch_size": 4,
        "lr": 1e-3,
        "train#trainer#max_epochs": 60,
        "ema#start_iteration": 120,
        "ema#every": 1,
        "ema#decay": 0.99,
        "save_interval": 0,
        "log_interval": 25,
    },
    "inference": {"num_inference_steps": 25},
    "evaluation": {"num_masks": TRAINING_PAIRS, "samples_for_one_mask": 4, "utility_epochs": 50, "class_names": CLASS_NAMES},
}


def _run(configs: Path, files: list[str], overrides: dict[str, Any]) -> None:
    paths = [str(configs / name) for name in files]
    refuse_unknown_ids(paths, list(overrides), "in the demo's settings")
    run_bundle(config_file=paths, meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"), **overrides)


def demo(output_dir: str = "demo_output") -> str:
    """Train, evaluate and sample for edited masks into ``output_dir`` (models/, logs/, demo_data/, samples/);
    print the summary and return the samples folder."""
    return run_demo(output_dir, DEMO_SETTINGS, TRAINING_PAIRS, HELDOUT_PAIRS, EDITED_CASES)


def run_demo(output_dir: str, settings: dict[str, dict[str, Any]], training_pairs: int, heldout_pairs: int, edited_cases: int) -> str:
    """``demo`` with other settings (by stage, as ``DEMO_SETTINGS``) and numbers of pairs: what the tests run small."""
    if not 1 <= edited_cases <= heldout_pairs:
        raise ValueError(f"edited_cases must be between 1 and heldout_pairs ({heldout_pairs}), got {edited_cases}.")
    out = Path(output_dir).resolve()
    configs = bundle_dir(BUNDLE) / "configs"
    data = out / "demo_data"
    brain_lesion_demo_datalist(data, "train", training_pairs, radius_range=LESION_RADIUS)
    heldout = brain_lesion_demo_datalist(data, "heldout", heldout_pairs, radius_range=LESION_RADIUS)
    model = {"bundle_root": str(bundle_dir(BUNDLE)), "ckpt_dir": str(out / "models"), **settings["shared"]}
    reading = {**model, **settings["data"], "dataset_dir": str(data / "train")}
    samples = out / "samples"
    data_settings, size = settings["data"], settings["shared"]["image_size"]
    # the voxel size of the model's grid: what inference checks every mask against
    spacing = [s * c / i for s, c, i in zip(data_settings["source_spacing"], data_settings["crop_size"], size)]
    sampling = {**settings["inference"], "spacing": spacing}
    # the edited masks first: a lesion set no edit can place stops the demo before minutes of training, not after
    edits = edited_masks(configs, reading, heldout, out / "edited_masks", spacing, edited_cases)
    timings: dict[str, float] = {}
    for step, files, overrides in (
        ("training", ["train.json"], {**reading, **settings["train"], "log_dir": str(out / "logs")}),
        ("evaluation", ["train.json", "inference.json", "evaluate.json"], {
            **reading, **sampling, **settings["evaluation"],
            "heldout_dir": str(data / "heldout"), "output_dir": str(samples),
        }),
    ):
        start = time.time()
        print(f"[{BUNDLE}] {step} starting", flush=True)
        _run(configs, files, overrides)
        timings[step] = time.time() - start
    start = time.time()
    _run(configs, ["inference.json"], {
        **model, **sampling, "mask_dir": str(out / "edited_masks"), "output_dir": str(samples / "edited_masks"),
    })
    metrics_path = samples / "evaluation" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["edited_masks"] = judge_edits(edits, samples / "edited_masks", metrics, samples / "evaluation" / "edited_masks.png")
    timings["edited_masks"] = time.time() - start
    metrics["demo_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_text(json.dumps(metrics, indent=2) + "\n", metrics_path)
    print(summary(metrics, samples / "evaluation"), flush=True)
    return str(samples)


def edited_masks(
    configs: Path, reading: dict[str, Any], pairs: list[dict[str, str]], folder: Path, spacing: list[float], count: int,
) -> list[dict[str, Any]]:
    """For the first ``count`` held-out pairs whose lesion every edit can place, the mask on the model's grid (the
    bundle's own preprocessing) and the mask edited each way (``EDITS``), written to ``folder`` as NIfTI label masks
    at the model's spacing, ready for ``inference.json``'s ``mask_dir``. A pair whose lesion (with its oedema) has
    no other place in the brain is passed over, and said. Returns the cases: name, real image, and the class map of
    each variant."""
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json")])
    parser.update(reading)
    preprocessing = parser.get_parsed_content("train#preprocessing")
    affine = np.diag([*spacing, 1.0])
    cases = []
    for index, pair in enumerate(pairs):
        if len(cases) == count:
            break
        item = preprocessing(dict(pair))
        classes = classes_of(torch.as_tensor(item["label"]))[0].numpy().astype(np.uint8)
        name = nifti_stem(pair["label"])
        try:
            variants = {"original": classes, **{edit: edit_mask(classes, edit, BRAIN_CLASS, seed=index) for edit in EDITS}}
        except ValueError as error:
            print(f"edited masks: {name} passed over ({error})", flush=True)
            continue
        for variant, mask in variants.items():
            save_nifti(mask, affine, folder / f"{name}_{variant}.nii.gz", dtype=np.uint8)
        cases.append({"name": name, "image": torch.as_tensor(item["image"])[0].numpy(), "variants": variants})
    if len(cases) < count:
        raise ValueError(f"only {len(cases)} of {len(pairs)} held-out pairs have a lesion that every edit can place, "
                         f"{count} asked for: write more held-out pairs or ask for fewer edited cases.")
    return cases


def judge_edits(cases: list[dict[str, Any]], sampled: Path, metrics: dict[str, Any], picture: Path) -> dict[str, Any]:
    """Does each image sampled for an edited mask follow the edit? The per-class contrast of each variant's samples
    against the real images' (from the evaluation), and a picture of every mask beside its sample, cut through the
    lesion (for a moved or added one, through where the edit changed the mask)."""
    records = json.loads((sampled / "samples.json").read_text())["samples"]
    image_of = {nifti_stem(r["mask"]): sampled / r["image"] for r in records}
    real_means = metrics["class_mean_intensity"]["real"]
    by_variant: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    rows, centres, titles = [], [], []
    for case in cases:
        original = case["variants"]["original"]
        for variant, mask in case["variants"].items():
            image = np.asarray(nib.load(image_of[f"{case['name']}_{variant}"]).dataobj, dtype=np.float32)
            by_variant.setdefault(variant, []).append((image, mask))
            changed = (mask != original) & (mask != BRAIN_CLASS) if variant in ("moved", "added") else (mask > 0) & (mask != BRAIN_CLASS)
            centres.append([int(round(v)) for v in np.argwhere(changed).mean(0)])
            shown = [mask_picture(torch.as_tensor(mask), len(CLASS_NAMES)).numpy(), image]
            rows.append(shown + ([case["image"]] if variant == "original" else []))
            titles.append(f"{case['name']} {variant}")
    results: dict[str, Any] = {"cases": len(cases), "class_contrast_ratio_to_real": {}}
    for variant, pairs in by_variant.items():
        images = torch.as_tensor(np.stack([image for image, _ in pairs]))[:, None]
        masks = torch.as_tensor(np.stack([mask for _, mask in pairs]).astype(np.int64))[:, None]
        contrast = class_contrast(class_means(images, masks, len(CLASS_NAMES)), real_means, BRAIN_CLASS, CLASS_NAMES)
        results["class_contrast_ratio_to_real"][variant] = {k: v["ratio_to_real"] for k, v in contrast["per_class"].items()}
    results["picture"] = save_slices_through(rows, centres, picture, ["mask", "synthetic", "real (held out)"], titles)
    return results


def _ratios(values: dict[str, Any]) -> str:
    return ", ".join(f"{name} {'n/a' if v is None else f'{v:.2f}x'}" for name, v in values.items())


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _dice(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def summary(metrics: dict[str, Any], evaluation_dir: Path) -> str:
    """The demo's findings for the terminal: the segmentation utility first, then whether images follow masks."""
    prefix = f"[{BUNDLE}] "
    utility = metrics["segmentation_utility"]
    contrast = {k: v["ratio_to_real"] for k, v in metrics["class_contrast"]["per_class"].items()}
    diversity = metrics["diversity_ms_ssim"]
    edits = metrics["edited_masks"]["class_contrast_ratio_to_real"]
    lines = [
        f"{prefix}segmentation of {metrics['test_pairs']} held-out real pairs, Dice per class ({' / '.join(utility['classes'])}):",
        f"{prefix}  trained on {utility['training_pairs']} synthetic pairs: {_dice(utility['trained_on_synthetic']['dice_per_class'])}",
        f"{prefix}  trained on {utility['training_pairs']} real pairs:      {_dice(utility['trained_on_real']['dice_per_class'])}",
        f"{prefix}  trained on both:                {_dice(utility['trained_on_real_and_synthetic']['dice_per_class'])}",
        f"{prefix}contrast of each class against the {metrics['class_contrast']['against']}, synthetic / real (about 1x "
        f"follows the mask): {_ratios(contrast)}",
        *[f"{prefix}  for {variant} lesions: {_ratios(values)}" for variant, values in edits.items() if variant != "original"],
        f"{prefix}diversity for one mask (MS-SSIM, lower is more diverse): {_number(diversity['synthetic_one_mask'])} against "
        f"{_number(diversity['real_different_patients'])} between real patients",
        f"{prefix}near copies of a training image: {len(metrics['memorisation_audit']['near_copies'])} of {metrics['masks']}",
        f"{prefix}look at {evaluation_dir}/masks_real_synthetic.png, edited_masks.png and one_mask_diversity.png; the "
        "lesions are simulated (common.data.lesions)",
    ]
    return "\n".join(lines)

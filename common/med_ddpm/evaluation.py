"""Evaluating a mask-conditioned model: does it follow masks, is it diverse for one mask, does it copy patients,
and are its image/label pairs useful for training a segmentation network?

The utility check is Med-DDPM's (Dorjsembe et al., Sec. III-E: a segmentation network trained on synthetic pairs,
tested on real ones), at small scale.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from common.evaluation import SyntheticEvaluationBase, metrics
from common.evaluation.audit import NearestNeighbourSearch, memorisation_audit
from common.evaluation.pictures import save_slices_through

from . import segmentation_utility
from .sampler import MaskConditionedSampler

__all__ = ["MaskConditionedEvaluator", "class_contrast", "class_means", "classes_of", "mask_picture"]


def class_means(images: torch.Tensor, masks: torch.Tensor, num_classes: int) -> list[float]:
    """Mean intensity of the first channel of ``images`` (N, C, H, W, D) inside each class 0..``num_classes`` of
    ``masks`` (N, 1, H, W, D), over all images; NaN for a class absent from every mask."""
    means = []
    for c in range(num_classes + 1):
        inside = masks == c
        means.append(float(images[:, :1][inside].mean()) if inside.any() else float("nan"))
    return means


def class_contrast(synthetic_means: Sequence[float], real_means: Sequence[float], reference: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Does each image follow its mask? Each class's mean intensity minus that of the ``reference`` class (as
    ``class_means`` gives them), in synthetic and in real images, and their ratio: about 1 when the samples draw
    each class as bright or as dark against its surroundings as the real images do, about 0 when they ignore it,
    negative when they draw it the wrong way round. Classes absent from the masks get None."""
    per_class: dict[str, Any] = {}
    for c, name in enumerate(class_names, start=1):
        if c == reference:
            continue
        synthetic, real = synthetic_means[c] - synthetic_means[reference], real_means[c] - real_means[reference]
        usable = math.isfinite(real) and math.isfinite(synthetic) and abs(real) > 1e-6
        per_class[name] = {
            "synthetic": synthetic if math.isfinite(synthetic) else None,
            "real": real if math.isfinite(real) else None,
            "ratio_to_real": synthetic / real if usable else None,
        }
    return {"against": "background" if reference == 0 else class_names[reference - 1], "per_class": per_class}


def classes_of(onehot: torch.Tensor) -> torch.Tensor:
    """(1, H, W, D) class indices of a one-hot mask without its background channel (K, H, W, D)."""
    return torch.where(onehot.sum(0, keepdim=True) > 0, onehot.argmax(0, keepdim=True) + 1, 0).long()


class MaskConditionedEvaluator(SyntheticEvaluationBase):
    """Sample for the masks of real pairs and compare, writing ``metrics.json`` and pictures to ``evaluation_dir``.

    Args (besides those of ``common.evaluation.SyntheticEvaluationBase``):
        sampler: the bundle's ``MaskConditionedSampler`` (its network, scheduler and seed are used).
        real_dataset: real pairs preprocessed as for training: ``{"image": (C, H, W, D), "label": one-hot}``.
        evaluation_dir: where the results go.
        num_classes: classes besides the background.
        heldout_dataset: real pairs the diffusion model did not see, to test the segmentation networks on; without
            it the last ``heldout_fraction`` of the real pairs are held out (from the segmentation training only).
        reference_volumes: real pairs used (the first ones); the audit searches these.
        num_masks: masks of real training pairs to sample one image for (the synthetic training pairs).
        samples_for_one_mask: images sampled for the first mask, for the diversity at a fixed mask.
        heldout_fraction: see ``heldout_dataset``.
        max_pairs: random pairs for the MS-SSIM diversity.
        copy_threshold: the audit's near-copy threshold (see ``common.evaluation.audit``).
        utility_epochs: epochs of each segmentation training.
        contrast_reference_class: the class each class's contrast is measured against (``class_contrast``), for
            example the tissue a lesion sits in; 0 (the background) by default.
        class_names: a name for each class 1..``num_classes``, used in ``metrics.json``.
        device: where the segmentation networks train.
        num_workers: processes preprocessing the real pairs.
    """

    def __init__(
        self,
        sampler: MaskConditionedSampler,
        real_dataset: Dataset,
        evaluation_dir: str | os.PathLike,
        num_classes: int,
        heldout_dataset: Dataset | None = None,
        reference_volumes: int = 100,
        num_masks: int = 20,
        samples_for_one_mask: int = 8,
        heldout_fraction: float = 0.2,
        max_pairs: int = 100,
        copy_threshold: float = 0.5,
        utility_epochs: int = 50,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        contrast_reference_class: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            real_dataset, evaluation_dir, heldout_dataset, reference_volumes, max_pairs, copy_threshold, device,
            num_workers, seed=sampler.seed,
        )
        if samples_for_one_mask < 2 or num_masks < 2:
            raise ValueError(f"need samples_for_one_mask >= 2 and num_masks >= 2, got {samples_for_one_mask} and {num_masks}.")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}.")
        if utility_epochs < 1:
            raise ValueError(f"utility_epochs must be >= 1, got {utility_epochs}.")
        if not 0 <= contrast_reference_class <= num_classes:
            raise ValueError(f"contrast_reference_class must be a class in 0..{num_classes}, got {contrast_reference_class}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names must name the {num_classes} classes 1..{num_classes}, got {list(class_names)}.")
        self.sampler = sampler
        self.num_classes = num_classes
        self.num_masks = num_masks
        self.samples_for_one_mask = samples_for_one_mask
        self.heldout_fraction = heldout_fraction
        self.utility_epochs = utility_epochs
        self.contrast_reference_class = contrast_reference_class
        self.class_names = list(class_names) if class_names is not None else [f"class {c}" for c in range(1, num_classes + 1)]

    def pairs(self, dataset: Dataset, limit: int | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, image, classes) of the first ``limit`` items of a dataset."""
        return [
            (name, torch.as_tensor(item["image"][0]).float(), classes_of(torch.as_tensor(item["label"][0])))
            for name, item in self.real_items(dataset, limit)
        ]

    def _diversity(self, volumes: torch.Tensor) -> float | dict[str, str]:
        try:
            return metrics.mean_pairwise_ms_ssim(volumes[:, :1], self.max_pairs, self.seed)[0]
        except ValueError as error:  # volumes smaller than MS-SSIM's scales allow
            return {"skipped": str(error)}

    def run(self) -> dict[str, Any]:
        """Sample, compute everything, write ``metrics.json`` and the PNGs, and return the metrics."""
        real = self.timed("reading_real_pairs", lambda: self.pairs(self.real_dataset, self.reference_volumes))
        if self.heldout_dataset is not None:
            training, test = real, self.pairs(self.heldout_dataset)
            test_source = "held-out pairs (heldout_dir)"
        else:
            cut = max(1, round(len(real) * (1 - self.heldout_fraction)))
            training, test = real[:cut], real[cut:]
            test_source = f"the last {len(test)} real pairs, held out from the segmentation training (the diffusion model saw them)"
        if len(training) < 2 or not test:
            raise ValueError(f"need at least 2 real pairs to train on and 1 to test on, got {len(training)} and {len(test)}.")
        training = training[: self.num_masks]
        seed = self.seed

        def sample_all() -> tuple[torch.Tensor, torch.Tensor]:
            per_mask = torch.stack([self.sampler.sample(classes, seed + i) for i, (_, _, classes) in enumerate(training)])
            first = training[0][2]
            one_mask = torch.stack([self.sampler.sample(first, seed + len(training) + k) for k in range(self.samples_for_one_mask)])
            return per_mask, one_mask

        synthetic, one_mask = self.timed("sampling", sample_all)
        real_images = torch.stack([image for _, image, _ in training])
        names = [f"synthetic for {name}" for name, _, _ in training]
        results: dict[str, Any] = {"masks": len(training), "test_pairs": len(test), "test_pairs_are": test_source}
        results["diversity_ms_ssim"] = self.timed("diversity_ms_ssim", lambda: {
            "synthetic_one_mask": self._diversity(one_mask),
            "real_different_patients": self._diversity(torch.stack([image for _, image, _ in real])),
        })
        results["class_mean_intensity"] = self.timed("class_mean_intensity", lambda: self.class_means(synthetic, real_images, training))
        means = results["class_mean_intensity"]
        results["class_contrast"] = class_contrast(means["synthetic"], means["real"], self.contrast_reference_class, self.class_names)
        results["mmd"] = self.timed("mmd", lambda: {"synthetic_vs_real_same_masks": metrics.mmd(synthetic, real_images)})
        results["memorisation_audit"] = self.timed("memorisation_audit", lambda: self.audit(synthetic, names, real))
        results["segmentation_utility"] = self.timed("segmentation_utility", lambda: self.utility(synthetic, training, test))
        results["pictures"] = self.timed("pictures", lambda: self.pictures(synthetic, one_mask, training))
        return self.write(results)

    def class_means(self, synthetic: torch.Tensor, real_images: torch.Tensor, training: list) -> dict[str, list[float]]:
        """Mean intensity (first channel) inside each class, synthetic and real, over the same masks."""
        masks = torch.stack([classes for _, _, classes in training])
        return {key: class_means(images, masks, self.num_classes) for key, images in (("synthetic", synthetic), ("real", real_images))}

    def audit(self, synthetic: torch.Tensor, names: list[str], real: list) -> dict[str, Any]:
        """Nearest real image of every sample, leaving out the real image whose mask the sample was made from
        (it shares the anatomy of that mask by construction, so it would look like a copy)."""
        references = torch.stack([image[:1] for _, image, _ in real])
        search = NearestNeighbourSearch(synthetic[:, :1], flip_axis=None)
        search.add(references, skip=range(len(synthetic)))  # sample i was made from the mask of real pair i
        found = search.result()
        return memorisation_audit(names, found, [name for name, _, _ in real], references, None, self.copy_threshold)

    def utility(self, synthetic: torch.Tensor, training: list, test: list) -> dict[str, Any]:
        """Dice per class on the test pairs of a small U-Net trained on the synthetic pairs, of one trained on the real
        pairs of the same masks, and of one trained on both (Med-DDPM, Sec. III-E and Table II, at small scale)."""
        test_pairs = [(image, classes) for _, image, classes in test]
        synthetic_pairs = [(image, classes) for image, (_, _, classes) in zip(synthetic, training)]
        real_pairs = [(image, classes) for _, image, classes in training]
        results: dict[str, Any] = {"epochs": self.utility_epochs, "training_pairs": len(training), "classes": self.class_names}
        for key, pairs in (("trained_on_synthetic", synthetic_pairs), ("trained_on_real", real_pairs),
                           ("trained_on_real_and_synthetic", real_pairs + synthetic_pairs)):
            network = segmentation_utility.train_segmentation(pairs, self.num_classes, self.utility_epochs, device=self.device)
            results[key] = {"dice_per_class": segmentation_utility.segmentation_dice(network, test_pairs, self.num_classes, self.device)}
        real_dice = results["trained_on_real"]["dice_per_class"]
        results["synthetic_to_real_dice_ratio"] = [
            s / r if r > 0 and math.isfinite(r) and math.isfinite(s) else None
            for s, r in zip(results["trained_on_synthetic"]["dice_per_class"], real_dice)
        ]
        return results

    def structure_centre(self, classes: torch.Tensor) -> list[int]:
        """Where a picture should cut a class map (1, H, W, D): through the middle of the classes that are neither the
        background nor the reference class (a lesion in its tissue), or through the volume's middle if none."""
        inside = (classes[0] > 0) & (classes[0] != self.contrast_reference_class)
        if not inside.any():
            return [n // 2 for n in classes.shape[1:]]
        return [int(round(float(v))) for v in torch.nonzero(inside).float().mean(0)]

    def pictures(self, synthetic: torch.Tensor, one_mask: torch.Tensor, training: list) -> dict[str, str]:
        shown = min(3, len(training))
        rows, centres, names = [], [], []
        for i in range(shown):
            name, image, classes = training[i]
            rows.append([mask_picture(classes[0], self.num_classes), image[0], synthetic[i, 0]])
            centres.append(self.structure_centre(classes))
            names.append(Path(name).name)
        first = training[0][2]
        return {
            "masks_real_synthetic": save_slices_through(
                rows, centres, self.evaluation_dir / "masks_real_synthetic.png", ["mask", "real", "synthetic"], names),
            "one_mask_diversity": save_slices_through(
                [[mask_picture(first[0], self.num_classes), *[v[0] for v in one_mask[:4]]]], [self.structure_centre(first)],
                self.evaluation_dir / "one_mask_diversity.png",
                ["mask", *[f"sample {k}" for k in range(min(4, len(one_mask)))]], [Path(training[0][0]).name],
            ),
        }


def mask_picture(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A class map (H, W, D) as grey levels from -1 (background) to 1 (the last class), to show beside images."""
    return classes.float() * (2.0 / num_classes) - 1

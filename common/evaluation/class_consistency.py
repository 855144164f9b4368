"""Does a sample show the class it was asked for? A classifier fitted on real training volumes and scored on
held-out real volumes beside the samples: ``NearestClassMedian`` on a measured proxy that defines the class (the
demo's ventricle volume), ``IntensityProfileClassifier`` on the volumes' intensities for any labelled dataset.

For class-conditional generation (not in Medical Diffusion, whose model is unconditional): the accuracy on
held-out real volumes says how well the classifier tells the classes apart at all; the accuracy on samples, how
well the samples follow their labels by the same standard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["NearestClassMedian", "IntensityProfileClassifier"]


class NearestClassMedian:
    """Assigns a value to the class whose median (on the real training volumes) is nearest: for one measured
    proxy per volume, such as the ventricles' volume for brains with enlarged ventricles."""

    def __init__(self, values_by_class: Mapping[str, Sequence[float]]) -> None:
        if len(values_by_class) < 2 or any(len(values) == 0 for values in values_by_class.values()):
            raise ValueError(f"need values of at least 2 classes, each with at least one volume, got "
                             f"{ {name: len(values) for name, values in values_by_class.items()} }.")
        self.medians = {name: float(np.median(values)) for name, values in values_by_class.items()}

    def predict(self, value: float) -> str:
        """The class whose median is nearest to ``value`` (the first in order on a tie)."""
        return min(self.medians, key=lambda name: abs(self.medians[name] - float(value)))

    def accuracy(self, values_by_class: Mapping[str, Sequence[float]]) -> dict[str, float | dict[str, float] | int]:
        """The share of volumes given their own class: overall, per class, and how many were judged."""
        per_class = {name: float(np.mean([self.predict(v) == name for v in values])) for name, values in values_by_class.items() if len(values)}
        total = sum(len(values) for values in values_by_class.values())
        if not total:
            raise ValueError("no values to judge.")
        right = sum(self.predict(v) == name for name, values in values_by_class.items() for v in values)
        return {"accuracy": right / total, "per_class": per_class, "volumes": total}


class IntensityProfileClassifier:
    """A small classifier of one labelled variable, for datasets whose classes have no measured proxy: multinomial
    logistic regression on each volume's intensity profile, the share of voxels in each of ``bins`` intensity bins
    over [-1, 1] (what the tissues are made of, wherever they lie) and the mean intensity in each cell of a coarse
    ``grid`` (where they lie). Each feature is standardised on the training volumes, classes are weighted inversely
    to their frequency (the rare class is often the one asked for), with an L2 penalty ``weight_decay``.

    Deliberately simple, so that it fits on a few dozen volumes: a class that changes the tissue make-up or its
    coarse layout (enlarged ventricles, atrophy, a large lesion) is within its reach, a small local one (a torn
    ligament) may not be; its accuracy on held-out real volumes says which. On the conditional demo's brains (20
    training, 8 held out, 32^3) finer grids (4^3, 8^3 cells) over-fitted: 50 to 75% held out against 100% with these
    defaults. Fitting is deterministic (full-batch L-BFGS from zeros).

    ``features`` turns volumes into the few numbers the classifier sees, so a large dataset is read one volume at a
    time; ``fit``, ``predict`` and ``accuracy`` take those features.
    """

    def __init__(
        self, classes: Sequence[str], bins: int = 16, grid: Sequence[int] = (2, 2, 2), weight_decay: float = 1e-2, iterations: int = 200,
    ) -> None:
        self.classes = tuple(str(name) for name in classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be at least 2 distinct names, got {list(classes)!r}.")
        self.grid = tuple(int(g) for g in grid)
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"grid must be 3 positive cell counts, got {list(grid)!r}.")
        if bins < 2 or not weight_decay >= 0 or iterations < 1:
            raise ValueError(f"need bins >= 2, weight_decay >= 0 and iterations >= 1, got {bins}, {weight_decay} and {iterations}.")
        self.bins, self.weight_decay, self.iterations = int(bins), float(weight_decay), int(iterations)
        self.linear: torch.nn.Linear | None = None

    def features(self, volumes: torch.Tensor) -> torch.Tensor:
        """(N, bins + grid cells) features of (N, 1, H, W, D) volumes: the intensity histogram (shares of voxels,
        values clamped to [-1, 1]) and the grid's cell means."""
        if volumes.ndim != 5 or volumes.shape[1] != 1:
            raise ValueError(f"expected volumes of shape (N, 1, H, W, D), got {tuple(volumes.shape)}.")
        flat = volumes.float().flatten(1).clamp(-1, 1)
        histograms = torch.stack([torch.histc(values, self.bins, -1, 1) / values.numel() for values in flat])
        cells = F.adaptive_avg_pool3d(volumes.float(), self.grid).flatten(1)
        return torch.cat([histograms, cells], 1).double()

    def fit(self, features: torch.Tensor, classes: Sequence[int]) -> IntensityProfileClassifier:
        """Fit on the ``features`` of the real training volumes and their class indices; at least 2 classes must
        occur."""
        targets = torch.as_tensor(list(classes), dtype=torch.long)
        if len(targets) != len(features):
            raise ValueError(f"{len(features)} volumes but {len(targets)} classes.")
        if len(targets) and (targets.min() < 0 or targets.max() >= len(self.classes)):
            raise ValueError(f"class indices must be in [0, {len(self.classes) - 1}], got {sorted(set(targets.tolist()))}.")
        counts = torch.bincount(targets, minlength=len(self.classes)).double()
        if int((counts > 0).sum()) < 2:
            raise ValueError(f"need training volumes of at least 2 classes, got {dict(zip(self.classes, counts.long().tolist()))}.")
        features = features.double()
        self.mean, self.std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
        inputs = (features - self.mean) / self.std
        weights = torch.where(counts > 0, len(targets) / (int((counts > 0).sum()) * counts.clamp_min(1)), torch.zeros_like(counts))
        linear = torch.nn.Linear(inputs.shape[1], len(self.classes)).double()
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=self.iterations, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            value = F.cross_entropy(linear(inputs), targets, weight=weights) + self.weight_decay * linear.weight.pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimiser.step(loss)
        self.linear = linear.requires_grad_(False)
        return self

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> list[str]:
        """The class name judged for each volume, from its ``features``."""
        if self.linear is None:
            raise RuntimeError("fit the classifier on the real training volumes first.")
        scores = self.linear((features.double() - self.mean) / self.std)
        return [self.classes[i] for i in scores.argmax(1).tolist()]

    def accuracy(self, features: torch.Tensor, classes: Sequence[str]) -> dict[str, float | dict[str, float] | int]:
        """The share of volumes (their ``features``) judged their class (``classes``: a name per volume): overall,
        per class, and how many were judged."""
        if len(features) != len(classes) or not len(classes):
            raise ValueError(f"need one class per volume and at least one volume, got {len(features)} volumes and {len(classes)} classes.")
        judged = self.predict(features)
        right = [j == c for j, c in zip(judged, classes)]
        per_class = {name: float(np.mean([r for r, c in zip(right, classes) if c == name])) for name in self.classes if name in classes}
        return {"accuracy": float(np.mean(right)), "per_class": per_class, "volumes": len(classes)}

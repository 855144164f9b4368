"""Does a sample show the class it was asked for? A classifier on a measured proxy that defines the class,
fitted on real training volumes and scored on held-out real volumes beside the samples.

For class-conditional generation (not in Medical Diffusion, whose model is unconditional): the accuracy on
held-out real volumes says how well the proxy tells the classes apart at all; the accuracy on samples, how well
the samples follow their labels by the same standard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["NearestClassMedian"]


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

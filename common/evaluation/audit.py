"""The memorisation audit: is a synthetic volume a copy of a training volume?

Every sample's nearest real volume is found over the whole training set (also flipped, as the training
augmentation flips), and its distance is judged against the typical distance between real volumes: a sample much
closer to one real volume than real volumes are to each other is flagged as a near copy. docs/evaluation.md says
how to read it.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import check_volumes

__all__ = ["IDENTICAL", "NearestNeighbour", "NearestNeighbourSearch", "memorisation_audit", "nearest_neighbours"]

logger = logging.getLogger(__name__)

IDENTICAL = 1e-4  # root mean square difference below which two volumes in [-1, 1] are the same volume


@dataclass(frozen=True)
class NearestNeighbour:
    """The real volume nearest to a synthetic one (root mean square difference, also against its flipped copy)."""

    index: int
    distance: float
    flipped: bool


class NearestNeighbourSearch:
    """Nearest reference volume of every query volume, with references given in chunks (streamed from a dataset).

    Distances are root mean square voxel differences. Candidates are ranked with one float32 matrix product per
    chunk against the queries' norms computed once; the winner's distance is then computed exactly. With
    ``flip_axis`` (a spatial axis, as the training augmentation flips) every reference also counts flipped, so a
    memorised mirror image is found too.
    """

    def __init__(self, queries: torch.Tensor, flip_axis: int | None = 0) -> None:
        check_volumes(queries, "queries")
        self.queries = queries
        self.flip_axis = flip_axis
        self._flat = queries.flatten(1).float()
        self._norms = torch.linalg.vector_norm(self._flat, dim=1, dtype=torch.float64).square()
        self._best = torch.full((len(queries),), float("inf"), dtype=torch.float64)
        self.found = [NearestNeighbour(-1, float("inf"), False)] * len(queries)
        self.volumes: list[torch.Tensor | None] = [None] * len(queries)  # the winning (flipped) reference volumes
        self.count = 0

    def add(self, references: torch.Tensor, skip: Sequence[int] | None = None) -> None:
        """Compare the queries with the next ``references``; query i ignores reference number ``skip[i]``."""
        check_volumes(references, "references")
        if references.shape[2:] != self.queries.shape[2:]:
            raise ValueError(f"queries {tuple(self.queries.shape[2:])} and references {tuple(references.shape[2:])} differ in size.")
        candidates = [references] + ([references.flip(2 + self.flip_axis)] if self.flip_axis is not None else [])
        for flipped, chunk in enumerate(candidates):
            flat = chunk.flatten(1).float()
            norms = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64).square()
            squared = (self._norms[:, None] + norms[None] - 2 * (self._flat @ flat.T).double()).clamp_min(0)
            if skip is not None:
                for i, index in enumerate(skip):
                    if self.count <= index < self.count + len(references):
                        squared[i, index - self.count] = float("inf")
            best, where = squared.min(1)
            for i in torch.nonzero(best < self._best).flatten().tolist():
                self._best[i] = best[i]
                self.found[i] = NearestNeighbour(self.count + int(where[i]), float("nan"), bool(flipped))
                self.volumes[i] = chunk[int(where[i]), 0]
        self.count += len(references)

    def result(self) -> list[NearestNeighbour]:
        """Every query's nearest reference, with the exact distance."""
        exact = []
        for query, found, volume in zip(self.queries, self.found, self.volumes):
            distance = float((query[0].double() - volume.double()).square().mean().sqrt()) if volume is not None else float("inf")
            exact.append(NearestNeighbour(found.index, distance, found.flipped))
        return exact


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor, flip_axis: int | None = 0, exclude_self: bool = False) -> list[NearestNeighbour]:
    """For every query volume, the nearest of ``references`` (see ``NearestNeighbourSearch``). ``exclude_self``
    skips reference i for query i (real-to-real distances within one set)."""
    if exclude_self and len(queries) != len(references):
        raise ValueError("exclude_self needs the queries to be the references.")
    search = NearestNeighbourSearch(queries, flip_axis)
    search.add(references, skip=range(len(queries)) if exclude_self else None)
    return search.result()


def memorisation_audit(
    sample_names: Sequence[str],
    nearest: Sequence[NearestNeighbour],
    real_names: Sequence[str],
    reference: torch.Tensor,
    flip_axis: int | None,
    copy_threshold: float,
) -> dict[str, Any]:
    """The audit part of ``metrics.json``: each sample's nearest real volume and distance, its ratio to the median
    real-to-real nearest-neighbour distance of ``reference``, and whether that flags it as a near copy.

    Real volumes identical to (or mirror images of) another real volume are counted as duplicates and left out of
    the median, with a warning; a sample identical to a real volume is always flagged.
    """
    real_to_real = [n.distance for n in nearest_neighbours(reference, reference, flip_axis, exclude_self=True)]
    distinct = [d for d in real_to_real if d > IDENTICAL]
    duplicates = len(real_to_real) - len(distinct)
    if duplicates:
        logger.warning(
            "%d of %d reference real volumes have an identical or mirror-image twin among the real volumes; the "
            "typical real-to-real distance is taken over the others.", duplicates, len(real_to_real),
        )
    typical = statistics.median(distinct) if distinct else 0.0
    per_sample = []
    for name, found in zip(sample_names, nearest):
        if typical > 0:
            ratio = found.distance / typical
        else:  # every real volume has a twin: only identical samples can be judged
            ratio = 0.0 if found.distance <= IDENTICAL else float("inf")
        per_sample.append({
            "sample": name, "nearest_real": real_names[found.index], "distance": found.distance,
            "flipped": found.flipped, "ratio_to_real_median": ratio,
            "near_copy": found.distance <= IDENTICAL or ratio < copy_threshold,
        })
    return {
        "distance": "root mean square voxel difference in [-1, 1]" + (", also against each real volume flipped" if flip_axis is not None else ""),
        "real_nearest_neighbour_median": typical,
        "real_nearest_neighbour_min": min(distinct) if distinct else None,
        "real_duplicates": duplicates,
        "copy_threshold": copy_threshold,
        "real_volumes_searched": len(real_names),
        "near_copies": [entry["sample"] for entry in per_sample if entry["near_copy"]],
        "samples": per_sample,
    }

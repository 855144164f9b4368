"""What every evaluator shares: its settings, one pass over the real data, timing each part, writing the results.

An evaluator compares synthetic volumes with the real ones and writes ``metrics.json`` (with the seconds each part
took) and pictures to ``evaluation_dir``. ``SyntheticDataEvaluator`` does it for the latent bundles (samples read
from the inference output), ``common.med_ddpm.MaskConditionedEvaluator`` for mask-conditioned synthesis (samples
drawn for the masks of real pairs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from monai.data import DataLoader
from torch.utils.data import Dataset

from common.data import item_name
from common.io import require_output_folder, write_json

__all__ = ["SyntheticEvaluationBase"]

logger = logging.getLogger(__name__)


class SyntheticEvaluationBase:
    """Base of the evaluators: the settings they share and the steps every evaluation takes.

    Args:
        real_dataset: the real (training) data, preprocessed as for training without random transforms; items are
            dicts with an ``"image"`` of shape (C, H, W, D) (and a ``"label"`` for image/label pairs).
        evaluation_dir: where ``metrics.json`` and the PNGs go.
        heldout_dataset: real data not used in training, for the measures that must not see training data.
        reference_volumes: how many real volumes (the first ones) the set-to-set metrics use.
        max_pairs: random pairs per set for the MS-SSIM diversity.
        copy_threshold: a sample is flagged as a near copy when its distance to the nearest real volume is below
            this fraction of the median real-to-real nearest-neighbour distance (``common.evaluation.audit``).
        device: where the networks of the evaluation run.
        num_workers: processes preprocessing the real data.
        seed: seed of the random pairs and halves.
    """

    def __init__(
        self,
        real_dataset: Dataset,
        evaluation_dir: str | os.PathLike,
        heldout_dataset: Dataset | None = None,
        reference_volumes: int = 100,
        max_pairs: int = 100,
        copy_threshold: float = 0.5,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if reference_volumes < 2 or max_pairs < 1:
            raise ValueError(f"need reference_volumes >= 2 and max_pairs >= 1, got {reference_volumes} and {max_pairs}.")
        if not 0.0 < copy_threshold < 1.0:
            raise ValueError(f"copy_threshold must be in (0, 1), got {copy_threshold}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.real_dataset = real_dataset
        self.evaluation_dir = require_output_folder(evaluation_dir, "evaluation_dir")  # before, not after, the work
        self.heldout_dataset = heldout_dataset
        self.reference_volumes = reference_volumes
        self.max_pairs = max_pairs
        self.copy_threshold = copy_threshold
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.seed = seed
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, recording its seconds under ``name`` for the ``seconds`` of ``metrics.json``."""
        started = time.perf_counter()
        result = compute()
        self.seconds[name] = round(time.perf_counter() - started, 3)
        return result

    def real_items(self, dataset: Dataset, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, item as a batch of one) of the first ``limit`` items of ``dataset``, in order."""
        data = getattr(dataset, "data", None)
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=self.num_workers)
        for index, item in enumerate(loader):
            if limit is not None and index == limit:
                break
            yield item_name(data[index] if data is not None else None, index), item if isinstance(item, dict) else {"image": item}

    def write(self, results: dict[str, Any]) -> dict[str, Any]:
        """Add the timings to ``results`` and write them to ``evaluation_dir/metrics.json``; returns them."""
        results["seconds"] = self.seconds
        path = write_json(results, self.evaluation_dir / "metrics.json")
        logger.info("wrote %s", path)
        return results

    def run(self) -> dict[str, Any]:
        """Compute everything, write ``metrics.json`` and the PNGs, and return the metrics."""
        raise NotImplementedError

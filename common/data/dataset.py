"""The training dataset: every volume the dataset check accepted is preprocessed once before training, and each one
the bundle's preprocessing fails on is named with the transform and the reason.

The readers (``nifti_datalist``, ``dicom_series_datalist``, ...) check what the headers and voxels of a file say.
Some files pass those checks and still break inside MONAI's transforms (a degenerate affine, a volume with no
foreground left after cropping, intensities that overflow when scaled) or come out unusable (NaN, constant, the
wrong shape). ``CheckedCacheDataset`` runs the deterministic part of the preprocessing (up to the first random
transform) on every item while it fills MONAI's cache, so the check and the training agree by construction, and
raises one ``DatasetError`` listing every such file before the first training step. With a ``cache_dir`` the
preprocessed volumes are kept on disk instead (``PreprocessedStore``), computed once for every rank, both training
stages and later runs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from multiprocessing.pool import ThreadPool
from typing import Any

import torch
from monai.data import CacheDataset
from monai.transforms import Compose, apply_transform

from common.io import gather, is_main_process, process_rank
from common.overrides import as_bool

from .checks import DatasetError, item_name, raise_if_problems
from .preprocessed_store import PreprocessedStore, deterministic_part

logger = logging.getLogger(__name__)

__all__ = ["CheckedCacheDataset", "describe_failure", "explain_degenerate"]


def explain_degenerate(image: Any, after: str) -> str:
    """What is unusable about a volume a transform failed on, in the user's terms, or "" when its shape is not the
    reason. ``after`` names the transform that made it (the crop to the foreground leaves nothing of a volume
    without a voxel above 0; a resize to the longest side leaves no voxel along an axis of a few slices)."""
    shape = tuple(int(s) for s in getattr(image, "shape", ())[1:])
    if not shape:
        return ""
    if min(shape) == 0:
        why = (" keeps the voxels above 0 and this volume has none (inverted, or a background above its tissue?)"
               if "CropForeground" in after else " leaves nothing of it")
        return f"; {after}{why}, shape {shape}: nothing to train on"
    thinnest = min(range(len(shape)), key=shape.__getitem__)
    if shape[thinnest] * 16 <= max(shape):
        return (f"; the volume is {'x'.join(map(str, shape))} voxels after {after}: {shape[thinnest]} along axis "
                f"{thinnest} against {max(shape)} along the longest, too thin to resize (a 2D image or a few slices "
                "saved as a volume?): the bundle needs 3D volumes")
    return ""


def describe_failure(name: str, error: BaseException, explanation: str = "") -> str:
    """"<name>: <reason>" for an exception raised while preprocessing ``name``: our own ``DatasetError`` as it is
    (it names the file already), otherwise the transform MONAI's ``Compose`` was applying, the innermost cause, and
    ``explanation`` (``explain_degenerate``'s) after it."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for link in chain:
        if isinstance(link, DatasetError):
            return str(link)
    transforms = [m.group(1) for link in chain if (m := re.search(r"applying transform <?([\w.]+)", str(link)))]
    cause = chain[-1]
    where = f" at {transforms[-1].rsplit('.', 1)[-1]}" if transforms else ""
    message = (str(cause).strip().splitlines() or [""])[0]
    return f"{name}: the bundle's preprocessing fails{where} ({type(cause).__name__}: {message}){explanation}."


class CheckedCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that checks every item once before training and names the files it cannot use.

    Filling the cache runs the deterministic transforms on the first ``cache_rate`` of the items; with
    ``check_uncached`` the others are preprocessed once too, and dropped. Each result must be finite, not constant,
    and (with ``image_size``) of that spatial shape. All failures are collected and raised as one ``DatasetError``
    (the first 20 listed). An item that still fails later, while training (``check_uncached`` off), raises a
    ``DatasetError`` with its name. Every item handed to the trainer carries its name under ``source_key``, so an
    error during training (e.g. a non-finite loss) can name the files of the batch.

    Args:
        data: the datalist.
        transform: the training preprocessing, a ``Compose`` whose random transforms come last.
        image_size: the spatial shape the preprocessing must give; None skips that check.
        cache_rate: fraction of the items kept in memory after the deterministic transforms.
        num_workers: threads filling the cache.
        check_uncached: also preprocess (once, without keeping them) the items the cache does not hold.
        cache_dir: keep the preprocessed items on disk there instead of in memory (``cache_rate`` and
            ``check_uncached`` then do not apply: every item is preprocessed and checked once, and read from disk
            at each step). Under torch.distributed each rank preprocesses its share of the missing items.
        image_key: the entry that holds the image.
        source_key: the entry under which each item's name is handed on.
        progress: show the cache's progress bar.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Callable,
        image_size: Sequence[int] | None = None,
        cache_rate: float = 1.0,
        num_workers: int | None = 1,
        check_uncached: bool = True,
        cache_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        source_key: str = "source",
        progress: bool = True,
    ) -> None:
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        self.check_uncached = as_bool(check_uncached, "check_uncached (--check_preprocessing)")
        self.image_key = image_key
        self.source_key = source_key
        self._problems: list[tuple[int, str]] = []
        self.store = PreprocessedStore(cache_dir, transform) if cache_dir else None
        deterministic = deterministic_part(transform) if cache_dir else []
        self._deterministic, self._first_random = Compose(deterministic), len(deterministic)  # for reads from the store
        super().__init__(data, transform, cache_rate=0.0 if self.store else cache_rate, num_workers=num_workers, progress=progress)

    def name(self, index: int) -> str:
        return item_name(self.data[index], index)

    def set_data(self, data: Sequence) -> None:
        """Fill the cache, check the items it does not hold, and raise if any item failed."""
        if len(data) == 0:
            raise DatasetError("the datalist is empty: no volume to train on.")
        self._problems = []
        super().set_data(data)
        if self.store is not None:
            self.fill_store()
        elif self.check_uncached:
            for index in range(self.cache_num, len(data)):
                self._load_cache_item(index)
        problems = [problem for _, problem in sorted(self._problems)]
        raise_if_problems(problems, f"{len(data)} volumes after the bundle's preprocessing")

    def fill_store(self) -> None:
        """Preprocess this rank's share of the items missing from the store (threads: ``num_workers``), and gather
        every rank's problems, so that all ranks raise the same error or go on together."""
        rank, world = process_rank()
        missing = [i for i in range(len(self.data)) if i % world == rank and not self.store.has(self.data[i])]

        def preprocess(index: int) -> None:
            item = self._load_cache_item(index)
            try:
                if item is not None:
                    self.store.write(self.data[index], item)
            except Exception as error:  # named like every other problem, and every rank still reaches the gather
                self._problems.append((index, f"{self.name(index)}: cannot be stored in {self.store.folder} "
                                              f"({type(error).__name__}: {error})."))

        with ThreadPool(max(1, self.num_workers or 1)) as pool:
            pool.map(preprocess, missing)
        made = gather([len(missing)])
        self._problems = gather(self._problems)
        if is_main_process():
            logger.info("preprocessed %d of %d volumes into %s (the others were there already).", sum(made),
                        len(self.data), self.store.folder)

    def _load_cache_item(self, idx: int) -> Any:
        """The deterministic transforms of item ``idx``, checked; None (and the problem noted) when it fails."""
        try:
            item = super()._load_cache_item(idx)
        except Exception as error:  # any transform's error, named and collected
            self._problems.append((idx, describe_failure(self.name(idx), error, self.explain(idx))))
            return None
        problem = self.problem_with(item)
        if problem:
            self._problems.append((idx, f"{self.name(idx)}: {problem}"))
            return None
        return item

    def explain(self, index: int) -> str:
        """``explain_degenerate`` of what the failing transform of item ``index`` was given: the deterministic
        transforms are run again one at a time (only after a failure) up to the one that raises."""
        data, after = self.data[index], "reading"
        for transform in deterministic_part(self.transform):
            try:
                result = apply_transform(transform, data)
            except Exception:
                image = data.get(self.image_key) if isinstance(data, dict) else data
                return explain_degenerate(image, after)
            data, after = result, type(transform).__name__
        return ""

    def problem_with(self, item: Any) -> str | None:
        """What is wrong with a preprocessed item, or None."""
        image = item.get(self.image_key) if isinstance(item, dict) else item
        if image is None:
            return f"the preprocessing leaves no '{self.image_key}'."
        values = torch.as_tensor(image).float()
        if not torch.isfinite(values).all():
            return (f"after preprocessing {int((~torch.isfinite(values)).sum())} voxels are NaN or infinite "
                    "(intensities too large for float32, or a non-finite affine?).")
        if values.numel() == 0 or values.max() == values.min():
            level = float(values.flatten()[0]) + 0.0 if values.numel() else float("nan")  # + 0.0: no "-0"
            return (f"after preprocessing every voxel is {level:g}: nothing of the volume is left (no voxel above 0 for "
                    "the crop to the foreground, or no intensity range to scale?).")
        if self.image_size is not None and tuple(values.shape[1:]) != self.image_size:
            return f"the preprocessing gives shape {tuple(values.shape[1:])}, not image_size {self.image_size}."
        return None

    def _transform(self, index: int) -> Any:
        try:
            item = self._from_store(index) if self.store is not None else super()._transform(index)
        except Exception as error:
            raise DatasetError(describe_failure(self.name(index), error)) from error
        if isinstance(item, dict):
            item[self.source_key] = self.name(index)
        return item

    def _from_store(self, index: int) -> Any:
        """The item's preprocessing read from the store, then the random transforms. An entry that is missing,
        damaged (``PreprocessedStore.read`` warns and removes it) or fails the checks of a fresh one (values or
        shape) is computed again and stored again, with a warning naming the file: the cache heals itself."""
        source = self.data[index]
        item = self.store.read(source) if self.store.has(source) else None
        if item is not None and (problem := self.problem_with(item)):
            logger.warning("%s: the preprocessing cache entry of %s is unusable (%s); it is computed again.",
                           self.store.path(source), self.name(index), problem)
            item = None
        if item is None:
            item = self._deterministic(source)
            problem = self.problem_with(item)
            if problem:
                raise DatasetError(f"{self.name(index)}: {problem}")
            try:
                self.store.write(source, item)
            except Exception as error:  # training can go on from the fresh item; the next run tries again
                logger.warning("%s: cannot be stored again in %s (%s: %s).", self.name(index), self.store.folder,
                               type(error).__name__, error)
        return self.transform(item, start=self._first_random) if self._first_random < len(self.transform.transforms) else item

"""What every dataset reader shares: one error type that names the file, and reporting all bad files at once.

Every problem is reported with the path and what is wrong (a missing or empty folder, a corrupt or truncated
file, the wrong shape, NaN or infinite voxels, a constant volume), and all bad files of a folder are listed in one
error, so one pass over the data fixes them before hours of training are spent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DatasetError",
    "check_all",
    "check_intensities",
    "dataset_files",
    "is_hidden",
    "item_name",
    "raise_if_problems",
    "require_folder",
]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used, with the path and the problem in the message."""


def require_folder(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir`` as a Path; ``DatasetError`` unless it is an existing, readable folder."""
    folder = Path(dataset_dir).expanduser()
    if not folder.exists():
        raise DatasetError(f"dataset_dir {folder} does not exist.")
    if not folder.is_dir():
        raise DatasetError(f"dataset_dir {folder} is not a folder.")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DatasetError(f"dataset_dir {folder} cannot be read (permission denied).")
    return folder


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` lies under ``root`` in a hidden file or folder (a dot-name): readers skip those, so a
    file still being written (``common.io.atomic_path``'s temporary names) or a tool's cache folder is never data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def dataset_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Sorted files under ``root`` whose names end in one of ``suffixes`` (any letter case), hidden files and folders
    skipped. Linked folders are followed (datasets on shared storage often are links), each real folder once: a
    link loop, or a second link to a folder already read, is skipped with a warning naming it. A link with such a
    name whose target is missing is a ``DatasetError`` naming the link and its target, so no volume is left out
    without a word."""
    files, dangling, repeated = [], [], []
    visited = {os.path.realpath(root)}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        here = Path(folder)
        entered = []
        for name in sorted(subfolders):
            if name.startswith("."):
                continue
            real = os.path.realpath(here / name)
            if real in visited:
                repeated.append(f"{here / name} -> {real}")
            else:
                visited.add(real)
                entered.append(name)
        subfolders[:] = entered
        for name in names:
            path = here / name
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            if path.is_file():
                files.append(path)
            elif path.is_symlink() and not path.exists():
                dangling.append(f"{path}: a link to {os.readlink(path)}, which does not exist.")
    if repeated:
        logger.warning("%s: %d linked folders lead to a folder read already (a link loop, or two links to one folder), "
                       "each read once: %s", root, len(repeated), "; ".join(repeated[:10]))
    raise_if_problems(dangling, f"the links in {root}")
    return sorted(files)


def check_intensities(path: str | os.PathLike, data: np.ndarray) -> None:
    """``DatasetError`` naming ``path`` for voxels that are not real numbers (complex, text, records, booleans), NaN
    or infinite voxels, or a constant volume."""
    kind = np.asarray(data).dtype
    if kind == np.bool_ or not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise DatasetError(f"{path}: voxels of type {kind}, not real intensities (expected integers or floats).")
    if not np.isfinite(data).all():
        raise DatasetError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite voxels.")
    if data.min() == data.max():
        raise DatasetError(f"{path}: every voxel is {data.min()}; a constant volume cannot be scaled to [-1, 1].")


def raise_if_problems(problems: Sequence[str], what: str) -> None:
    """One ``DatasetError`` listing every problem found (the first 20) in ``what``, e.g. "998 files in DIR"."""
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{len(problems)} of {what} are unusable:\n  {shown}{more}")


def check_all(files: Sequence[str], check: Callable[[str], None], dataset_dir: str | os.PathLike) -> None:
    """Run ``check`` on every file and raise one ``DatasetError`` listing all that failed."""
    problems = []
    for path in files:
        try:
            check(path)
        except DatasetError as error:
            problems.append(str(error))
    raise_if_problems(problems, f"{len(files)} files in {dataset_dir}")


def item_name(item: Any, index: int) -> str:
    """A readable name of a datalist item: its image path (and the breast side when there is one)."""
    if isinstance(item, dict) and isinstance(item.get("image"), (str, os.PathLike)):
        name = str(item["image"])
        return f"{name} ({item['side']})" if "side" in item else name
    return f"real volume {index}"

"""Preprocessed volumes on disk, keyed by the preprocessing and the files, so they are computed once.

Under torchrun every process of MONAI's ``CacheDataset`` preprocesses the whole dataset and holds all of it in
memory, and the diffusion stage and every later run do it again (for chest CT about 20 s per scan). A
``PreprocessedStore`` keeps the output of the deterministic transforms (up to the first random one) in
``<cache_dir>/<preprocessing key>/<item key>.pt``:

- the preprocessing key hashes the deterministic transforms: their classes and every setting, as deep as they go
  (functions by their code, defaults and closures; this package's transforms also by their source file), MONAI's
  version and this package's; a setting it cannot describe is an error, not a key that misses it;
- the item key hashes the datalist item with each file's size and modification time (every file of a folder),
  so an edited file is preprocessed again;
- files are written atomically under the user's umask and read with ``torch.load(weights_only=True)``: plain
  tensors, affines and strings, nothing executable.

``CheckedCacheDataset(cache_dir=...)`` uses it: each rank preprocesses its share of the missing items, every rank
reads what its sampler asks for, from disk (the page cache is shared), and the random transforms run per step.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandomizableTrait, Transform

from common.io import save_torch

__all__ = ["PreprocessedStore", "deterministic_part", "item_key", "preprocessing_key"]

logger = logging.getLogger(__name__)


def deterministic_part(transform: Compose) -> list:
    """The transforms of ``transform`` before its first random one (what a cache may keep)."""
    first_random = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    return list(transform.transforms[:first_random] if first_random is not None else transform.transforms)


def _bytecode(code: Any) -> dict:
    """A code object as what it computes: bytecode, names and constants (nested functions' code included)."""
    return {"bytecode": hashlib.sha256(code.co_code).hexdigest()[:16], "names": list(code.co_names),
            "consts": [_bytecode(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]}


def _code(function: Any, seen: frozenset[int]) -> Any:
    """What a function computes: its bytecode and constants, defaults and closure (a lambda's threshold included)."""
    code = getattr(function, "__code__", None)
    if code is None:  # a builtin: its name says it
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"
    return {"function": f"{function.__module__}.{function.__qualname__}", "code": _bytecode(code),
            "defaults": _describe(getattr(function, "__defaults__", None), seen),
            "closure": [_describe(cell.cell_contents, seen) for cell in (function.__closure__ or ())]}


def _source_digest(kind: type) -> str | None:
    """A digest of the source file of a class of this package (its code can change while the version does not)."""
    if not kind.__module__.startswith("common."):
        return None
    try:
        return hashlib.sha256(Path(inspect.getfile(kind)).read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _describe(value: Any, seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-able, process-independent description of a transform's settings, as deep as they go (no addresses,
    no random state). ``TypeError`` for a value it cannot describe, rather than a key that misses a setting."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (torch.dtype, np.dtype, type, torch.device, Path, re.Pattern)):
        return repr(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = torch.as_tensor(value).detach().cpu()
        digest = hashlib.sha256(array.contiguous().numpy().tobytes()).hexdigest()[:16]
        return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": digest}
    if id(value) in seen:
        return "<cycle>"
    seen = seen | {id(value)}
    if isinstance(value, (list, tuple)):
        return [_describe(v, seen) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_describe(v, seen) for v in value), key=json.dumps)
    if isinstance(value, Mapping):
        return {str(k): _describe(v, seen) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, functools.partial):
        return {"partial": _describe(value.func, seen), "args": _describe(value.args, seen),
                "keywords": _describe(value.keywords, seen)}
    if inspect.ismethod(value):
        return {"method": _code(value.__func__, seen), "of": type(value.__self__).__qualname__}
    if inspect.isroutine(value):
        return _code(value, seen)
    if isinstance(value, logging.Logger):
        return f"logger {value.name}"
    state = getattr(value, "__dict__", None)
    if state is None and hasattr(type(value), "__slots__"):
        state = {name: getattr(value, name) for name in type(value).__slots__ if hasattr(value, name)}
    if state is None:
        text = repr(value)
        if " at 0x" in text:
            raise TypeError(f"cannot describe {type(value).__qualname__} for the preprocessing cache key; set cache_dir to null.")
        return text
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}", "source": _source_digest(type(value)),
            "state": _describe(state, seen)}


def _package_version() -> str:
    try:
        return version("medical-diffusion-bundles")
    except PackageNotFoundError:
        return "unknown"


def preprocessing_key(transform: Compose) -> str:
    """Hash of the deterministic transforms' classes and settings, MONAI's version and this package's."""
    description = {"monai": monai.__version__, "package": _package_version(),
                   "transforms": _describe(deterministic_part(transform))}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def _stamped(value: Any) -> Any:
    """A datalist value with each existing file stamped with its size and modification time, and each folder (a
    DICOM series) with those of every file in it, so a file rewritten in place changes the key."""
    if isinstance(value, str) and os.path.isdir(value):
        files = sorted(Path(root, name) for root, _, names in os.walk(value) for name in names)
        return [value, [[str(f.relative_to(value)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]
    if isinstance(value, str) and os.path.exists(value):
        stat = os.stat(value)
        return [value, stat.st_size, stat.st_mtime_ns]
    if isinstance(value, (list, tuple)):
        return [_stamped(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _stamped(v) for k, v in value.items()}
    return value


def item_key(item: Any) -> str:
    """Hash of a datalist item, its files' sizes and modification times included."""
    return hashlib.sha256(json.dumps(_stamped(item), sort_keys=True, default=str).encode()).hexdigest()


class PreprocessedStore:
    """The deterministic preprocessing's outputs of one transform, on disk under ``cache_dir``.

    Args:
        cache_dir: the folder of every store (one sub-folder per preprocessing key).
        transform: the preprocessing, a ``Compose`` whose random transforms come last.
    """

    def __init__(self, cache_dir: str | os.PathLike, transform: Compose) -> None:
        if not isinstance(transform, Compose):
            raise TypeError(f"the preprocessing must be a monai.transforms.Compose, got {type(transform).__name__}.")
        self.folder = Path(cache_dir) / preprocessing_key(transform)[:20]

    def path(self, item: Any) -> Path:
        return self.folder / f"{item_key(item)[:32]}.pt"

    def has(self, item: Any) -> bool:
        return self.path(item).is_file()

    def write(self, item: Any, preprocessed: Mapping) -> None:
        """Store ``preprocessed`` (the deterministic transforms' output of ``item``) atomically."""
        stored: dict[str, dict] = {"tensors": {}, "affines": {}, "values": {}}
        for key, value in preprocessed.items():
            if isinstance(value, MetaTensor):
                stored["tensors"][str(key)] = value.as_tensor().contiguous()
                stored["affines"][str(key)] = torch.as_tensor(value.affine)
            elif isinstance(value, (torch.Tensor, np.ndarray)):
                stored["tensors"][str(key)] = torch.as_tensor(value).contiguous()
            elif value is None or isinstance(value, (bool, int, float, str)):
                stored["values"][str(key)] = value
            else:
                raise TypeError(f"'{key}' ({type(value).__name__}) of a preprocessed item cannot be kept on disk; "
                                "set cache_dir to null for this preprocessing.")
        self.folder.mkdir(parents=True, exist_ok=True)
        save_torch(stored, self.path(item))

    def read(self, item: Any) -> dict | None:
        """The stored output for ``item``: tensors with their affines as ``MetaTensor``, and the other values. None
        when the entry is damaged (truncated by a crash or a full disk, or not this store's format): it is removed,
        with a warning naming it, so the caller computes it again."""
        path = self.path(item)
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(stored, dict) or not {"tensors", "affines", "values"} <= set(stored):
                raise ValueError("not a preprocessed item of this store")
        except Exception as error:  # torch.load raises many types for a damaged file
            logger.warning("%s: damaged preprocessing cache entry (%s: %s); removed, the volume is preprocessed "
                           "again.", path, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            path.unlink(missing_ok=True)
            return None
        read: dict[str, Any] = dict(stored["values"])
        for key, tensor in stored["tensors"].items():
            read[key] = MetaTensor(tensor, affine=stored["affines"][key]) if key in stored["affines"] else tensor
        return read

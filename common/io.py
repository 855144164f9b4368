"""Writing files whole or not at all, asking which process this is, and finding the repository.

Every file the project writes (checkpoints, synthetic volumes, ``metrics.json``, pictures, exports, packages,
demo data) goes through ``atomic_path``: it is written under a temporary name in the target's folder and renamed
into place only when complete, so a crash never leaves a half-written file that looks whole. The finished file
gets the mode a plain ``open()`` would give it under the user's umask (0644 under the usual 022): synthetic data
are meant to be shared, and ``tempfile`` alone would leave them private (0600).

Under ``torch.distributed`` (torchrun) ``process_rank``, ``is_main_process`` and ``gather`` say which process
this is and collect what every process made; without it they answer for a single process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "REPO_ROOT",
    "atomic_path",
    "bundle_dir",
    "current_umask",
    "end_process_group",
    "gather",
    "is_main_process",
    "output_mode",
    "process_rank",
    "require_output_folder",
    "save_nifti",
    "save_torch",
    "start_process_group",
    "to_nifti_layout",
    "write_json",
    "write_text",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def bundle_dir(bundle: str) -> Path:
    """Folder of a bundle of this repository (``bundles/<bundle>``); ``ValueError`` naming the known ones."""
    path = REPO_ROOT / "bundles" / bundle
    if not (path / "configs" / "metadata.json").is_file():
        known = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
        raise ValueError(f"no bundle '{bundle}' in {REPO_ROOT / 'bundles'} (known: {', '.join(known)}).")
    return path


# ----- files


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(directory: bool = False) -> int:
    """Permission bits a new file (or folder) gets from ``open()`` (``mkdir``) under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _suffix(name: str) -> str:
    """The suffix a writer may infer the format from (".nii.gz", ".png", ".npy", ...), kept on the temporary name."""
    return ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Give a temporary path next to ``path`` to write to; rename it into place when the block completes.

    The temporary name is hidden (``.<name>.<random>.tmp<suffix>``, the name cut short if needed; the dataset
    readers skip hidden names, so a write in progress is never read as data) and keeps the
    target's suffix, so writers that choose the format by the name (nibabel, matplotlib, ``numpy.save``) write
    the right one. A file is flushed to disk before the rename, and the folder's entry after it. The result gets
    the mode a plain ``open()`` would give it: the mode of the file it replaces, or the umask's for a new one.
    With ``directory`` the temporary path is a new folder, renamed as a whole (the target must not exist, or be
    an empty folder). If the block raises, the temporary file or folder is removed and nothing changes at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{path.name[:100]}.", f".tmp{_suffix(path.name)}"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() and not directory else output_mode(directory)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _FULL_OR_READ_ONLY:  # say which file, not only why
            raise OSError(error.errno, f"{error.strerror}: writing {path} failed; nothing was written there") from error
        raise


_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system allows opening a folder)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(json.dumps(data, indent=indent) + "\n", path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: checkpoints are never half-written."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a Python file: a full disk is an OSError, not
        torch.save(obj, file)  # the "unexpected pos" RuntimeError of torch's own writer
    return Path(path)


def to_nifti_layout(image: np.ndarray) -> np.ndarray:
    """A (C, H, W, D) image as a NIfTI holds it: (H, W, D) for one channel, (H, W, D, C) for several."""
    return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)


def save_nifti(
    volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: np.dtype = np.float32, description: str | None = None,
) -> str:
    """Write a volume as NIfTI (voxel units mm) to ``path`` atomically; returns the path. ``description`` goes into
    the header's ``descrip`` field (80 bytes: a longer one is cut, ending in "...")."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=dtype), affine)
    image.header.set_xyzt_units("mm")
    if description is not None:
        encoded = description.encode("utf-8")
        image.header["descrip"] = encoded if len(encoded) <= 79 else encoded[:76] + b"..."
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return str(path)


def require_output_folder(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """``path`` as a Path, after checking that outputs can be written there: it is a folder, or can be created in
    its nearest existing parent, which must be a writable folder. ``ValueError`` naming the path otherwise. Nothing
    is created here (the first file written creates the folder); call it before hours of sampling, not after."""
    folder = Path(path).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {existing}"
        raise ValueError(f"{what} {folder} {where}, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} cannot be written to: {existing} is not writable (permission denied).")
    return folder


# ----- processes

_GROUP_OWNERS: list[bool] = []  # per run that called start_process_group, innermost last: did it create the group?


def start_process_group(backend: str) -> None:
    """``torch.distributed.init_process_group`` for a multi-GPU config's ``initialize``, unless a run around this
    one (``train.json``'s, which runs both training stages in one process) has made the group already."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend=backend)
    _GROUP_OWNERS.append(created)


def end_process_group() -> None:
    """The ``finalize`` counterpart of ``start_process_group``: destroy the group only if that run created it, so
    the ranks of ``train.json`` keep one group through both stages instead of making it again between them."""
    created = _GROUP_OWNERS.pop() if _GROUP_OWNERS else dist.is_initialized()
    if created and dist.is_initialized():
        dist.destroy_process_group()



def process_rank() -> tuple[int, int]:
    """(rank, world size) under ``torch.distributed`` (e.g. torchrun), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes the shared outputs: rank 0, or the only process."""
    return process_rank()[0] == 0


def gather(items: list) -> list:
    """Every process's ``items`` concatenated in rank order, on every process (just ``items`` alone)."""
    _, world = process_rank()
    if world == 1:
        return list(items)
    everything: list = [None] * world
    dist.all_gather_object(everything, items)
    return [item for part in everything for item in part]


def __getattr__(name: str):
    """Names renamed in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

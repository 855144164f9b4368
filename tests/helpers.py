"""Helpers the tests import: tiny networks, the real T1 crop that ships with nibabel, a process that holds a
checkpoint folder's lock, and ``python -m common`` run in this process (fixtures are in conftest)."""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest

from common.networks import VQGAN

# nibabel's real T1 brain crop (33 x 41 x 25 voxels of 2 mm), shipped with the package
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def tiny_vqgan(**kwargs) -> VQGAN:
    """A VQ-GAN small enough for unit tests (compression 2, 64 codes)."""
    settings = dict(downsample_factor=2, base_channels=4, num_embeddings=64, embedding_dim=4)
    settings.update(kwargs)
    return VQGAN(**settings)


def forked(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, Connection]:
    """``target(sending, *args)`` in a child forked from this process, which has already imported torch and this
    project (a new interpreter would spend seconds importing them); returns the process and the end of a pipe that
    receives what ``target`` sends (``received``). For children that take a checkpoint folder's lock and wait: the
    lock is a ``flock`` on a file each child opens itself, so a forked child holds it as any other process does; no
    child runs torch (a forked child must not use the parent's thread pools)."""
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_in_the_child, args=(target, sending, *args), daemon=True)
    with warnings.catch_warnings():  # Python >= 3.12 warns of fork in a process with threads: see above
        warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)
        process.start()
    sending.close()  # the child's copy stays open: if it dies before sending, recv() raises EOFError, no hang
    return process, receiving


def _in_the_child(target: Callable[..., None], *args: Any) -> None:
    """Forget the locks this process's parent holds (``CheckpointDirLock`` keeps them by path): a child must take
    its own. Closing the child's copies leaves the parent's locks held (a ``flock`` goes with its last descriptor)."""
    from common.handlers import run_lock

    run_lock._close_held()  # what the process's exit does
    run_lock._PINNED.clear()
    target(*args)


def received(receiving: Connection, seconds: float = 300) -> object:
    """What a forked child sent next; fails after ``seconds`` (generous: a child answers in milliseconds)."""
    assert receiving.poll(seconds), f"the forked child sent nothing in {seconds} s"
    return receiving.recv()


def _hold(sending: Connection, folder: str, seconds: float) -> None:
    from common.handlers import CheckpointDirLock

    CheckpointDirLock(folder).acquire()
    sending.send("held")
    time.sleep(seconds)


@contextmanager
def lock_held_in_another_process(folder: Path, seconds: float = 600) -> Iterator[BaseProcess]:
    """A process that holds the lock of checkpoint folder ``folder`` (as a training run does) until the block ends
    or ``seconds`` pass; it is killed and waited for, and its pipe closed, on the way out."""
    process, receiving = forked(_hold, str(folder), seconds)
    try:
        assert received(receiving) == "held"
        yield process
    finally:
        process.kill()
        process.join()
        receiving.close()


def common_command_exit(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """``python -m common ARGS`` in this process (``common.cli.main``, which ``common/__main__.py`` calls), for a
    command that must stop: what it exits with. A string is what the process prints to stderr, with exit status 1
    and no traceback (another exception fails the test). Saves a new interpreter's import of torch and MONAI; the
    entry point itself runs as its own process in ``tests/deploy/test_archive.py::test_command_line``."""
    from common.cli import main

    monkeypatch.setattr(sys, "argv", ["common", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert isinstance(exited.value.code, str), f"exit status {exited.value.code!r}, not a finding's message"
    return exited.value.code

"""One training run per checkpoint folder: a lock that a second run is refused by, and that dies with its run.

Two runs writing into one ``ckpt_dir`` (say a ``--resume true`` started while the first run is still alive) would
rotate each other's checkpoints away and resume from half of each other's state. The lock is an exclusive
``flock`` on ``ckpt_dir/.training.lock``, which the kernel drops when the holding process ends however it ends,
so two runs starting at the same moment cannot both get it and a killed run never leaves it held. The file holds
the process id, host, start time and command of the run that holds it, for the error the second run gets.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ignite.engine import Engine, Events

from common.io import is_main_process, output_mode, require_output_folder

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as the docs say
    fcntl = None

__all__ = ["CheckpointDirLock", "CheckpointDirLockedError"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"
_HELD: dict[str, IO] = {}  # lock files this process holds, by path: a run of this process that failed early left it
_PINNED: set[str] = set()  # held across several runs of this process (train.json's stages): their release waits


@atexit.register
def _close_held() -> None:
    """Close the lock files a run that failed before its engine ran (its dataset check, say) left held: the process
    ends, so the locks go anyway; closed here, not left to the garbage collector."""
    for lock in _HELD.values():
        lock.close()
    _HELD.clear()


class CheckpointDirLockedError(RuntimeError):
    """Another running training holds the checkpoint folder."""


class CheckpointDirLock:
    """Lock ``save_dir`` for one training run.

    ``acquire`` takes the lock (the configs call it in ``initialize``, before the dataset is read, and again when
    training starts: it does nothing if the lock is held already). If another process holds it,
    ``CheckpointDirLockedError`` names that run (process, host, start, command) and the lock file, and this run
    changes nothing in the folder. A lock file left by a run that was killed is taken over, with a warning that
    names that run. The lock is released when the engine's ``run`` returns or raises, and at the latest when the
    process exits. Under ``torch.distributed`` only rank 0 locks. A lock on a network file system is only as
    good as that file system's ``flock``. ``held_across_runs`` keeps it through several runs of one process (the
stages of ``train.json``), so no other run can slip in between them.

    Args:
        save_dir: the checkpoint folder (the saver's ``save_dir``).
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.save_dir = Path(save_dir)
        self.path = self.save_dir / LOCK_NAME

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.acquire)
        run = engine.run

        def run_then_release(*args, **kwargs):  # released however the run ends: completed, stopped, or raising
            try:
                return run(*args, **kwargs)
            finally:
                self.release()

        engine.run = run_then_release

    @property
    def held(self) -> bool:
        return str(self.path) in _HELD

    def holder(self) -> dict:
        """What the lock file says about the run that holds (or last held) it; empty when it says nothing."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @contextmanager
    def held_across_runs(self) -> Iterator[None]:
        """Hold the lock for the whole block: the runs inside it acquire and release it as usual, but their release
        does nothing until the block ends."""
        self.acquire()
        _PINNED.add(str(self.path))
        try:
            yield
        finally:
            _PINNED.discard(str(self.path))
            self.release()

    def acquire(self, engine: Engine | None = None) -> None:
        """Take the lock, or raise ``CheckpointDirLockedError`` naming the run that has it."""
        if self.held or fcntl is None or not is_main_process():
            return
        require_output_folder(self.save_dir, "ckpt_dir")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        lock = open(os.open(self.path, os.O_RDWR | os.O_CREAT, output_mode()), "r+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            other = self.holder()
            raise CheckpointDirLockedError(
                f"{self.save_dir} is in use by the training run of process {other.get('pid', '?')} on "
                f"{other.get('host', '?')}, started {other.get('started', '?')}: {other.get('command', '?')}. Wait "
                f"for it to end, or give this run another ckpt_dir. (The lock {self.path} is released when that "
                "process ends.)"
            ) from None
        earlier = self.holder()
        if earlier.get("pid") not in (None, os.getpid()):
            logger.warning(
                "%s was locked by a training run that ended without releasing it (process %s on %s, started %s); "
                "taking it over.", self.save_dir, earlier.get("pid"), earlier.get("host"), earlier.get("started"),
            )
        lock.seek(0)
        lock.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "command": " ".join(sys.argv)}, lock)
        lock.flush()
        _HELD[str(self.path)] = lock

    def release(self, engine: Engine | None = None) -> None:
        """Give the lock up, if this process holds it; the file stays, emptied, for the next run to lock."""
        if str(self.path) in _PINNED:
            return
        lock = _HELD.pop(str(self.path), None)
        if lock is not None:
            lock.seek(0)
            lock.truncate()
            lock.close()  # closing the file drops the flock

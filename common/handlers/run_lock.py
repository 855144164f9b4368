"""One training run per checkpoint folder: a lock file that a second run refuses and a dead run's is taken over.

Two runs writing into one ``ckpt_dir`` (say a ``--resume true`` started while the first run is still alive) would
rotate each other's checkpoints away and resume from half of each other's state. The lock holds the process id,
the host, the start time and the command of the run that holds it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ignite.engine import Engine, Events

from common.io import is_main_process, output_mode

__all__ = ["CheckpointDirLock", "CheckpointDirLockedError"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"


class CheckpointDirLockedError(RuntimeError):
    """Another running training holds the checkpoint folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


class CheckpointDirLock:
    """Lock ``save_dir`` for the run of the engine this handler is attached to; attach it before every other handler.

    When training starts, ``save_dir/.training.lock`` is created. If it exists and names a process on this host that
    is still running, ``CheckpointDirLockedError`` names that process and the lock, and nothing else happens. A
    lock whose process is gone (a killed run) is taken over with a warning; one from another host is refused, as
    its process cannot be checked from here. The lock is removed when the engine's ``run`` returns or raises, and at
    the latest when the process exits. Under ``torch.distributed`` only rank 0 locks.

    Args:
        save_dir: the checkpoint folder (the saver's ``save_dir``).
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.save_dir = Path(save_dir)
        self.path = self.save_dir / LOCK_NAME
        self.held = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.acquire)
        run = engine.run

        def run_then_release(*args, **kwargs):  # released however the run ends: completed, stopped, or raising
            try:
                return run(*args, **kwargs)
            finally:
                self.release()

        engine.run = run_then_release

    def holder(self) -> dict:
        """What the lock file says about the run that holds it (empty when it cannot be read)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self, engine: Engine | None = None) -> None:
        if self.held or not is_main_process():
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, output_mode())
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(descriptor, "w") as lock:
                json.dump(me, lock)
            self.held = True
            atexit.register(self.release)
            return

    def _take_over_or_refuse(self) -> None:
        """Remove a lock left by a process that is gone; raise for one that still runs (or cannot be checked)."""
        other = self.holder()
        pid, host = other.get("pid"), other.get("host")
        same_host = host == socket.gethostname()
        if isinstance(pid, int) and (not same_host or (pid != os.getpid() and _alive(pid))):
            where = f"process {pid} on {host}" + ("" if same_host else " (another host, so it cannot be checked from here)")
            raise CheckpointDirLockedError(
                f"{self.save_dir} is in use by the training run of {where}, started {other.get('started', '?')}: "
                f"{other.get('command', '?')}. Wait for it to end, or give this run another ckpt_dir. If that run is no "
                f"longer running, delete the lock {self.path}."
            )
        logger.warning(
            "%s held a lock of a training run that is no longer running (%s); taking it over.",
            self.save_dir, f"process {pid} on {host}" if pid else "unreadable lock",
        )
        self.path.unlink(missing_ok=True)

    def release(self, engine: Engine | None = None) -> None:
        """Remove the lock if this run holds it."""
        if self.held and self.holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

"""CheckpointDirLock: a live run's lock is refused, a dead run's taken over, and the lock goes with the run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from ignite.engine import Engine, Events

from common.handlers import CheckpointDirLock, CheckpointDirLockedError


def _engine(lock: CheckpointDirLock, fail: bool = False) -> Engine:
    def step(engine, batch):
        if fail:
            raise RuntimeError("broken step")
        return {"loss": 0.0}

    engine = Engine(step)
    lock.attach(engine)
    return engine


def _write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(exist_ok=True)
    (folder / ".training.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "t", "command": "c"}))


def test_the_lock_is_held_while_training_and_removed_after_however_the_run_ends(tmp_path):
    lock = CheckpointDirLock(tmp_path / "models")
    seen = []
    engine = _engine(lock)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(json.loads((tmp_path / "models" / ".training.lock").read_text())["pid"]))
    engine.run(range(2), max_epochs=1)
    assert seen == [os.getpid()] * 2 and not (tmp_path / "models" / ".training.lock").exists()
    with pytest.raises(RuntimeError, match="broken step"):
        _engine(CheckpointDirLock(tmp_path / "models"), fail=True).run(range(2), max_epochs=1)
    assert not (tmp_path / "models" / ".training.lock").exists()


def test_a_lock_of_a_process_that_is_gone_is_taken_over_with_a_warning(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, int(finished.stdout))
    with caplog.at_level(logging.WARNING):
        _engine(CheckpointDirLock(tmp_path)).run(range(1), max_epochs=1)
    assert f"process {int(finished.stdout)}" in caplog.text and "taking it over" in caplog.text
    (tmp_path / ".training.lock").write_text("not json")
    _engine(CheckpointDirLock(tmp_path)).run(range(1), max_epochs=1)  # an unreadable lock is stale too
    assert not (tmp_path / ".training.lock").exists()


def test_a_lock_of_another_host_is_refused(tmp_path):
    _write_lock(tmp_path, 12345, host="gpu-node-07")
    with pytest.raises(CheckpointDirLockedError, match="process 12345 on gpu-node-07 .another host, so it cannot be checked from here."):
        _engine(CheckpointDirLock(tmp_path)).run(range(1), max_epochs=1)
    assert json.loads((tmp_path / ".training.lock").read_text())["host"] == "gpu-node-07"  # not removed

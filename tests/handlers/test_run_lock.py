"""CheckpointDirLock: a live run's lock is refused, a dead run's taken over, the lock goes with the run, and two
runs starting at once cannot both get it."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from ignite.engine import Engine, Events

from common.handlers import CheckpointDirLock, CheckpointDirLockedError
from tests.helpers import forked, lock_held_in_another_process, received

def _engine(lock: CheckpointDirLock, fail: bool = False) -> Engine:
    def step(engine, batch):
        if fail:
            raise RuntimeError("broken step")
        return {"loss": 0.0}

    engine = Engine(step)
    lock.attach(engine)
    return engine


def test_the_lock_is_held_while_training_and_given_up_however_the_run_ends(tmp_path):
    lock = CheckpointDirLock(tmp_path / "models")
    seen = []
    engine = _engine(lock)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((lock.held, lock.holder().get("pid"))))
    engine.run(range(2), max_epochs=1)
    assert seen == [(True, os.getpid())] * 2 and not lock.held and lock.holder() == {}
    with pytest.raises(RuntimeError, match="broken step"):
        _engine(CheckpointDirLock(tmp_path / "models"), fail=True).run(range(2), max_epochs=1)
    assert not CheckpointDirLock(tmp_path / "models").held
    with lock_held_in_another_process(tmp_path / "models", seconds=0) as other:  # the lock was free again for another process
        other.join()


def test_a_run_holding_the_lock_refuses_others_until_it_ends(tmp_path, caplog):
    with lock_held_in_another_process(tmp_path) as holder:
        with pytest.raises(CheckpointDirLockedError, match=rf"{tmp_path} is in use by the training run of process {holder.pid} on "):
            _engine(CheckpointDirLock(tmp_path)).run(range(1), max_epochs=1)
        assert json.loads((tmp_path / ".training.lock").read_text())["pid"] == holder.pid  # untouched
    with caplog.at_level(logging.WARNING):  # killed: the kernel dropped its lock; its note is taken over
        _engine(CheckpointDirLock(tmp_path)).run(range(1), max_epochs=1)
    assert f"process {holder.pid} on" in caplog.text and "ended without releasing it" in caplog.text


def _try_the_lock_when_told(sending, folder: Path) -> None:
    sending.send("ready")
    while not (folder / "go").exists():
        time.sleep(0.001)
    try:
        CheckpointDirLock(folder / "models").acquire()
        sending.send("got it")
        while not (folder / "stop").exists():
            time.sleep(0.01)
    except CheckpointDirLockedError:
        sending.send("refused")


def test_two_runs_starting_at_once_cannot_both_get_the_lock(tmp_path):
    """Three processes, each ready, try at the same moment when a file appears; one gets it."""
    runs = [forked(_try_the_lock_when_told, tmp_path) for _ in range(3)]
    try:
        assert [received(pipe) for _, pipe in runs] == ["ready"] * 3
        (tmp_path / "go").touch()
        outcomes = [received(pipe) for _, pipe in runs]  # the winner holds the lock until "stop"
    finally:
        (tmp_path / "go").touch()
        (tmp_path / "stop").touch()
        for process, pipe in runs:
            process.join(60)
            process.kill()
            pipe.close()
    assert sorted(outcomes) == ["got it", "refused", "refused"]


def test_held_across_runs_keeps_the_lock_between_the_stages_of_train_json(tmp_path):
    import fcntl

    def locked_by_this_process() -> bool:  # another open file of the lock: refused while the lock is held
        with open(tmp_path / ".training.lock") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(other, fcntl.LOCK_UN)
            return False

    outer = CheckpointDirLock(tmp_path)
    with outer.held_across_runs():
        for _ in range(2):  # two stages, each with its own lock handler that runs an engine
            engine = Engine(lambda engine, batch: None)
            CheckpointDirLock(tmp_path).attach(engine)
            engine.run([0], max_epochs=1)
            assert outer.held and locked_by_this_process()
    assert not outer.held and not locked_by_this_process()

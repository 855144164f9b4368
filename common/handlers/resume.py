"""Continuing a training run that was killed, from the newest checkpoint ``AtomicCheckpointSaver`` wrote."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from common.checkpoints import (
    CheckpointError,
    check_state_objects,
    find_latest_checkpoint,
    load_state,
    periodic_iteration,
    read_checkpoint,
)
from common.io import is_main_process
from common.overrides import as_bool

__all__ = ["CheckpointResumer"]

logger = logging.getLogger(__name__)


class CheckpointResumer:
    """At the start of training, load the newest checkpoint of ``name`` in ``save_dir`` into ``load_dict``.

    With ``resume`` the networks, optimizers and EMA copy in ``load_dict``, and the iteration and epoch of the
    engine this handler is attached to, come back from the checkpoint, so training continues where the killed run stopped and ends at the same total iteration count
    (an LR scheduler given in ``load_dict`` continues its schedule too). The trainer's ``max_epochs`` stays the
    one configured, so a longer run can be asked for. Without ``resume`` nothing is loaded, and checkpoints of an
    earlier run found in ``save_dir`` are moved to ``save_dir/earlier_runs/`` with a warning.

    Args:
        save_dir: folder of the checkpoints (the saver's ``save_dir``).
        name: checkpoint name stem (the saver's ``name``).
        load_dict: objects with ``load_state_dict`` to restore, by their key in the checkpoint.
        resume: whether to continue from the newest checkpoint (also "true"/"false", as typed after ``--resume``).
    """

    def __init__(
        self, save_dir: str | os.PathLike, name: str, load_dict: Mapping[str, Any], resume: bool | str = False
    ) -> None:
        resume = as_bool(resume, "resume")  # also "true"/"false", as typed after --resume
        self.save_dir = save_dir
        self.name = name
        self.load_dict = check_state_objects(load_dict, "load_state_dict", "load_dict")
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.resume:
            self.move_earlier_run()
            return
        latest = find_latest_checkpoint(self.save_dir, self.name)
        if latest is None:
            raise CheckpointError(f"resume is true but {self.save_dir} holds no '{self.name}' checkpoint to resume from.")
        checkpoint = read_checkpoint(latest)
        missing = sorted(set(self.load_dict) - set(checkpoint) | {"trainer"} - set(checkpoint))
        if missing:
            raise CheckpointError(f"checkpoint {latest} has no {missing} to resume from (found: {sorted(checkpoint)}).")
        max_epochs = engine.state.max_epochs
        for key, obj in self.load_dict.items():
            load_state(obj, checkpoint[key], latest, key)
        load_state(engine, checkpoint["trainer"], latest, "trainer")
        if engine.state.max_epochs != max_epochs:  # the trainer's state brings the old run's length
            engine.state.max_epochs = max_epochs
        final = Path(self.save_dir) / f"{self.name}.pt"
        if latest != final and not final.exists() and engine.state.iteration >= max_epochs * engine.state.epoch_length:
            raise CheckpointError(
                f"resume: the newest '{self.name}' checkpoint, {latest}, is at this run's last iteration "
                f"({engine.state.iteration}), so the run had ended, but its final checkpoint {final} is missing "
                "(removed or moved?). Put it back to go on (train.json then starts the next stage), or raise "
                "train#trainer#max_epochs to train longer."
            )
        logger.info("resumed from %s at iteration %d, epoch %d.", latest, engine.state.iteration, engine.state.epoch)

    def move_earlier_run(self) -> None:
        """Move an earlier run's checkpoints of ``name`` to ``save_dir/earlier_runs/<name>_<time>/`` (rank 0),
        so this run's files are never mixed with them, deleted by its rotation, or resumed by mistake."""
        folder = Path(self.save_dir)
        earlier = [p for p in folder.glob(f"{self.name}*.pt") if p.name == f"{self.name}.pt" or periodic_iteration(p, self.name) is not None]
        if not earlier or not is_main_process():
            return
        target = folder / "earlier_runs" / f"{self.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        target.mkdir(parents=True, exist_ok=True)
        for path in earlier:
            path.rename(target / path.name)
        logger.warning(
            "%s held checkpoints of an earlier run; this run starts from scratch, so they were moved to %s. To continue "
            "that run instead, move them back and add --resume true.", folder, target,
        )

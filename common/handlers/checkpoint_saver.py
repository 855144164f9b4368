"""Checkpoints that are never half-written: every N iterations and at the end of training.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``) and saves its "final" checkpoint also when
training dies with an exception, so a crash can leave a truncated file or a final-looking one. This saver
writes each checkpoint to a temporary file in the same folder and renames it into place, and writes the final
file only when training completes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from common.checkpoints import (
    check_state_objects,
    non_finite_entries,
    periodic_iteration,
)
from common.io import is_main_process, save_torch

from .nan_guard import NonFiniteLossError
from .resume import CheckpointResumer

__all__ = ["AtomicCheckpointSaver", "IterationSnapshot"]

logger = logging.getLogger(__name__)


class AtomicCheckpointSaver:
    """Save the state dicts of ``save_dict`` every ``save_interval`` iterations and when training completes.

    Files: ``<save_dir>/<name>_iteration=<n>.pt`` (the last ``n_saved`` are kept) and ``<save_dir>/<name>.pt``
    at the end. Under ``torch.distributed`` only rank 0 writes.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict()`` (networks, optimizers, the trainer, EMA copies) by name.
        name: file name stem.
        save_interval: iterations between periodic checkpoints; 0 saves only at the end.
        n_saved: how many periodic checkpoints to keep.
    """

    def __init__(
        self, save_dir: str, save_dict: Mapping[str, Any], name: str, save_interval: int = 0, n_saved: int = 2
    ) -> None:
        if save_interval < 0 or n_saved < 1:
            raise ValueError(f"need save_interval >= 0 and n_saved >= 1, got {save_interval} and {n_saved}.")
        self.save_dir = Path(save_dir)
        self.save_dict = check_state_objects(save_dict, "state_dict", "save_dict")
        self.name = name
        self.save_interval = save_interval
        self.n_saved = n_saved
        self._periodic: list[Path] | None = None  # read from disk at the first save, after a resume or move

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.remove_stale_files)
        if self.save_interval:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save_periodic)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def remove_stale_files(self, engine: Engine | None = None) -> None:
        """Remove the temporary files of a process killed while writing a checkpoint: when training starts, after
        ``CheckpointDirLock`` (attached first) has made sure that no other run is writing into ``save_dir``."""
        if is_main_process() and self.save_dir.is_dir():
            for stale in self.save_dir.glob(f".{self.name}*.tmp*"):
                stale.unlink(missing_ok=True)

    def state(self, engine: Engine) -> dict[str, Any]:
        """State dicts by name, plus the engine's (iteration, epoch) as ``"trainer"`` for ``CheckpointResumer``.

        A network wrapped in ``DistributedDataParallel`` is saved unwrapped, so the file loads into the plain
        network for inference. Raises ``NonFiniteLossError`` rather than return NaN or
        infinite weights, so the newest checkpoint on disk stays the last good one."""
        state = {key: getattr(obj, "module", obj).state_dict() for key, obj in self.save_dict.items()}
        state["trainer"] = dict(engine.state_dict())
        broken = non_finite_entries(state)
        if broken:
            raise NonFiniteLossError(
                f"not writing a checkpoint of {self.name}: non-finite values in {', '.join(broken[:5])}"
                f"{' and more' if len(broken) > 5 else ''}. The newest checkpoint in {self.save_dir} is the last good one."
            )
        return state

    def save_periodic(self, engine: Engine) -> None:
        if not is_main_process():
            return
        path = self.save_dir / f"{self.name}_iteration={engine.state.iteration}.pt"
        save_torch(self.state(engine), path)
        if self._periodic is None:  # a resumed run's earlier periodic files count towards n_saved
            found = [p for p in self.save_dir.glob(f"{self.name}_iteration=*.pt") if periodic_iteration(p, self.name) is not None]
            self._periodic = sorted(found, key=lambda p: periodic_iteration(p, self.name))
        else:
            self._periodic = [p for p in self._periodic if p != path] + [path]
        while len(self._periodic) > self.n_saved:
            self._periodic.pop(0).unlink(missing_ok=True)

    def save_final(self, engine: Engine) -> None:
        if is_main_process():
            save_torch(self.state(engine), self.save_dir / f"{self.name}.pt")


class IterationSnapshot(AtomicCheckpointSaver):
    """Save ``save_dict`` once, as ``<save_dir>/<name>.pt``, when training completes iteration ``iteration``.

    The denoiser's guide for autoguidance (``common.sampling.autoguided``) is the same network partway through its
    training: the diffusion training writes it at ``guide_iteration``. It is kept whatever ``AtomicCheckpointSaver``
    prunes, and written atomically as its checkpoints are. A training that starts from scratch moves an earlier
    run's snapshot to ``earlier_runs/`` (as ``CheckpointResumer`` does with the checkpoints), whether or not it
    writes one itself, so a snapshot never sits beside the checkpoints of another training.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict()`` by name.
        name: file name stem.
        iteration: the iteration after which to write; None writes nothing.
    """

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], name: str, iteration: int | None) -> None:
        super().__init__(save_dir, save_dict, name)
        self.iteration = self.check_iteration(iteration)

    @staticmethod
    def check_iteration(iteration: object) -> int | None:
        """``iteration`` if it is a positive integer or None, else a ``ValueError`` naming it."""
        if iteration is not None and (isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 1):
            raise ValueError(f"the snapshot iteration must be a positive integer or None, got {iteration!r}.")
        return iteration

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        if self.iteration is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self.save_final)

    def start(self, engine: Engine) -> None:
        """After ``CheckpointResumer`` (attached first): refuse a snapshot the training would not reach or that would
        be its final weights; move an earlier training's snapshot aside on a fresh start; warn when a resumed run is
        past the snapshot and it is missing."""
        self.remove_stale_files()
        last = engine.state.max_epochs * (engine.state.epoch_length or 0)
        if self.iteration is not None and last and last <= self.iteration:
            raise ValueError(
                f"the {self.name} snapshot is asked for at iteration {self.iteration}, but this training ends at "
                f"iteration {last}: take an earlier iteration (the snapshot must come before the final weights)."
            )
        if engine.state.iteration == 0:
            CheckpointResumer(self.save_dir, self.name, {}, resume=False).move_earlier_run()
        elif self.iteration is not None and engine.state.iteration >= self.iteration and not (self.save_dir / f"{self.name}.pt").is_file():
            logger.warning("resumed at iteration %d, past the %s snapshot's iteration %d, and %s is missing: it will not "
                           "be written by this run.", engine.state.iteration, self.name, self.iteration,
                           self.save_dir / f"{self.name}.pt")


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

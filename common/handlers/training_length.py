"""Training that would do nothing is an error before it starts, not a run that exits 0 having trained nothing.

MONAI skips a run whose dataloader is empty with only a warning: a dataset smaller than one batch (``drop_last``)
trains nothing, exits 0, and the next stage then finds no checkpoint.
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from common.io import process_rank

__all__ = ["TrainingLengthCheck"]


class TrainingLengthCheck:
    """Raise ``ValueError`` when the engine it is attached to would train no iteration.

    When attached (the trainer is built, nothing has run): an empty dataloader, with the volumes, batch size and
    processes that make it empty, or ``max_epochs`` below 1. When training starts (after ``CheckpointResumer``,
    attached before this handler, has loaded a checkpoint): a resumed run whose checkpoint is already at the last
    iteration.
    """

    def attach(self, engine: Engine) -> None:
        state = engine.state
        if not state.epoch_length:
            raise ValueError(f"training would run no iteration: {self._describe_loader(engine)}")
        if not state.max_epochs or state.max_epochs < 1:
            raise ValueError(f"training would run no iteration: max_epochs is {state.max_epochs}; set train#trainer#max_epochs to 1 or more.")
        engine.add_event_handler(Events.STARTED, self.check_resumed)

    def check_resumed(self, engine: Engine) -> None:
        total = engine.state.max_epochs * engine.state.epoch_length
        if engine.state.iteration >= total:
            raise ValueError(
                f"training would run no iteration: it resumed at iteration {engine.state.iteration} and ends at "
                f"{total} (max_epochs {engine.state.max_epochs}); raise train#trainer#max_epochs to train longer."
            )

    @staticmethod
    def _describe_loader(engine: Engine) -> str:
        loader = getattr(engine, "data_loader", None)
        dataset = getattr(loader, "dataset", None)
        batch_size, drop_last = getattr(loader, "batch_size", None), getattr(loader, "drop_last", None)
        _, world = process_rank()
        volumes = f"{len(dataset)} volumes" if dataset is not None and hasattr(dataset, "__len__") else "the data"
        per_process = f" shared by {world} processes" if world > 1 else ""
        return (
            f"the dataloader gives no batch ({volumes}{per_process}, batch_size {batch_size}, drop_last {drop_last}). "
            "Add volumes or lower --batch_size."
        )

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
    iteration. When training completes (before the checkpoint saver, attached after this handler): a run in which
    no iteration happened after all, so that no untrained weights are saved as a result.
    """

    def __init__(self) -> None:
        self.started_at = 0

    def attach(self, engine: Engine) -> None:
        state = engine.state
        loader = getattr(engine, "data_loader", None)
        empty = hasattr(loader, "__len__") and len(loader) == 0
        if not state.epoch_length or empty:
            raise ValueError(f"training would run no iteration: {self._describe_loader(engine)}")
        if not state.max_epochs or state.max_epochs < 1:
            raise ValueError(f"training would run no iteration: max_epochs is {state.max_epochs}; set train#trainer#max_epochs to 1 or more.")
        engine.add_event_handler(Events.STARTED, self.check_resumed)
        engine.add_event_handler(Events.COMPLETED, self.check_trained)

    def check_trained(self, engine: Engine) -> None:
        if engine.state.iteration == self.started_at:
            raise ValueError(
                f"training ran no iteration (the data ran out at iteration {engine.state.iteration}); no checkpoint "
                "of it was written. Check the dataset and the batch size."
            )

    def check_resumed(self, engine: Engine) -> None:
        self.started_at = engine.state.iteration
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

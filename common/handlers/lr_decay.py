"""A learning rate that decays late in training, computed from the engine's iteration so that a resumed run goes on
with the same schedule.

Both papers train their denoiser at a constant learning rate (Medical Diffusion: Adam 1e-4). A short run at a high
constant rate can stall where the weights keep moving with the gradient noise; decaying the rate over its last part
lets them settle (a constant phase followed by a cosine decay, as in Loshchilov & Hutter, ICLR 2017).
"""

from __future__ import annotations

import logging
import math

import torch
from ignite.engine import Engine, Events

__all__ = ["LearningRateDecay"]

logger = logging.getLogger(__name__)


class LearningRateDecay:
    """Keep each parameter group's learning rate at its configured value until ``start_iteration``, then lower it
    along a half cosine to ``final_ratio`` times that value at ``end_iteration``, and hold it there.

    The rate is set before every iteration from ``engine.state.iteration`` and the rates the optimizer had when
    this handler was made (the configured ones), so a run resumed from a checkpoint continues the schedule without
    any state of its own (give the same ``lr_decay`` ids again). With ``end_iteration`` ``None`` a run resumed with
    a larger ``max_epochs`` decays to its new end, so its rate goes up again at the resume; give ``end_iteration``
    to keep one schedule. Iterations are the engine's (batches), as for ``DelayedEMAHandler``. ``final_ratio`` 1
    keeps the rate constant (the papers'), also after resuming a run that had decayed. The rate of the first group
    is kept as ``engine.state.learning_rate``, which the bundles' ``TensorBoardStatsHandler`` writes at the end of
    every epoch (``state_attributes``), numbered by iteration as the loss is: the schedule a run followed can be seen
    beside its loss.

    Args:
        optimizer: the optimizer whose learning rates to set.
        final_ratio: learning rate at ``end_iteration`` as a fraction of the configured one, in [0, 1].
        start_iteration: last iteration at the configured rate.
        end_iteration: iteration at which the decay ends; ``None``: the trainer's last iteration
            (``max_epochs * epoch_length``).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, final_ratio: float = 1.0, start_iteration: int = 0, end_iteration: int | None = None
    ) -> None:
        self.check_arguments(final_ratio, start_iteration, end_iteration)
        self.optimizer = optimizer
        self.final_ratio = float(final_ratio)
        self.start_iteration = int(start_iteration)
        self.end_iteration = end_iteration
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    @staticmethod
    def check_arguments(final_ratio: float, start_iteration: int, end_iteration: int | None) -> None:
        """``ValueError`` for arguments no schedule can follow (also checked by ``train.json`` before its first stage)."""
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"final_ratio must be in [0, 1] (1 keeps the learning rate constant), got {final_ratio}.")
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be 0 or more, got {start_iteration}.")
        if end_iteration is not None and end_iteration <= start_iteration:
            raise ValueError(f"end_iteration ({end_iteration}) must be after start_iteration ({start_iteration}).")

    def attach(self, engine: Engine) -> None:
        # also at final_ratio 1: a run resumed from a decayed one gets its configured rate back, not the checkpoint's
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.state.learning_rate = self.optimizer.param_groups[0]["lr"]  # there for a writer before the first iteration
        if self.final_ratio == 1.0:
            return
        if engine.state.max_epochs and engine.state.epoch_length:  # a MONAI workflow knows its length when built
            self.check_length(engine)
        else:
            engine.add_event_handler(Events.STARTED, self.check_length)

    def last_iteration(self, engine: Engine) -> int:
        if self.end_iteration is not None:
            return int(self.end_iteration)
        return engine.state.max_epochs * engine.state.epoch_length

    def check_length(self, engine: Engine) -> None:
        """A decay that would start after training ends is an error (or, with ``end_iteration`` given, as when a long
        schedule is trained in parts, a warning), not a run at a constant rate that looks like a decayed one."""
        total = engine.state.max_epochs * engine.state.epoch_length
        end = self.last_iteration(engine)
        if end <= self.start_iteration:
            raise ValueError(
                f"lr_decay: the learning rate would decay from iteration {self.start_iteration}, but training ends at "
                f"iteration {end}; lower lr_decay#start_iteration or raise train#trainer#max_epochs."
            )
        if total <= self.start_iteration:
            logger.warning(
                "lr_decay: this run ends at iteration %d, before the decay starts (%d): it trains at the constant rate.",
                total, self.start_iteration,
            )
        logger.info(
            "learning rate: constant to iteration %d, then a cosine decay to %g times it at iteration %d.",
            self.start_iteration, self.final_ratio, end,
        )

    def ratio(self, iteration: int, end: int) -> float:
        """Learning rate at ``iteration`` as a fraction of the configured one."""
        if iteration <= self.start_iteration:
            return 1.0
        progress = min(1.0, (iteration - self.start_iteration) / (end - self.start_iteration))
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, engine: Engine) -> None:
        ratio = self.ratio(engine.state.iteration, self.last_iteration(engine))
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * ratio
        engine.state.learning_rate = self.optimizer.param_groups[0]["lr"]

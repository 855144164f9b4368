from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from common.handlers import LearningRateDecay


def run_and_record(handler: LearningRateDecay, optimizer: torch.optim.Optimizer, iterations: int, start: int = 0) -> list[float]:
    """The learning rate each iteration ran at, for iterations start + 1 .. iterations; each time the rate is also
    ``engine.state.learning_rate`` (what the bundles' TensorBoard handler writes)."""
    seen, kept = [], []
    engine = Engine(lambda engine, batch: seen.append(optimizer.param_groups[0]["lr"]) or kept.append(engine.state.learning_rate))

    @engine.on(Events.STARTED)
    def resume(engine: Engine) -> None:  # as CheckpointResumer does: the iteration and epoch come back
        engine.state.iteration = engine.state.epoch = start

    handler.attach(engine)
    engine.run(range(1), max_epochs=iterations)
    assert kept == seen
    return seen


def test_constant_then_a_half_cosine_to_the_final_ratio():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    seen = run_and_record(LearningRateDecay(optimizer, final_ratio=0.1, start_iteration=4, end_iteration=8), optimizer, 10)
    assert seen[:4] == [2.0] * 4  # iterations 1-4 at the configured rate
    assert seen[5] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # iteration 6, halfway
    assert seen[7:] == pytest.approx([0.2] * 3)  # from the end on: the final rate, held
    assert all(a >= b for a, b in zip(seen, seen[1:]))


def test_the_decay_ends_with_training_by_default_and_a_resumed_run_continues_it():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    whole = run_and_record(LearningRateDecay(optimizer, final_ratio=0.0, start_iteration=2), optimizer, 6)
    assert whole[-1] == pytest.approx(0.0) and whole[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 4)))
    # a fresh optimizer (as a resumed run builds it) whose loaded state carries the decayed rate, and a fresh handler
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    handler = LearningRateDecay(resumed_optimizer, final_ratio=0.0, start_iteration=2)
    resumed_optimizer.param_groups[0]["lr"] = whole[2]
    assert run_and_record(handler, resumed_optimizer, 6, start=3) == pytest.approx(whole[3:])


def test_final_ratio_one_keeps_the_rate_and_bad_arguments_are_refused(caplog):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    handler = LearningRateDecay(optimizer)
    optimizer.param_groups[0]["lr"] = 0.05  # as a checkpoint of a decayed run loads it: the configured rate comes back
    assert run_and_record(handler, optimizer, 3) == [0.5] * 3
    # a part of a longer schedule (end_iteration given) that ends before the decay starts: said, not refused
    with caplog.at_level("WARNING", logger="common.handlers.lr_decay"):
        assert run_and_record(LearningRateDecay(optimizer, 0.1, start_iteration=5, end_iteration=9), optimizer, 3) == [0.5] * 3
    assert "this run ends at iteration 3, before the decay starts (5)" in caplog.text
    with pytest.raises(ValueError, match="final_ratio must be in"):
        LearningRateDecay(optimizer, final_ratio=1.5)
    with pytest.raises(ValueError, match="end_iteration .5. must be after start_iteration .5."):
        LearningRateDecay(optimizer, final_ratio=0.1, start_iteration=5, end_iteration=5)
    with pytest.raises(ValueError, match="would decay from iteration 10, but training ends at iteration 3"):
        run_and_record(LearningRateDecay(optimizer, final_ratio=0.1, start_iteration=10), optimizer, 3)

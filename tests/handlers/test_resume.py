"""CheckpointResumer and StopOnNonFiniteLoss on small ignite engines."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine

from common.checkpoints import CheckpointError, find_latest_checkpoint
from common.handlers import (
    AtomicCheckpointSaver,
    CheckpointResumer,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
)


class Crash(Exception):
    pass


def _training(tmp_path, crash_at=None, nan_at=None, resume=False):
    """An engine training a linear layer with Adam on 5 batches per epoch, saving every 2 iterations."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    iterations = []

    def step(engine, batch):
        iterations.append(engine.state.iteration)
        if engine.state.iteration == crash_at:
            raise Crash()
        optimizer.zero_grad()
        loss = net(torch.full((1, 3), float(batch))).square().mean()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach() * (float("nan") if engine.state.iteration == nan_at else 1.0)}

    engine = Engine(step)
    objects = {"network": net, "optimizer": optimizer}
    CheckpointResumer(tmp_path, "m", objects, resume=resume).attach(engine)
    StopOnNonFiniteLoss().attach(engine)
    AtomicCheckpointSaver(tmp_path, objects, "m", save_interval=2).attach(engine)
    return engine, optimizer, iterations


def test_a_crashed_run_resumes_and_ends_at_the_same_iteration(tmp_path):
    engine, _, _ = _training(tmp_path, crash_at=7)
    with pytest.raises(Crash):
        engine.run(range(5), max_epochs=3)
    assert find_latest_checkpoint(tmp_path, "m").name == "m_iteration=6.pt"
    engine, optimizer, iterations = _training(tmp_path, resume="true")
    engine.run(range(5), max_epochs=3)
    assert iterations == list(range(7, 16))  # continues after the checkpoint of iteration 6, ends at 3 x 5
    assert engine.state.epoch == 3
    assert all(state["step"] == 15 for state in optimizer.state.values())  # Adam's own counters continued


def test_without_resume_an_earlier_run_is_moved_aside_not_mixed_in(tmp_path, caplog):
    engine, _, _ = _training(tmp_path)
    engine.run(range(5), max_epochs=2)  # writes m_iteration=8, m_iteration=10 and m.pt
    engine, _, iterations = _training(tmp_path)
    with caplog.at_level(logging.WARNING):
        engine.run(range(5), max_epochs=1)  # a new, shorter run: m_iteration=2, 4 and m.pt
    assert iterations[0] == 1 and "moved to" in caplog.text and "--resume true" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["m.pt", "m_iteration=2.pt", "m_iteration=4.pt"]
    assert torch.load(tmp_path / "m.pt", weights_only=True)["trainer"]["iteration"] == 5
    (moved,) = (tmp_path / "earlier_runs").iterdir()
    assert sorted(p.name for p in moved.iterdir()) == ["m.pt", "m_iteration=10.pt", "m_iteration=8.pt"]


def test_resume_errors_are_clear(tmp_path):
    engine, _, _ = _training(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="holds no 'm' checkpoint to resume from"):
        engine.run(range(5), max_epochs=1)
    torch.save({"network": torch.nn.Linear(5, 1).state_dict(), "optimizer": {}, "trainer": {}}, tmp_path / "m_iteration=2.pt")
    engine, _, _ = _training(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"m_iteration=2.pt \[network\] does not fit Linear .*size mismatch"):
        engine.run(range(5), max_epochs=1)
    (tmp_path / "m_iteration=4.pt").write_bytes(b"PK\x03\x04 truncated")
    engine, _, _ = _training(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"m_iteration=4.pt cannot be read"):
        engine.run(range(5), max_epochs=1)
    with pytest.raises(TypeError, match="resume must be true or false, got 'yes'"):
        CheckpointResumer(tmp_path, "m", {}, resume="yes")


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    engine, _, _ = _training(tmp_path, nan_at=6)
    with pytest.raises(NonFiniteLossError, match=r"iteration 6 \(epoch 2\): loss = nan\. No checkpoint was written"):
        engine.run(range(5), max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_iteration=2.pt", "m_iteration=4.pt"]


def test_losses_of_the_vqgan_trainer_are_checked_by_name():
    engine = Engine(lambda e, b: {"losses": {"l1": torch.tensor(0.5), "generator": torch.tensor(float("inf"))}})
    StopOnNonFiniteLoss().attach(engine)
    with pytest.raises(NonFiniteLossError, match="losses/generator = inf"):
        engine.run([0], max_epochs=1)

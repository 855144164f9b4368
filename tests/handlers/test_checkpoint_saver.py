from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from common.handlers import AtomicCheckpointSaver, NonFiniteLossError


def _engine(fail_at: int | None = None) -> tuple[Engine, torch.nn.Module]:
    net = torch.nn.Linear(2, 2)

    def step(engine, batch):
        if fail_at is not None and engine.state.iteration == fail_at:
            raise RuntimeError("boom")
        with torch.no_grad():
            net.weight.add_(1.0)

    return Engine(step), net


def test_periodic_and_final_checkpoints(tmp_path):
    engine, net = _engine()
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=2, n_saved=2).attach(engine)
    engine.run(range(7), max_epochs=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m.pt", "m_iteration=4.pt", "m_iteration=6.pt"]
    final = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.equal(final["network"]["weight"], net.weight)


def test_no_final_checkpoint_after_a_crash(tmp_path):
    engine, net = _engine(fail_at=5)
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=2).attach(engine)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(10), max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_iteration=2.pt", "m_iteration=4.pt"]


def test_rejects_objects_without_state(tmp_path):
    with pytest.raises(TypeError, match="save_dict\\['x'\\]"):
        AtomicCheckpointSaver(str(tmp_path), {"x": 3}, name="m")


def test_the_engine_state_is_saved_for_resuming(tmp_path):
    engine, net = _engine()
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=3).attach(engine)
    engine.run(range(4), max_epochs=2)
    assert torch.load(tmp_path / "m_iteration=6.pt", weights_only=True)["trainer"] == {"iteration": 6, "epoch_length": 4, "max_epochs": 2}
    with pytest.raises(ValueError, match="must not have a 'trainer' entry"):
        AtomicCheckpointSaver(str(tmp_path), {"trainer": net}, name="m")


def test_non_finite_weights_are_never_written(tmp_path):
    engine, net = _engine()
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=2)
    saver.attach(engine)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda _: net.weight.data.fill_(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"non-finite values in network/weight\. The newest checkpoint .* is the last good one"):
        engine.run(range(6), max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_iteration=2.pt"]


def test_a_new_run_cleans_up_after_a_killed_one(tmp_path):
    for name in ("m_iteration=2.pt", "m_iteration=4.pt", ".m_iteration=6.pt.x1y2.tmp"):
        (tmp_path / name).write_bytes(b"")
    engine, net = _engine()
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=10, n_saved=2).attach(engine)
    assert (tmp_path / ".m_iteration=6.pt.x1y2.tmp").exists()  # building the trainer touches nothing (the lock comes first)
    engine.add_event_handler(Events.ITERATION_STARTED(once=1), lambda _: seen.append((tmp_path / ".m_iteration=6.pt.x1y2.tmp").exists()))
    seen: list[bool] = []
    engine.run(range(10), max_epochs=1)
    assert seen == [False]  # the half-written file of the killed run is gone when training starts
    # the older files count towards n_saved, so they are rotated out like this run's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_iteration=10.pt", "m_iteration=4.pt"]


def test_a_snapshot_is_written_once_at_its_iteration_and_kept(tmp_path):
    from common.handlers import IterationSnapshot

    engine, net = _engine()
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=3).attach(engine)
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, name="m", save_interval=1, n_saved=1).attach(engine)
    engine.run(range(7), max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guide.pt", "m.pt", "m_iteration=7.pt"]
    guide = torch.load(tmp_path / "guide.pt", weights_only=True)
    assert guide["trainer"]["iteration"] == 3
    assert torch.allclose(guide["network"]["weight"], net.weight.detach() - 4)  # each iteration adds 1: three, not seven


def test_a_snapshot_beyond_the_training_is_refused_and_none_is_off(tmp_path):
    from common.handlers import IterationSnapshot

    engine, net = _engine()
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=7).attach(engine)
    with pytest.raises(ValueError, match="the guide snapshot is asked for at iteration 7, but this training ends at iteration 7"):
        engine.run(range(7), max_epochs=1)  # its last iteration: the snapshot would be the final weights
    engine, net = _engine()
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=None).attach(engine)
    engine.run(range(3), max_epochs=1)
    assert list(tmp_path.iterdir()) == []
    for wrong in (0, 2.5, True):
        with pytest.raises(ValueError, match="the snapshot iteration must be a positive integer or None"):
            IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=wrong)


def test_a_fresh_training_moves_an_earlier_snapshot_aside_and_a_resumed_one_keeps_it(tmp_path):
    from common.handlers import IterationSnapshot

    engine, net = _engine()
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=2).attach(engine)
    engine.run(range(4), max_epochs=1)
    written = (tmp_path / "guide.pt").read_bytes()
    engine, net = _engine()  # another training from scratch, without a snapshot of its own
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=None).attach(engine)
    engine.run(range(4), max_epochs=1)
    assert not (tmp_path / "guide.pt").exists()
    [moved] = (tmp_path / "earlier_runs").glob("guide_*/guide.pt")
    assert moved.read_bytes() == written
    engine, net = _engine()  # a resumed run (its iteration restored before STARTED's handlers) keeps its snapshot
    (tmp_path / "guide.pt").write_bytes(written)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 3))
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=2).attach(engine)
    engine.run(range(4), max_epochs=1)
    assert (tmp_path / "guide.pt").read_bytes() == written


def test_a_run_resumed_past_the_snapshot_without_it_warns_that_it_will_not_write_it(tmp_path, caplog):
    from common.handlers import IterationSnapshot

    engine, net = _engine()  # resumed at iteration 3 of 5 (restored before STARTED's handlers), the iteration-2 guide gone
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 3))
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=2).attach(engine)
    with caplog.at_level("WARNING", logger="common.handlers.checkpoint_saver"):
        engine.run(range(5), max_epochs=1)
    assert f"resumed at iteration 3, past the guide snapshot's iteration 2, and {tmp_path / 'guide.pt'} is missing" in caplog.text
    assert not (tmp_path / "guide.pt").exists()
    caplog.clear()
    engine, net = _engine()  # resumed before the snapshot's iteration: it is still to come, so no warning
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 1))
    IterationSnapshot(str(tmp_path), {"network": net}, name="guide", iteration=2).attach(engine)
    with caplog.at_level("WARNING", logger="common.handlers.checkpoint_saver"):
        engine.run(range(5), max_epochs=1)
    assert "past the guide snapshot" not in caplog.text and (tmp_path / "guide.pt").is_file()

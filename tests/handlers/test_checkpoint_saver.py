from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from common.handlers import AtomicCheckpointSaver


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

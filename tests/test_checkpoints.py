from __future__ import annotations

import pytest
import torch

from common.checkpoints import CheckpointError, load_weights


def test_loads_a_named_entry(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"network": source.state_dict(), "optimizer": {}}, tmp_path / "c.pt")
    load_weights(target, tmp_path / "c.pt", "network")
    assert torch.equal(source.weight, target.weight)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "none.pt")


def test_truncated_file(tmp_path):
    torch.save({"network": torch.nn.Linear(30, 20).state_dict()}, tmp_path / "c.pt")
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_weights(torch.nn.Linear(30, 20), tmp_path / "c.pt", "network")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"network": torch.nn.Linear(3, 2)}, tmp_path / "c.pt")  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "c.pt", "network")


def test_missing_entry_and_wrong_shapes(tmp_path):
    torch.save({"network": torch.nn.Linear(3, 2).state_dict()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"no entry 'ema_network' \(found: \['network'\]\)"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "c.pt", "ema_network")
    with pytest.raises(CheckpointError, match="does not fit Linear"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "c.pt", "network")

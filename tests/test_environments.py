"""tests.environments.Background: which registered environments it makes, and when (at once, or when first asked
for, as under ``pytest -n``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import environments


def _registry(monkeypatch, tmp_path: Path) -> tuple[dict[str, list], threading.Event, Callable[[str], Path]]:
    """Two environments registered for a fixture each, recording the folders they were made in; the first waits
    for the returned event."""
    made: dict[str, list] = {"needed": [], "unneeded": []}
    gate = threading.Event()

    def needed(folder):
        gate.wait(10)
        made["needed"].append(folder)
        return "ready"

    def unneeded(folder):
        made["unneeded"].append(folder)

    monkeypatch.setattr(environments, "_REGISTERED", {"needed": ("fixture_a", needed), "unneeded": ("fixture_b", unneeded)})
    folders = iter(range(100))
    return made, gate, lambda name: tmp_path / f"{name}{next(folders)}"


def test_eager_begins_only_what_the_collected_tests_need_and_lazy_begins_it_when_first_asked(monkeypatch, tmp_path):
    tests = [SimpleNamespace(name="test_x", fixturenames=["fixture_a"])]
    made, gate, folder = _registry(monkeypatch, tmp_path)
    eager = environments.Background(tests, folder)
    assert set(eager._made) == {"needed"}  # begun at construction, the unneeded one never
    gate.set()
    assert eager.result(environments._REGISTERED["needed"][1]) == "ready"
    eager.close()
    assert made == {"needed": [tmp_path / "needed0"], "unneeded": []}

    made, gate, folder = _registry(monkeypatch, tmp_path)
    gate.set()
    lazy = environments.Background(tests, folder, eager=False)
    assert lazy._made == {}  # nothing begun until a test asks
    needed = environments._REGISTERED["needed"][1]
    assert lazy.result(needed) == "ready" and lazy.result(needed) == "ready"
    lazy.close()
    assert made == {"needed": [tmp_path / "needed0"], "unneeded": []}  # made once, however often asked for
    with pytest.raises(KeyError, match="unneeded was not begun: no collected test uses or is fixture_b"):
        lazy.result(environments._REGISTERED["unneeded"][1])

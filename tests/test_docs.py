"""The docs stay true to the code: every test they cite exists, and every module the README's table names exists."""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "bundles").glob("*/docs/README.md"), *(REPO / "benchmarks").glob("*.md")])


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(test file, test name or "") for every ``tests/x.py``, ``tests/x.py::name`` and following ``::name`` of a line."""
    cited = []
    for line in text.splitlines():
        current = None
        for match in re.finditer(r"(tests/[\w/]+\.py)|::(\w+)", line):
            if match.group(1):
                current = match.group(1)
                cited.append((current, ""))
            elif current:
                cited.append((current, match.group(2)))
    return cited


def test_the_citation_parser():
    line = "| a | b | `tests/x/test_a.py::test_one`, `::test_two` and tests/test_b.py |"
    assert cited_tests(line) == [("tests/x/test_a.py", ""), ("tests/x/test_a.py", "test_one"), ("tests/x/test_a.py", "test_two"), ("tests/test_b.py", "")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_cited_test_exists(doc):
    for file, name in cited_tests(doc.read_text()):
        path = REPO / file
        assert path.is_file(), f"{doc.name} cites {file}, which does not exist"
        if name:
            names = {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
            assert name in names, f"{doc.name} cites {file}::{name}, which does not exist"


def test_every_module_and_name_in_the_readme_table_exists():
    table = (REPO / "README.md").read_text().split("## What `common` adds to MONAI", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(common(?:\.\w+)+)`", table)
    assert len(names) > 10
    warnings.simplefilter("error", FutureWarning)  # a path that only resolves through the old names is stale
    for dotted in names:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)

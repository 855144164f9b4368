"""The docs stay true to the code: every test they cite exists, every module the README's table names exists, and
every link between the docs reaches a file and heading that exist."""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "bundles").glob("*/docs/*.md"), *(REPO / "benchmarks").glob("*.md")])


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def relative_links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of every Markdown link that is not a URL: ``[a](../x.md#b)`` gives ("../x.md", "b")."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def test_the_link_parser():
    assert heading_anchors("## Config ids you're expected to override\n### What the demo's pictures show") == {
        "config-ids-youre-expected-to-override", "what-the-demos-pictures-show"}
    assert relative_links("[a](../x.md#b-c), [u](https://a.org/x), [c](details.md)") == [("../x.md", "b-c"), ("details.md", "")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_reaches_a_file_and_heading(doc):
    for path, anchor in relative_links(doc.read_text()):
        target = (doc.parent / path).resolve() if path else doc
        assert target.exists(), f"{doc.relative_to(REPO)} links to {path}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in heading_anchors(target.read_text()), f"{doc.relative_to(REPO)} links to {path}#{anchor}: no such heading"


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


def documented_bundle_runs(text: str) -> list[list[str]]:
    """The arguments after ``monai.bundle run`` of every command of the ```bash blocks of a document, with line
    continuations joined and the block's own ``NAME="..."`` variables expanded."""
    import shlex

    runs = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            assignment = re.fullmatch(r"(\w+)=(['\"])(.*)\2", line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(3)
                continue
            if "monai.bundle run" not in line:
                continue
            line = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), line)
            words = shlex.split(line.split("&&")[0])
            runs.append(words[words.index("run") + 1 :])
    return runs


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_bundle_commands_name_only_ids_their_configs_declare(doc):
    from common.overrides import command_line_overrides, refuse_unknown_ids

    for arguments in documented_bundle_runs(doc.read_text()):
        parsed = command_line_overrides(["monai/bundle/__main__.py", "run", *arguments])
        assert parsed is not None, arguments
        files, ids, arguments = parsed
        # commands run inside a packaged bundle name configs/...; the docs package brain_mri
        files = [str(REPO / f) if f.startswith("bundles/") else str(REPO / "bundles" / "brain_mri" / f) for f in files]
        assert all(Path(f).is_file() for f in files), files
        refuse_unknown_ids(files, [i for i in ids if not i.startswith("$")], f"in {doc.name}", arguments.get("tracking"))


def test_the_documented_command_reader():
    text = '```bash\nSHARED="--image_size [8,8,8]"\npython -m monai.bundle run --config_file a.json $SHARED \\\n  --x 1\n```\n'
    assert documented_bundle_runs(text) == [["--config_file", "a.json", "--image_size", "[8,8,8]", "--x", "1"]]

"""Refusing config ids that no config declares, so a mistyped override stops the run instead of being ignored.

MONAI's parser accepts any id on the command line: ``--dataset_dirr /data/adni`` adds a new, unused id and the
run trains on the demo data, exiting 0. Every bundle config calls ``check_command_line`` first thing in its
``initialize``: under ``python -m monai.bundle run`` (also under torchrun) it reads the command line, and each
``--<id>`` that is neither an argument of ``run`` nor an id of the config files is an error that lists the
closest known ids. ``python -m common pipeline`` checks its overrides with ``refuse_unknown_ids``.
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["RUN_ARGUMENTS", "check_command_line", "command_line_overrides", "config_ids", "refuse_unknown_ids"]

# the arguments of monai.bundle.run itself, which are not config ids
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
)


def config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0``, ...), as the command line names them."""
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        config_id = f"{prefix}#{key}" if prefix else str(key)
        yield config_id
        yield from config_ids(value, config_id)


def _as_files(value: Any) -> list[str]:
    """``--config_file`` as fire passes it on: a path, or a list of paths written as a Python list."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = ast.literal_eval(value)
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def command_line_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(config files, override ids) of a ``python -m monai.bundle run`` command line; None for any other command."""
    program = Path(argv[0]) if argv else Path()
    if program.name != "__main__.py" or program.parent.name != "bundle" or "run" not in argv[1:2]:
        return None
    values: dict[str, Any] = {}
    tokens = list(argv[2:])
    for index, token in enumerate(tokens):
        if not token.startswith("--") or len(token) == 2:
            continue
        key, equals, value = token[2:].partition("=")
        if not equals:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            value = following if following is not None and not following.startswith("--") else True
        values[key.replace("-", "_") if key.replace("-", "_") in RUN_ARGUMENTS else key] = value
    if "args_file" in values:  # defaults of run given in a file: its ids are overrides too
        values = {**ConfigParser.load_config_file(str(values["args_file"])), **values}
    if "config_file" not in values:
        return None
    return _as_files(values["config_file"]), [key for key in values if key not in RUN_ARGUMENTS]


def refuse_unknown_ids(config_files: Sequence[str], ids: Sequence[str], where: str = "on the command line") -> None:
    """``ValueError`` naming every id of ``ids`` that none of ``config_files`` declares, with the closest known ids."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    unknown = [config_id for config_id in ids if config_id not in parser]
    if not unknown:
        return
    known = sorted(set(config_ids(parser.get())))
    lines = []
    for config_id in unknown:
        close = difflib.get_close_matches(config_id, known, n=3, cutoff=0.6)
        lines.append(f"--{config_id}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
    raise ValueError(
        f"{len(unknown)} id{'s' if len(unknown) > 1 else ''} given {where} {'are' if len(unknown) > 1 else 'is'} not in "
        f"{', '.join(Path(f).name for f in config_files)}: {'; '.join(lines)}. Nothing was run; the ids a user sets are "
        "listed in the bundle's docs/README.md."
    )


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Under ``python -m monai.bundle run``, refuse override ids that the run's config files do not declare."""
    parsed = command_line_overrides(sys.argv if argv is None else argv)
    if parsed is not None:
        refuse_unknown_ids(*parsed)

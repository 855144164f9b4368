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
import inspect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigComponent, ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
from monai.utils.module import locate

__all__ = ["RUN_ARGUMENTS", "as_bool", "check_command_line", "command_line_overrides", "config_ids", "refuse_unknown_ids"]

# the parameters of monai.bundle.run (and of the workflow it creates), which are not config ids; positional
# arguments of ``run`` fill the first of them in this order
RUN_ARGUMENTS = (
    "run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
    "workflow_name", "workflow_type", "properties_path",
)


def config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0``, ...), as the command line names them."""
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        config_id = f"{prefix}#{key}" if prefix else str(key)
        yield config_id
        yield from config_ids(value, config_id)


def as_bool(value: Any, name: str) -> bool:
    """A yes/no setting as typed on the command line (fire passes ``--x false`` on as the string "false")."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be true or false, got {value!r}.")


def _as_files(value: Any) -> list[str]:
    """``--config_file`` as MONAI reads it: a path, comma-separated paths, or a list of paths."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = ast.literal_eval(value)
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    return [str(v).strip() for v in value]


def _is_flag(token: str) -> bool:
    """Whether fire reads ``token`` as a flag: ``--x``, or one dash and a letter (``-x``, ``-dataset_dir``), not a
    negative number."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def _parse(tokens: Sequence[str]) -> dict[str, Any]:
    """The arguments of ``run`` as fire passes them on: flags with their values, positional ones by position."""
    values: dict[str, Any] = {}
    positional: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":  # what follows are fire's own flags (--trace, --verbose, ...)
            break
        if not _is_flag(token):
            positional.append(token)
            index += 1
            continue
        key, equals, value = token.lstrip("-").partition("=")
        if not equals:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and not _is_flag(following) and following != "--":
                value, index = following, index + 1
            else:
                value = True
        values[key.replace("-", "_")] = value
        index += 1
    for name, value in zip([n for n in RUN_ARGUMENTS if n not in values], positional):
        values[name] = value
    return values


def command_line_overrides(argv: Sequence[str]) -> tuple[list[str], list[str], dict[str, Any]] | None:
    """(config files, override ids, run arguments) of a ``python -m monai.bundle run`` command line; None for any
    other command."""
    program = Path(argv[0]) if argv else Path()
    if program.name != "__main__.py" or program.parent.name != "bundle" or "run" not in argv[1:2]:
        return None
    values = _parse(argv[2:])
    if "args_file" in values:  # defaults of run given in a file: its ids are overrides too
        values = {**ConfigParser.load_config_file(str(values["args_file"])), **values}
    if "config_file" not in values:
        return None
    arguments = {key: value for key, value in values.items() if key in RUN_ARGUMENTS}
    return _as_files(values["config_file"]), [key for key in values if key not in RUN_ARGUMENTS], arguments


def _tracking_ids(tracking: Any) -> set[str]:
    """The ids MONAI's experiment tracking (``--tracking mlflow``) reads from the overrides."""
    if not tracking:
        return set()
    settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else tracking
    if settings is None:  # a file of tracking settings
        settings = ConfigParser.load_config_files(tracking)
    return set(settings.get("configs", {})) if isinstance(settings, Mapping) else set()


def _component_parameters(config: Mapping) -> set[str] | None:
    """The parameters the ``_target_`` of a component config accepts; None when any name goes (``**kwargs``) or
    the target cannot be looked up here (then its own signature decides when it is built)."""
    try:
        target = ConfigComponent(config=dict(config), locator=ComponentLocator()).resolve_module_name()
        found = locate(target) if isinstance(target, str) else target
        parameters = inspect.signature(found).parameters.values()
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _declared(parser: ConfigParser, config_id: str) -> bool:
    """Whether ``config_id`` is an id of the configs, a metadata id, a key of a mapping the config leaves empty for
    the user to fill (``train.json``'s ``stage_overrides#diffusion#batch_size``; its own reader checks the keys),
    or an argument that a component's ``_target_`` accepts but its config does not set
    (``--train#dataloader#pin_memory true``)."""
    if config_id in parser or config_id.startswith("_meta_"):
        return True
    parent, _, name = config_id.rpartition("#")
    if parent and parent in parser and isinstance(parser[parent], Mapping) and not parser[parent]:
        return True  # one key under an empty mapping; deeper ids there cannot be set by MONAI's parser anyway
    if not parent or parent not in parser or not isinstance(parser[parent], Mapping) or "_target_" not in parser[parent]:
        return False
    accepted = _component_parameters(parser[parent])
    return accepted is None or name in accepted


def refuse_unknown_ids(
    config_files: Sequence[str], ids: Sequence[str], where: str = "on the command line", tracking: Any = None
) -> None:
    """``ValueError`` naming every id of ``ids`` that none of ``config_files`` declares (see ``_declared``; with
    ``tracking``, the ids its settings read are known too), with the closest known ids."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    known_run = set(RUN_ARGUMENTS) | _tracking_ids(tracking)
    unknown = [config_id for config_id in ids if config_id not in known_run and not _declared(parser, config_id)]
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
        files, ids, arguments = parsed
        refuse_unknown_ids(files, ids, tracking=arguments.get("tracking"))

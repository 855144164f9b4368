"""Render every bundle's shared files from one template per role: ``python templates/render.py [--check]``.

A bundle folder must stay self-contained (users copy one folder; the Model Zoo expects it), yet most of what the
bundles hold is the same. So the files are written from ``templates/``:

- ``shared/``: files every bundle holds as they are (``LICENSE``, ``logging.conf``, ``multi_gpu_inference.json``);
- ``<kind>/`` (``latent`` for the Medical Diffusion bundles, ``med_ddpm`` for Med-DDPM): one template per config
  file, and ``shared_ids.json``: the ids several configs of one bundle declare (the networks, the image size).
  A template value ``"<shared>"`` is taken from there, so training and inference always build the same networks;
- ``bundles/<name>.json``: what one bundle differs in: its kind, ``shared_ids`` overrides, and per config file
  the ids to override (MONAI's ``a#b#0`` id syntax). New top-level ids go where the template has its
  ``"<bundle ids>"`` key (or at the end). ``{bundle}`` in any string becomes the bundle's name;
- ``<kind>/readme/<part>.md``: text every bundle of a kind has in its ``docs/README.md``. The README itself is
  the bundle's own, but each region between ``<!-- part: <part> -->`` and ``<!-- end part -->`` is rendered from
  the part, with ``{bundle}``, ``{dataset}`` (the spec's ``"readme": {"dataset": ...}``, an example path and the
  dataset's other ids), ``{class_labels}``, ``{labels_file}``, ``{labels_note}`` and ``{asked}`` (the spec's example
  of class-conditional training and sampling on the dataset's own labels), ``{small_data}`` (the dataset ids of the small-model commands, if any) and,
  for the latent bundles, the small-model overrides of ``common.pipeline.SMALL_SETTINGS`` (``{small_shared}``,
  ``{small_autoencoder}``, ...) filled in;
- ``versions.json``: the package versions every bundle's metadata pins (``monai_version``, ``pytorch_version``,
  ``numpy_version``, ``required_packages_version``), a set that installs together on Python 3.10 to 3.13, as the
  Model Zoo's CI installs them; a template value ``"<pinned>"`` is taken from there.

With ``--check`` nothing is written; the files that differ from their rendering are listed and the exit status is
1. ``tests/bundles/test_templates.py`` runs the check, so an edit made to a bundle's file instead of its template
or spec fails the tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent
REPO = TEMPLATES.parent
SHARED_VALUE = "<shared>"
PINNED_VALUE = "<pinned>"
VERSIONS = TEMPLATES / "versions.json"
BUNDLE_IDS = "<bundle ids>"
TOP_LEVEL_FILES = ("LICENSE",)  # written to the bundle folder itself; the others go to configs/
README_PART = re.compile(r"(<!-- part: ([\w-]+) -->\n)(.*?)(<!-- end part -->)", re.S)


class TemplateError(ValueError):
    """A template or bundle spec that cannot be rendered, with the file and id named."""


def _set_id(config: dict, config_id: str, value: Any, where: str, new_ids: dict) -> None:
    """Set ``config_id`` (``a#b#0``; keys that themselves hold ``#``, as ``train#trainer``, are matched whole)."""
    parts = config_id.split("#")
    node: Any = config
    while parts:
        if isinstance(node, list):
            index = int(parts[0]) if parts[0].lstrip("-").isdigit() else None
            if index is None or not -len(node) <= index < len(node):
                raise TemplateError(f"{where}: id '{config_id}': no list item '{parts[0]}'.")
            if len(parts) == 1:
                node[index] = copy.deepcopy(value)
                return
            node, parts = node[index], parts[1:]
            continue
        if not isinstance(node, dict):
            raise TemplateError(f"{where}: id '{config_id}' goes into a value that is neither an object nor a list.")
        for length in range(len(parts), 0, -1):
            key = "#".join(parts[:length])
            if key in node:
                if length == len(parts):
                    node[key] = copy.deepcopy(value)
                    return
                node, parts = node[key], parts[length:]
                break
        else:
            if node is config and len(parts) == 1:  # a new top-level id of this bundle
                new_ids[parts[0]] = copy.deepcopy(value)
                return
            raise TemplateError(f"{where}: id '{config_id}' does not exist in the template (a typo?).")


def _substitute(value: Any, bundle: str) -> Any:
    if isinstance(value, str):
        return value.replace("{bundle}", bundle)
    if isinstance(value, list):
        return [_substitute(v, bundle) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, bundle) for k, v in value.items()}
    return value


def render_config(template: dict, shared: dict, overrides: dict, bundle: str, where: str) -> dict:
    """One config of a bundle: shared values filled in, the bundle's overrides applied, ``{bundle}`` replaced."""
    config: dict = {}
    for key, value in template.items():
        if value == SHARED_VALUE:
            if key not in shared:
                raise TemplateError(f"{where}: '{key}' is marked {SHARED_VALUE} but shared_ids.json has no '{key}'.")
            value = shared[key]
        elif value == PINNED_VALUE:
            pinned = json.loads(VERSIONS.read_text())
            if key not in pinned:
                raise TemplateError(f"{where}: '{key}' is marked {PINNED_VALUE} but {VERSIONS.name} has no '{key}'.")
            value = pinned[key]
        config[key] = copy.deepcopy(value)
    new_ids: dict = {}
    for config_id, value in overrides.items():
        _set_id(config, config_id, value, where, new_ids)
    if BUNDLE_IDS in config:
        ordered = {}
        for key, value in config.items():
            ordered.update(new_ids if key == BUNDLE_IDS else {key: value})
        config = ordered
    else:
        config.update(new_ids)
    return _substitute(config, bundle)


def _command_line(overrides: dict[str, Any], indent: str = "    ", width: int = 140) -> str:
    """``--id value`` arguments as a shell takes them (lists without spaces), wrapped with backslashes."""
    arguments = [f"--{key} {json.dumps(value, separators=(',', ':')).replace('false', 'False').replace('true', 'True')}"
                 for key, value in overrides.items()]
    lines, line = [], ""
    for argument in arguments:
        if line and len(indent) + len(line) + len(argument) + 3 > width:
            lines.append(line)
            line = argument
        else:
            line = f"{line} {argument}".strip()
    return f" \\\n{indent}".join([*lines, line])


def readme_values(bundle: str, spec_readme: dict[str, str]) -> dict[str, str]:
    """What a README part's placeholders become for ``bundle``."""
    values = {"bundle": bundle, "small_data": "", **spec_readme}
    sys.path.insert(0, str(REPO))
    from common.pipeline import SMALL_IMAGE_SIZE, SMALL_SETTINGS

    if bundle in SMALL_IMAGE_SIZE:
        values["small_image_size"] = json.dumps(SMALL_IMAGE_SIZE[bundle], separators=(",", ":"))
        values.update({f"small_{stage}": _command_line(overrides) for stage, overrides in SMALL_SETTINGS.items()})
    return values


def render_readme(path: Path, parts: Path, values: dict[str, str], where: str) -> str | None:
    """``path`` (a bundle's ``docs/README.md``) with every part region rendered from ``parts``; None if absent."""
    if not path.is_file():
        return None

    def fill(match: re.Match) -> str:
        part = parts / f"{match.group(2)}.md"
        if not part.is_file():
            raise TemplateError(f"{where}: README part '{match.group(2)}' is not in {parts}.")
        text = part.read_text()
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        left = sorted(set(re.findall(r"\{(bundle|dataset|small_\w+|class_labels|labels_file|labels_note|asked)\}", text)))
        if left:
            raise TemplateError(f"{where}: README part '{match.group(2)}' needs {left}, which {path.parent.parent.name} does not give.")
        return match.group(1) + text + match.group(4)

    return README_PART.sub(fill, path.read_text())


def render_bundle(spec_path: Path) -> dict[Path, str]:
    """Every file rendered for the bundle of ``spec_path`` (``templates/bundles/<name>.json``): path -> text."""
    bundle = spec_path.stem
    spec = json.loads(spec_path.read_text())
    readme = spec.pop("readme", {})
    kind = TEMPLATES / spec.pop("template", "")
    if not kind.is_dir() or kind.name in ("shared", "bundles"):
        raise TemplateError(f"{spec_path}: 'template' must name a folder of {TEMPLATES} with a kind's templates.")
    shared_path = kind / "shared_ids.json"
    shared = json.loads(shared_path.read_text()) if shared_path.is_file() else {}
    new_shared: dict = {}
    for config_id, value in spec.pop("shared_ids", {}).items():
        _set_id(shared, config_id, value, f"{spec_path} shared_ids", new_shared)
    if new_shared:
        raise TemplateError(f"{spec_path}: shared_ids {sorted(new_shared)} are not in {shared_path}.")
    sources = {p.name: p for p in sorted((TEMPLATES / "shared").iterdir())}
    sources.update({p.name: p for p in sorted(kind.iterdir()) if p.is_file() and p.name != "shared_ids.json"})
    unknown = sorted(set(spec) - set(sources))
    if unknown:
        raise TemplateError(f"{spec_path}: {unknown} are not files of the '{kind.name}' templates ({sorted(sources)}).")
    folder = REPO / "bundles" / bundle
    rendered = {}
    for name, source in sources.items():
        target = folder / name if name in TOP_LEVEL_FILES else folder / "configs" / name
        if source.suffix == ".json":
            config = render_config(json.loads(source.read_text()), shared, spec.get(name, {}), bundle, f"{spec_path} {name}")
            rendered[target] = json.dumps(config, indent=4) + "\n"
        else:
            rendered[target] = source.read_text()
    text = render_readme(folder / "docs" / "README.md", kind / "readme", readme_values(bundle, readme), str(spec_path))
    if text is not None:
        rendered[folder / "docs" / "README.md"] = text
    return rendered


def render_all() -> dict[Path, str]:
    """Every rendered file of every bundle that has a spec in ``templates/bundles/``."""
    rendered: dict[Path, str] = {}
    for spec_path in sorted((TEMPLATES / "bundles").glob("*.json")):
        rendered.update(render_bundle(spec_path))
    return rendered


def stale_files() -> list[Path]:
    """The bundle files that differ from their rendering (or are missing)."""
    return [path for path, text in render_all().items() if not path.is_file() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; list the files that differ and exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"differs from its template: {path.relative_to(REPO)}")
        if stale:
            print("edit templates/ (not the bundle's file) and run: python templates/render.py")
        return 1 if stale else 0
    from common.io import write_text  # atomic, with the file's own mode

    for path, text in render_all().items():
        if not path.is_file() or path.read_text() != text:
            write_text(text, path)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

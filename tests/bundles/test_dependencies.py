"""Every third-party module the code imports at run time is declared in ``setup.cfg``.

A module can be used without appearing in any ``import`` line (MONAI's ``optional_import`` loads PyYAML when a
``.yml`` file is read), so the check is made on what really gets imported: every module of ``common``, and the
documented commands run in a fresh process under ``python -X importtime``. Each third-party module seen must come
from a distribution that ``setup.cfg`` asks for, directly or through what those ask for. This holds in any
environment, even one that happens to have the undeclared package installed; ``.ci/run`` additionally runs the
whole suite in a fresh virtual environment holding only the declared dependencies.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import subprocess
import sys

import pytest

from tests.bundles.bundle_runs import REPO
from tests.environments import isolated_environment_variables

# what a virtual environment itself brings: imported at start-up by its .pth files, not by this project
ENVIRONMENT_TOOLING = {"pip", "setuptools", "wheel"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def declared_distributions() -> set[str]:
    """This project, ``setup.cfg``'s install requirements and non-test extras, and all they require, recursively."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    for extra, requirements in setup["options.extras_require"].items():
        if extra != "test":
            lines += requirements.splitlines()
    pending = [_requirement_name(line) for line in lines if line.strip()]
    declared = {_normalise(setup["metadata"]["name"])}  # this project (``common``)
    while pending:
        name = pending.pop()
        if name in declared:
            continue
        declared.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # e.g. an optional extra not installed here
            continue
        pending += [_requirement_name(r) for r in requires if "extra ==" not in r and "extra==" not in r]
    return declared


def imported_distributions(*command: str, cwd=REPO) -> dict[str, set[str]]:
    """Run ``python -X importtime COMMAND``; the third-party top-level modules it imported, with their distributions."""
    result = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, cwd=cwd,
                            env=isolated_environment_variables())
    assert result.returncode == 0, result.stderr[-3000:]
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    owners = importlib.metadata.packages_distributions()
    return {module: {_normalise(d) for d in owners[module]} for module in modules - set(sys.stdlib_module_names)
            if module in owners}


def undeclared(imported: dict[str, set[str]]) -> dict[str, set[str]]:
    allowed = declared_distributions() | ENVIRONMENT_TOOLING
    return {module: owners for module, owners in imported.items() if not owners & allowed}


def test_the_declared_distributions_are_found_through_setup_cfg():
    declared = declared_distributions()
    assert {"torch", "monai", "pyyaml", "pytorch-ignite", "jsonschema"} <= declared
    assert "numpy" in declared and "pytest" not in declared  # numpy through monai; the test extra is not run time
    assert undeclared({"yaml": {"pyyaml"}, "numpy": {"numpy"}}) == {}
    assert undeclared({"pytest": {"pytest"}}) == {"pytest": {"pytest"}}  # the check can fail


def test_every_module_of_common_imports_only_declared_distributions():
    script = ("import pkgutil, importlib, warnings, common; warnings.simplefilter('ignore'); "
              "[importlib.import_module(m.name) for m in pkgutil.walk_packages(common.__path__, 'common.')]")
    assert undeclared(imported_distributions("-c", script)) == {}


@pytest.mark.parametrize("command", ["check_zoo", "inference"])
def test_the_documented_commands_on_a_package_import_only_declared_distributions(brain_package, command):
    """``python -m common check_zoo`` (which reads ``large_files.yml`` with PyYAML) and the package's sampling."""
    folder = brain_package.parent / "brain_mri"
    if command == "check_zoo":
        imported = imported_distributions("-m", "common", "check_zoo", str(folder))
        assert "yaml" in imported  # what was missing from setup.cfg: the check reads large_files.yml
    else:
        imported = imported_distributions("-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                                          "--num_samples", "1", "--num_inference_steps", "2",
                                          "--output_dir", str(brain_package.parent / "dependency_check"), cwd=folder)
    assert undeclared(imported) == {}

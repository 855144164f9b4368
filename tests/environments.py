"""Second Python environments for tests that install something (MONAI Label, a package's pinned versions).

They work whatever runs the suite: a virtual environment, a conda environment or a system Python. A venv made
with ``system_site_packages=True`` from inside another venv sees the *base* interpreter's packages, not the running
environment's, so an environment "on top of this one" is made here without system site packages and given this
interpreter's own site folders through a ``.pth`` file (their own ``.pth`` files, an editable install's among
them, are processed too). Packages installed into the new environment come first on its path.

Installing needs the package index, as ``.ci/run``'s own install does; when the index cannot be reached the test
is skipped with pip's reason, and any other pip failure fails the test.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import venv
from pathlib import Path

import pytest

__all__ = ["isolated_environment_variables", "make_environment", "pip_install", "this_environments_site_folders"]

# what pip prints when it cannot reach an index (no network, a proxy refusing, DNS failing)
OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|ProxyError|ConnectTimeoutError|No route to host"
)  # not "Could not find a version": a pin that does not exist must fail the test


def isolated_environment_variables() -> dict[str, str]:
    """This process's environment without what would let another interpreter import this one's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


def this_environments_site_folders() -> list[str]:
    """The site-packages folders of the running interpreter (venv, conda or system), user site included if used."""
    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        folders.append(site.getusersitepackages())
    return folders


def make_environment(path: Path, on_top_of_this_one: bool) -> str:
    """A new virtual environment at ``path`` with pip; returns its ``python``.

    Args:
        path: folder to create.
        on_top_of_this_one: also see this interpreter's packages (torch, MONAI, this project), after its own.
    """
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(path)
    python = path / "bin" / "python"
    if on_top_of_this_one:
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, env=isolated_environment_variables(),
        ).stdout.strip()
        lines = [f"import site; site.addsitedir({folder!r})" for folder in this_environments_site_folders()]
        Path(purelib, "_on_top_of_the_test_environment.pth").write_text("\n".join(lines) + "\n")
    return str(python)


def pip_install(python: str, *args: str) -> str:
    """``pip install ARGS`` with ``python``; skips the test when the package index cannot be reached."""
    result = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", *args],  # no .pyc: faster
        capture_output=True, text=True, env=isolated_environment_variables(),
    )
    if result.returncode != 0 and OFFLINE.search(result.stderr):
        pytest.skip(f"pip install {' '.join(args)} needs the package index, which cannot be reached here:\n"
                    f"{result.stderr.strip()[-600:]}")
    assert result.returncode == 0, f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout

"""Second Python environments for tests that install something (MONAI Label, a package's pinned versions).

They work whatever runs the suite: a virtual environment, a conda environment or a system Python. A venv made
with ``system_site_packages=True`` from inside another venv sees the *base* interpreter's packages, not the running
environment's, so an environment "on top of this one" is made here without system site packages and given this
interpreter's own site folders through a ``.pth`` file (their own ``.pth`` files, an editable install's among
them, are processed too). Packages installed into the new environment come first on its path.

Installing needs the package index, as ``.ci/run``'s own install does; when the index cannot be reached the test
is skipped with pip's reason, and any other pip failure fails the test.

A test module registers such an install with :func:`made_in_the_background`, and the session begins it in a thread
at its first test (``conftest.background``), so that its waits on the index overlap the other tests (with the tests
spread over processes, ``pytest -n``, when a test first asks for it). pip's work is
mostly CPU, though, which the tests beside it then share: measured on 2 cores, the suite gained about 10 s, not the
minute the three installs take alone. The test takes its result, or its failure or skip, with
:meth:`Background.result`; only the environments of the tests that were collected are made.
"""

from __future__ import annotations

import functools
import os
import re
import site
import subprocess
import sys
import venv
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "Background", "isolated_environment_variables", "made_in_the_background", "make_environment", "pip_install",
    "this_environments_site_folders",
]

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


@functools.lru_cache(maxsize=1)
def installs_for_others() -> bool:
    """Whether this interpreter has a pip that installs into another environment (``--python``, pip 22.3 on)."""
    found = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    version = re.match(r"pip (\d+)\.(\d+)", found.stdout) if found.returncode == 0 else None
    return version is not None and (int(version[1]), int(version[2])) >= (22, 3)


def make_environment(path: Path, on_top_of_this_one: bool) -> str:
    """A new virtual environment at ``path``; returns its ``python``. Without pip of its own where this
    interpreter's pip can install into it (``pip_install``): ensurepip costs about 3 s of CPU per environment.

    Args:
        path: folder to create.
        on_top_of_this_one: also see this interpreter's packages (torch, MONAI, this project), after its own.
    """
    venv.EnvBuilder(with_pip=not installs_for_others(), system_site_packages=False).create(path)
    python = path / "bin" / "python"
    if on_top_of_this_one:
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, env=isolated_environment_variables(),
        ).stdout.strip()
        lines = [f"import site; site.addsitedir({folder!r})" for folder in this_environments_site_folders()]
        Path(purelib, "_on_top_of_the_test_environment.pth").write_text("\n".join(lines) + "\n")
    return str(python)


def pip_install(python: str, *args: str, own_pip: bool = False) -> str:
    """``pip install ARGS`` into ``python``'s environment, by this interpreter's pip (``--python``) or, with
    ``own_pip`` or where this one's cannot (``installs_for_others``), by ``python``'s own; skips the test when the
    package index cannot be reached."""
    pip = [python, "-m", "pip"] if own_pip or not installs_for_others() else [sys.executable, "-m", "pip", "--python", python]
    result = subprocess.run(
        [*pip, "install", "--disable-pip-version-check", "--no-compile", *args],  # no .pyc: faster
        capture_output=True, text=True, env=isolated_environment_variables(),
    )
    if result.returncode != 0 and OFFLINE.search(result.stderr):
        pytest.skip(f"pip install {' '.join(args)} needs the package index, which cannot be reached here:\n"
                    f"{result.stderr.strip()[-600:]}")
    assert result.returncode == 0, f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


# function name -> (the fixture or test that needs it, the function); filled as test modules are imported
_REGISTERED: dict[str, tuple[str, Callable[[Path], Any]]] = {}


def made_in_the_background(needed_by: str) -> Callable[[Callable[[Path], Any]], Callable[[Path], Any]]:
    """Registers ``function(folder)``, which makes an environment in ``folder`` for the tests that use the fixture
    named ``needed_by`` or are the test function of that name, to be begun by :class:`Background`."""

    def register(function: Callable[[Path], Any]) -> Callable[[Path], Any]:
        if function.__name__ in _REGISTERED:
            raise ValueError(f"an environment named {function.__name__} is registered already")
        _REGISTERED[function.__name__] = (needed_by, function)
        return function

    return register


class Background:
    """The registered environments that the collected tests need, each made in a thread of its own, from the start
    or (``eager`` false) from the first test that asks for it.

    Args:
        tests: the collected test items (each with its ``fixturenames`` and ``originalname``).
        folder: makes an empty folder for a name (``tmp_path_factory.mktemp``), called before its thread begins.
        eager: begin every wanted environment now. ``False`` where the tests are spread over several processes
            (pytest-xdist): each process collects every test but runs only some, so an environment is begun when a
            test first asks for it, in this process only, instead of once in every process.
    """

    def __init__(self, tests: Iterable[Any], folder: Callable[[str], Path], eager: bool = True) -> None:
        needs = set()
        for test in tests:
            needs.update(getattr(test, "fixturenames", ()))
            needs.add(getattr(test, "originalname", test.name))
        self._wanted = {name: function for name, (needed_by, function) in _REGISTERED.items() if needed_by in needs}
        self._folder = folder
        self._pool = ThreadPoolExecutor(max(1, len(self._wanted)), thread_name_prefix="environment")
        self._made: dict[str, Future] = {}
        if eager:
            for name in self._wanted:
                self._begin(name)

    def _begin(self, name: str) -> Future:
        if name not in self._made:
            self._made[name] = self._pool.submit(self._wanted[name], self._folder(name))
        return self._made[name]

    def result(self, function: Callable[[Path], Any]) -> Any:
        """What the registered ``function`` returned, once it has; its exception (a skip included) is raised here."""
        if function.__name__ not in self._wanted:
            needed_by = _REGISTERED[function.__name__][0] if function.__name__ in _REGISTERED else None
            raise KeyError(f"{function.__name__} was not begun: " + (f"no collected test uses or is {needed_by}" if needed_by
                           else "it is not registered with made_in_the_background"))
        return self._begin(function.__name__).result()

    def close(self) -> None:
        """Waits for the environments still being made (a test that failed early may have left one)."""
        self._pool.shutdown(wait=True)

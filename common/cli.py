"""The command line, ``python -m common <command>``: ``demo`` and ``pipeline`` (``common.pipeline``), ``package``,
``check_zoo`` and ``unpack`` (``common.deploy``). Each command's help: ``python -m common <command> --help``."""

from __future__ import annotations

import sys

import fire

from common.deploy import PackagingError, UnsafeArchiveError, ZooCheckError, check_zoo, package_bundle, unpack_bundle
from common.pipeline import demo, pipeline

__all__ = ["COMMANDS", "main"]

COMMANDS = {"demo": demo, "pipeline": pipeline, "package": package_bundle, "check_zoo": check_zoo, "unpack": unpack_bundle}


def main() -> None:
    """Run the command named on the command line."""
    try:
        fire.Fire(COMMANDS)
    except (ZooCheckError, PackagingError, UnsafeArchiveError) as error:  # findings, not crashes: the problem and
        # exit status 1, no traceback
        sys.exit(str(error))


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

"""The command line, ``python -m common <command>``: ``demo`` (``common.pipeline``, ``common.conditional_demo``
with ``--conditional``, ``common.med_ddpm.demo`` with ``--bundle brain_tumor_semantic``), ``pipeline``, ``evaluate_classes``
(``common.class_evaluation``), ``package``,
``check_zoo`` and ``unpack`` (``common.deploy``). Each command's help: ``python -m common <command> --help``."""

from __future__ import annotations

import sys

import fire

from common.class_evaluation import evaluate_classes
from common.conditional_demo import conditional_demo
from common.deploy import PackagingError, UnsafeArchiveError, ZooCheckError, check_zoo, package_bundle, unpack_bundle
from common.pipeline import demo as unconditional_demo
from common.pipeline import pipeline

__all__ = ["COMMANDS", "demo", "main"]


def demo(output_dir: str | None = None, bundle: str = "brain_mri", conditional: bool = False) -> str:
    """Train small models on the embedded demo data, sample, evaluate, and print what the evaluation found.

    Args:
        output_dir: where everything goes; default ``demo_output`` (``conditional_demo_output`` with ``conditional``).
        bundle: ``brain_mri`` (the default) or ``brain_tumor_semantic`` (Med-DDPM: images for masks).
        conditional: the class-conditional demo of ``brain_mri`` (``common.conditional_demo``): normal brains and
            brains with enlarged ventricles, samples asked for each class.
    """
    if not isinstance(conditional, bool):
        raise ValueError(f"conditional must be true or false, got {conditional!r}.")
    if conditional:
        if bundle != "brain_mri":
            raise ValueError(f"the class-conditional demo is brain_mri's, not {bundle}'s.")
        return conditional_demo(output_dir or "conditional_demo_output")
    return unconditional_demo(output_dir or "demo_output", bundle)

COMMANDS = {"demo": demo, "pipeline": pipeline, "evaluate_classes": evaluate_classes, "package": package_bundle, "check_zoo": check_zoo,
            "unpack": unpack_bundle}


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

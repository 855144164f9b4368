"""Import paths of release 0.1 that moved in release 0.2, kept working until 0.3 with a ``FutureWarning``.

Users' own configs may name ``common.latent.CodebookRangeAutoencoder`` or ``common.semantic.MaskConditionedSampler``;
those names still resolve (``_target_`` lookups, ``$`` expressions and ``import`` statements alike), each use
warning once with the new path. docs/migration.md lists the moves.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "moved_attribute"]

REMOVED_IN = "0.3"

# old module, then the modules its names now live in (searched in order)
_MOVES = """
common.breast                         common.data
common.demo_data                      common.data common.data.demo
common.dicom                          common.data common.data.dicom
common.engines.conditional_diffusion  common.med_ddpm
common.export                         common.deploy
common.latent                         common.networks
common.metrics                        common.evaluation.metrics common.evaluation.audit
common.packaging                      common.deploy
common.semantic                       common.med_ddpm common.data
common.semantic_evaluation            common.med_ddpm
common.transforms                     common.data common.data.transforms
common.utility                        common.med_ddpm.segmentation_utility
common.med_ddpm.utility               common.med_ddpm.segmentation_utility
common.visualize                      common.evaluation.pictures
"""
MOVED_MODULES: dict[str, tuple[str, ...]] = {line.split()[0]: tuple(line.split()[1:]) for line in _MOVES.strip().splitlines()}

# names that moved out of a module that still exists, or were renamed: old "module.name" -> new "module.name"
MOVED_NAMES: dict[str, str] = {
    "common.cli.DEMO_SETTINGS": "common.pipeline.DEMO_SETTINGS",
    "common.cli.STAGES": "common.pipeline.STAGES",
    "common.cli.bundle_dir": "common.io.bundle_dir",
    "common.evaluation.memorisation_audit": "common.evaluation.audit.memorisation_audit",
    "common.evaluation.volume_name": "common.data.item_name",
    "common.evaluation.write_json": "common.io.write_json",
    "common.handlers.save_atomically": "common.io.save_torch",
    "common.handlers.checkpoint_saver.save_atomically": "common.io.save_torch",
    "common.engines.ConcatConditionPrepareBatch": "common.med_ddpm.ConcatConditionPrepareBatch",
    "common.semantic.stem": "common.data.nifti_stem",
    # renamed in 0.2.2 for what they are (a MONAI reader takes Evaluator for monai.engines' and channels_last for a
    # memory format)
    "common.evaluation.Evaluator": "common.evaluation.SyntheticEvaluationBase",
    "common.io.channels_last": "common.io.to_nifti_layout",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(
        f"{old} moved to {new} in release 0.2; the old path stops working in release {REMOVED_IN} "
        "(see docs/migration.md).",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )


def moved_attribute(module: str, name: str, stacklevel: int = 3) -> Any:
    """The object ``module.name`` moved to (warning with its new path), or ``AttributeError`` as Python raises it."""
    new = MOVED_NAMES.get(f"{module}.{name}")
    if new is None:
        raise AttributeError(f"module '{module}' has no attribute '{name}'")
    target, attribute = new.rsplit(".", 1)
    _warn(f"{module}.{name}", new, stacklevel)
    return getattr(importlib.import_module(target), attribute)


class MovedModule(types.ModuleType):
    """Stands in for a module of release 0.1: each name is looked up where it moved, with a warning."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: use {' or '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if f"{self.__name__}.{name}" in MOVED_NAMES:
            return moved_attribute(self.__name__, name, stacklevel=3)
        for target in self.__targets:
            module = importlib.import_module(target)
            if name in vars(module):
                _warn(f"{self.__name__}.{name}", f"{target}.{name}", stacklevel=2)
                return vars(module)[name]
        raise AttributeError(f"module '{self.__name__}' has no attribute '{name}' (its names moved to {', '.join(self.__targets)})")


def install() -> None:
    """Register the old modules, so importing them (``import common.latent``) still works; each is also set as an
    attribute of its parent package (``common.latent``, ``common.engines.conditional_diffusion``)."""
    for old, targets in MOVED_MODULES.items():
        module = sys.modules.setdefault(old, MovedModule(old, targets))
        parent, _, name = old.rpartition(".")
        setattr(importlib.import_module(parent), name, module)

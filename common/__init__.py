"""Shared components of the Medical Diffusion bundles: what MONAI lacks to reproduce the papers.

The layers, lowest first (a module imports only from layers below its own; ``tests/test_layout.py`` checks it):

- ``io``, ``logs``: writing files atomically under the user's umask, process ranks, the repository root; logs
  without other libraries' false alarms;
- ``checkpoints``, ``overrides``: reading weights safely, with errors that name the file; refusing mistyped config
  ids on the command line;
- ``networks``, ``losses``, ``data``: the method's networks and objective, dataset readers and demo data;
- ``engines``, ``handlers``, ``evaluation``: the training stages, ignite handlers, metrics and evaluators;
- ``sampling``: the sampling scheduler and loop of every sampler, and the latent bundles' sampler;
- ``med_ddpm``: mask-conditioned synthesis (Med-DDPM);
- ``pipeline``: the stages of a bundle chained, and the demo;
- ``deploy``, ``class_evaluation``: TorchScript exports, Model Zoo packages, safe unpacking; a class-conditional
  model evaluated class by class on a labelled dataset;
- ``conditional_demo``: the class-conditional demo;
- ``cli``: ``python -m common``.

Bundle configs ``import common`` and refer to ``common.<package>.<name>``, so the packages are imported here.
"""

from . import (
    checkpoints,
    data,
    deploy,
    engines,
    evaluation,
    handlers,
    io,
    logs,
    losses,
    med_ddpm,
    networks,
    overrides,
    pipeline,
    sampling,
)
from ._deprecated import install as _install_moved_modules

__all__ = [
    "checkpoints",
    "data",
    "deploy",
    "engines",
    "evaluation",
    "handlers",
    "io",
    "logs",
    "losses",
    "med_ddpm",
    "networks",
    "overrides",
    "pipeline",
    "sampling",
]

_install_moved_modules()

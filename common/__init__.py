"""Shared components of the Medical Diffusion bundles: what MONAI lacks to reproduce the paper.

Bundle configs ``import common`` and refer to ``common.<module>.<name>``, so the submodules are imported here.
"""

from . import (
    breast,
    checkpoints,
    data,
    demo_data,
    dicom,
    engines,
    evaluation,
    export,
    handlers,
    latent,
    losses,
    metrics,
    networks,
    packaging,
    sampling,
    semantic,
    transforms,
    visualize,
)

__all__ = [
    "breast",
    "checkpoints",
    "data",
    "demo_data",
    "dicom",
    "engines",
    "evaluation",
    "export",
    "handlers",
    "latent",
    "losses",
    "metrics",
    "networks",
    "packaging",
    "sampling",
    "semantic",
    "transforms",
    "visualize",
]

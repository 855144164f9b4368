"""Shared components of the Medical Diffusion bundles: what MONAI lacks to reproduce the paper.

Bundle configs ``import common`` and refer to ``common.<module>.<name>``, so the submodules are imported here.
"""

from . import checkpoints, data, demo_data, dicom, engines, handlers, latent, losses, networks, sampling, visualize

__all__ = [
    "checkpoints",
    "data",
    "demo_data",
    "dicom",
    "engines",
    "handlers",
    "latent",
    "losses",
    "networks",
    "sampling",
    "visualize",
]

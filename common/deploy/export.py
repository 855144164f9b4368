"""TorchScript export of trained networks, with the bundle's configs embedded as MONAI's ``ckpt_export`` does.

MONAI's ``python -m monai.bundle ckpt_export`` traces a network with one random input; the denoiser takes two
(the noisy latent and the timesteps), so this module traces with any example inputs, checks that the traced
network gives the eager network's output on them, and saves it with ``save_net_with_metadata`` (the configs as
extra files, readable with ``monai.data.load_net_with_metadata``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import save_net_with_metadata

from common.io import atomic_path

__all__ = ["ExportError", "export_torchscript"]


class ExportError(RuntimeError):
    """A traced network that does not reproduce the eager network."""


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [r for r in result if isinstance(r, torch.Tensor)]


@torch.no_grad()
def export_torchscript(
    network: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    atol: float = 1e-4,
) -> Path:
    """Trace ``network`` (in eval mode) on ``example_inputs`` and save it to ``path`` with ``configs`` embedded.

    ``example_inputs`` are positional, or by name (a mapping) for an input that follows optional ones (a
    self-conditioned denoiser's ``self_condition``); the traced network then takes them in the mapping's order.

    ``configs`` maps a name (e.g. "inference") to a config dict, stored as "<name>.json". Raises ``ExportError``
    when the traced network's outputs differ from the eager network's by more than ``atol``. The file is written
    atomically.
    """
    network = network.eval()
    if isinstance(example_inputs, Mapping):
        traced = torch.jit.trace(network, example_kwarg_inputs=dict(example_inputs), check_trace=False)
        expected, found = _outputs(network(**example_inputs)), _outputs(traced(*example_inputs.values()))
    else:
        traced = torch.jit.trace(network, tuple(example_inputs), check_trace=False)
        expected, found = _outputs(network(*example_inputs)), _outputs(traced(*example_inputs))
    if len(expected) != len(found) or any(not torch.allclose(e, f, atol=atol) for e, f in zip(expected, found)):
        raise ExportError(f"the traced {type(network).__name__} does not reproduce the eager network's outputs; not exported.")
    path = Path(path)
    extra = {f"{name}.json": json.dumps(config).encode() for name, config in (configs or {}).items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        save_net_with_metadata(traced, stream, include_config_vals=False, more_extra_files=extra)
    return path

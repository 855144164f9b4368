"""TorchScript export: traced networks reproduce the eager ones, also at other batch sizes."""

from __future__ import annotations

import torch

from common.export import export_torchscript
from tests.conftest import tiny_vqgan


def test_a_traced_vqgan_searches_the_codebook_for_inputs_larger_than_traced(tmp_path):
    vqgan = tiny_vqgan(search_backend="torch", max_distances=64 * 8).train()
    vqgan(torch.randn(2, 1, 16, 16, 16))  # initialise the codebook
    vqgan.eval()
    path = export_torchscript(vqgan, (torch.randn(1, 1, 16, 16, 16),), tmp_path / "vqgan.ts")
    traced = torch.jit.load(str(path))
    larger = torch.randn(3, 1, 16, 16, 16)  # 3 times the vectors the trace saw
    with torch.no_grad():
        assert torch.allclose(traced(larger)[0], vqgan(larger)[0], atol=1e-5)

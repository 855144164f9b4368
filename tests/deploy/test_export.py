"""TorchScript export: traced networks reproduce the eager ones, also at other batch sizes."""

from __future__ import annotations

import torch

from common.deploy import export_torchscript
from tests.helpers import tiny_vqgan


def test_a_traced_vqgan_searches_the_codebook_for_inputs_larger_than_traced(tmp_path):
    vqgan = tiny_vqgan(search_backend="torch", max_distances=64 * 8).train()
    vqgan(torch.randn(2, 1, 16, 16, 16))  # initialise the codebook
    vqgan.eval()
    path = export_torchscript(vqgan, (torch.randn(1, 1, 16, 16, 16),), tmp_path / "vqgan.ts")
    traced = torch.jit.load(str(path))
    larger = torch.randn(3, 1, 16, 16, 16)  # 3 times the vectors the trace saw
    with torch.no_grad():
        assert torch.allclose(traced(larger)[0], vqgan(larger)[0], atol=1e-5)


def test_a_traced_denoiser_reproduces_the_eager_one_at_another_batch_size(tmp_path, monkeypatch):
    from common.networks import DepthAttentionUNet, depth_attention_unet

    monkeypatch.setattr(depth_attention_unet, "CPU_CHUNK_BYTES", 1000)  # eager runs in many chunks; the trace must not bake them in
    torch.manual_seed(0)
    net = DepthAttentionUNet(3, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4, depth_position_embedding=True).eval()
    path = export_torchscript(net, (torch.randn(1, 3, 8, 8, 4), torch.tensor([5])), tmp_path / "denoiser.ts")
    traced = torch.jit.load(str(path))
    x, t = torch.randn(2, 3, 8, 8, 4), torch.tensor([7, 90])
    with torch.no_grad():
        assert torch.allclose(traced(x, t), net(x, t), atol=1e-5)


def test_a_traced_self_conditioned_denoiser_takes_its_estimate_by_name_and_reproduces_the_eager_one(tmp_path):
    from common.networks import DepthAttentionUNet

    torch.manual_seed(0)
    net = DepthAttentionUNet(2, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4,
                             self_conditioning=True).eval()
    x = torch.randn(1, 2, 8, 8, 4)
    path = export_torchscript(net, {"x": x, "timesteps": torch.tensor([5]), "self_condition": torch.randn_like(x)}, tmp_path / "d.ts")
    traced = torch.jit.load(str(path))
    x, t, estimate = torch.randn(2, 2, 8, 8, 4), torch.tensor([7, 90]), torch.randn(2, 2, 8, 8, 4)
    with torch.no_grad():
        assert torch.allclose(traced(x, t, estimate), net(x, t, self_condition=estimate), atol=1e-5)
        assert not torch.allclose(traced(x, t, estimate), traced(x, t, torch.zeros_like(x)), atol=1e-3)  # it is read

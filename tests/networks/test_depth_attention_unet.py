from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer, LatentDiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from common.networks import (
    NULL_LABEL,
    CodebookRangeAutoencoder,
    DepthAttentionUNet,
    depth_attention_unet,
)
from common.networks.depth_attention_unet import DepthAttention, DepthConvolution, SliceGroupNorm, SpatialAttention
from tests.helpers import tiny_vqgan


def small_unet(**kwargs) -> DepthAttentionUNet:
    settings = dict(in_channels=3, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    settings.update(kwargs)
    return DepthAttentionUNet(**settings)


@pytest.mark.parametrize("timesteps", [torch.tensor([7.0]), torch.tensor([3, 9]), torch.tensor(5)])
def test_output_shape_for_each_timestep_form(timesteps):
    net = small_unet(out_channels=2)
    x = torch.randn(2, 3, 8, 12, 5)
    out = net(x=x, timesteps=timesteps, context=None)
    assert out.shape == (2, 2, 8, 12, 5)
    assert torch.isfinite(out).all()


def test_timestep_changes_prediction():
    net = small_unet()
    x = torch.randn(1, 3, 8, 8, 4)
    # the output layer starts random, so different timesteps must give different predictions
    assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([200])))


@pytest.mark.parametrize("scheduler", [DDPMScheduler(num_train_timesteps=20), DDIMScheduler(num_train_timesteps=20)])
def test_samples_inside_monai_diffusion_inferer(scheduler):
    net = small_unet().eval()
    scheduler.set_timesteps(20 if isinstance(scheduler, DDPMScheduler) else 5)
    inferer = DiffusionInferer(scheduler)
    noise = torch.randn(2, 3, 8, 8, 4)
    sample = inferer.sample(input_noise=noise, diffusion_model=net, scheduler=scheduler, verbose=False)
    assert sample.shape == noise.shape and torch.isfinite(sample).all()
    # the training forward of the inferer calls the network with keyword x and per-sample timesteps
    pred = inferer(inputs=noise, diffusion_model=net, noise=torch.randn_like(noise), timesteps=torch.tensor([1, 15]))
    assert pred.shape == noise.shape


def test_samples_inside_latent_diffusion_inferer_with_wrapper():
    vqgan = tiny_vqgan().eval()
    autoencoder = CodebookRangeAutoencoder(vqgan)
    net = small_unet(in_channels=4).eval()
    scheduler = DDIMScheduler(num_train_timesteps=30)
    scheduler.set_timesteps(4)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=1.0)
    images = inferer.sample(
        input_noise=torch.randn(1, 4, 8, 8, 6), autoencoder_model=autoencoder, diffusion_model=net, verbose=False
    )
    assert images.shape == (1, 1, 16, 16, 12)
    # and its training forward: images are encoded by the wrapper, the denoiser predicts latent noise
    x = torch.randn(1, 1, 16, 16, 12)
    latent_noise = torch.randn(1, 4, 8, 8, 6)
    pred = inferer(x, autoencoder, net, noise=latent_noise, timesteps=torch.tensor([3]))
    assert pred.shape == latent_noise.shape


def _depth_influence(net: DepthAttentionUNet, k: int) -> torch.Tensor:
    """Per output slice, how much it changes when only input slice k changes."""
    x = torch.randn(1, 3, 8, 8, 6)
    x2 = x.clone()
    x2[..., k] += torch.randn_like(x2[..., k])
    with torch.no_grad():
        diff = (net(x2, torch.tensor([4])) - net(x, torch.tensor([4]))).abs()
    return diff.amax(dim=(0, 1, 2, 3))


@pytest.mark.parametrize("position", [False, True])
def test_without_depth_attention_slices_are_independent(position):
    net = small_unet(depth_attention=False, spatial_attention=True, depth_position_embedding=position).eval()
    if position:
        torch.nn.init.normal_(net.depth_position.weight)
    influence = _depth_influence(net, k=2)
    assert influence[2] > 1e-3
    others = torch.cat([influence[:2], influence[3:]])
    assert torch.all(others == 0), f"slices other than 2 changed: {influence.tolist()}"


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_volume_norm_is_group_norm_over_the_whole_volume(memory_format):
    norm = SliceGroupNorm(2, 4, volume_norm=True)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    volumes = torch.randn(3, 4, 5, 6, 7) * torch.linspace(0.5, 3, 7)  # (B, C, H, W, D), slices of different spread
    stack = volumes.permute(4, 0, 1, 2, 3).reshape(7 * 3, 4, 5, 6).contiguous(memory_format=memory_format)
    expected = F.group_norm(volumes, 2, norm.weight, norm.bias, norm.eps).permute(4, 0, 1, 2, 3).reshape(21, 4, 5, 6)
    assert torch.allclose(norm(stack, depth=7), expected, atol=1e-5)
    per_slice = SliceGroupNorm(2, 4, volume_norm=False)
    per_slice.load_state_dict(norm.state_dict())
    assert torch.allclose(per_slice(stack, depth=7), F.group_norm(stack, 2, norm.weight, norm.bias, norm.eps), atol=1e-6)
    assert not torch.allclose(per_slice(stack, depth=7), expected, atol=1e-2)


def test_volume_norm_lets_slices_see_each_other_but_not_other_volumes():
    net = small_unet(depth_attention=False, spatial_attention=True, volume_norm=True).eval()
    influence = _depth_influence(net, k=2)
    assert torch.all(influence > 1e-6), f"a volume-wide norm should carry slice 2 everywhere: {influence.tolist()}"
    x, t = torch.randn(2, 3, 8, 8, 4), torch.tensor([5, 200])
    with torch.no_grad():
        assert torch.allclose(net(x, t), torch.cat([net(x[:1], t[:1]), net(x[1:], t[1:])]), atol=1e-5)


def test_depth_attention_mixes_slices():
    net = small_unet(depth_attention=True).eval()
    for module in net.modules():  # the relative bias starts at zero; give it values so the test is generic
        if isinstance(module, DepthAttention):
            torch.nn.init.normal_(module.relative_bias.weight)
    influence = _depth_influence(net, k=2)
    assert torch.all(influence > 1e-6), f"depth attention should spread slice 2 everywhere: {influence.tolist()}"


def _reference_attention(attention: SpatialAttention | DepthAttention, x: torch.Tensor, depth: int | None) -> torch.Tensor:
    """Softmax attention written out with einsum on a depth-major slice stack (slice index d * B + b)."""
    n, _, h, w = x.shape
    heads, e = attention.num_heads, attention.head_channels
    normed = torch.nn.functional.group_norm(x, attention.norm.num_groups, attention.norm.weight, attention.norm.bias, attention.norm.eps)
    qkv = torch.einsum("nchw,oc->nhwo", normed, attention.to_qkv.weight).reshape(n, h, w, 3, heads, e)
    q, k, v = qkv.unbind(3)  # each (n, h, w, heads, e)
    if depth is None:  # tokens are the in-plane positions of one slice
        q, k, v = (t.reshape(n, h * w, heads, e) for t in (q, k, v))
        weights = torch.softmax(torch.einsum("nihe,njhe->nhij", q, k) / e**0.5, dim=-1)
        out = torch.einsum("nhij,njhe->nihe", weights, v)
    else:  # tokens are the slices at one in-plane position of one volume
        q, k, v = (t.reshape(depth, n // depth, h, w, heads, e) for t in (q, k, v))
        offsets = torch.arange(depth)[None, :] - torch.arange(depth)[:, None]
        index = offsets.clamp(-attention.max_distance, attention.max_distance) + attention.max_distance
        bias = attention.relative_bias.weight[index].permute(2, 0, 1)  # (heads, i, j)
        weights = torch.softmax(torch.einsum("ibxyhe,jbxyhe->bxyhij", q, k) / e**0.5 + bias, dim=-1)
        out = torch.einsum("bxyhij,jbxyhe->ibxyhe", weights, v)
    out = out.reshape(n, h, w, heads * e)
    return x + torch.einsum("nhwi,ci->nchw", out, attention.to_out.weight) + attention.to_out.bias[:, None, None]


@pytest.mark.parametrize("chunk_bytes", [None, 1, 5000])  # one piece; one at a time; uneven chunks (4+4+2, 10+10+4)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_attention_matches_reference_softmax_attention(memory_format, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:  # the CPU processes slices (spatial) or positions (depth) in chunks of this size
        monkeypatch.setattr(depth_attention_unet, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(1)
    for attention, depth in ((SpatialAttention(8, 2, 4, 4), None), (DepthAttention(8, 2, 4, 4, max_distance=3), 5)):
        torch.nn.init.normal_(attention.to_out.weight)
        if depth is not None:  # the bias starts at zero; clipped offsets (5 slices, max_distance 3) get tested too
            torch.nn.init.normal_(attention.relative_bias.weight)
        x = torch.randn(5 * 2, 8, 4, 3).contiguous(memory_format=memory_format)  # (D * B, C, H, W), B = 2, D = 5
        out = attention(x, depth=5)
        assert torch.allclose(out, _reference_attention(attention, x, depth), atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [None, 700])
def test_volumes_of_a_batch_stay_apart(chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(depth_attention_unet, "CPU_CHUNK_BYTES", chunk_bytes)
    net = small_unet(depth_position_embedding=True).eval()
    torch.nn.init.normal_(net.depth_position.weight)
    for module in net.modules():
        if isinstance(module, DepthAttention):
            torch.nn.init.normal_(module.relative_bias.weight)
    x, t = torch.randn(2, 3, 8, 8, 4), torch.tensor([5, 200])
    with torch.no_grad():
        together = net(x, t)
        apart = torch.cat([net(x[:1], t[:1]), net(x[1:], t[1:])])
    assert torch.allclose(together, apart, atol=1e-5)


def test_depth_position_embedding_tells_slices_apart():
    net = small_unet(depth_attention=False, depth_position_embedding=True).eval()
    x = torch.randn(1, 3, 8, 8, 1).expand(1, 3, 8, 8, 4).contiguous()  # four identical slices
    with torch.no_grad():
        assert torch.allclose(net(x, torch.tensor([3]))[..., 0], net(x, torch.tensor([3]))[..., 3])  # starts at zero
        torch.nn.init.normal_(net.depth_position.weight)
        out = net(x, torch.tensor([3]))
    assert not torch.allclose(out[..., 0], out[..., 3])


def test_position_channels_tell_identical_voxels_apart_and_trace():
    from common.networks.depth_attention_unet import _coordinates

    grid = _coordinates(torch.zeros(2, 5, 3, 4, 5))
    assert grid.shape == (2, 3, 3, 4, 5)
    assert torch.equal(grid[0, 0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))  # H runs from -1 to 1
    assert torch.allclose(grid[1, 2, 0, 0], torch.linspace(-1, 1, 5)) and (grid[:, 1, :, 0] == -1).all()
    net = small_unet(position_channels=True, depth_attention=False, spatial_attention=False).eval()
    assert net.init_conv.in_channels == 3 + 3
    x = torch.zeros(1, 3, 8, 8, 4)  # every voxel alike: only the coordinates can make the slices' outputs differ
    with torch.no_grad():
        out = net(x, torch.tensor([3]))
        assert not torch.allclose(out[..., 0], out[..., 3])
        traced = torch.jit.trace(net, (torch.randn(1, 3, 8, 8, 4), torch.tensor([3])))
        x, t = torch.randn(2, 3, 16, 8, 6), torch.tensor([3, 90])
        assert torch.allclose(traced(x, t), net(x, t), atol=1e-5)  # the grid follows the input's size
    plain = small_unet(depth_attention=False, spatial_attention=False).eval()
    with torch.no_grad():
        plain_out = plain(torch.zeros(1, 3, 8, 8, 4), torch.tensor([3]))
    assert torch.allclose(plain_out[..., 0], plain_out[..., 3])  # without them, slices alike are denoised alike
    patched = small_unet(position_channels=True, patch_size=2)
    assert patched.init_conv.in_channels == 3 * 8 + 3 and patched(torch.randn(1, 3, 8, 8, 4), torch.tensor([1])).shape == (1, 3, 8, 8, 4)
    with pytest.raises(ValueError, match="position_channels must be True or False, got 'yes'"):
        small_unet(position_channels="yes")


def test_overfits_one_batch():
    net = small_unet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, t, target = torch.randn(2, 3, 8, 8, 4), torch.tensor([5, 50]), torch.randn(2, 3, 8, 8, 4)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.l1_loss(net(x, t), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_argument_and_input_errors():
    with pytest.raises(ValueError, match="norm_groups"):
        DepthAttentionUNet(4, channels=(12, 24), norm_groups=8)
    with pytest.raises(ValueError, match="one entry per level"):
        DepthAttentionUNet(4, channels=(8, 16), spatial_attention=(True,))
    with pytest.raises(ValueError, match="True/False per level"):
        DepthAttentionUNet(4, channels=(8, 16), spatial_attention=["false", "true"])
    net = small_unet()
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 3, 7, 8, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 5, 8, 8, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"unconditional \(no class_counts\): context must be None"):
        net(torch.randn(1, 3, 8, 8, 4), torch.tensor([1]), context=torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="timesteps"):
        net(torch.randn(2, 3, 8, 8, 4), torch.tensor([1, 2, 3]))


def test_patches_fold_into_channels_and_the_prediction_unfolds():
    net = small_unet(patch_size=2, depth_attention=False, spatial_attention=True).eval()
    assert net.init_conv.in_channels == 3 * 8 and net.final_conv.out_channels == 3 * 8  # 2x2x2 patches of 3 channels
    x = torch.randn(2, 3, 16, 8, 6)
    assert net(x, torch.tensor([4])).shape == x.shape
    # without depth attention the network sees one patch slice at a time: input slice 2 is folded with slice 3 into
    # the second patch slice, so exactly output slices 2 and 3 change with it
    influence = _depth_influence(net, k=2)
    assert (influence[2:4] > 1e-3).all() and (torch.cat([influence[:2], influence[4:]]) == 0).all(), influence.tolist()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # MONAI's pixelshuffle converts a shape to int
@pytest.mark.parametrize("depth_kernel_size", [1, 3])
def test_a_patched_denoiser_traces_for_other_batch_and_volume_sizes(depth_kernel_size):
    net = small_unet(patch_size=2, depth_kernel_size=depth_kernel_size).eval()
    for name, weight in net.named_parameters():  # depth convolutions start at zero: give them values to trace
        if "depth_conv" in name:
            torch.nn.init.normal_(weight, std=0.1)
    with torch.no_grad():
        traced = torch.jit.trace(net, (torch.randn(1, 3, 8, 8, 4), torch.tensor([3])))
        x, t = torch.randn(2, 3, 16, 8, 6), torch.tensor([3, 90])
        assert torch.allclose(traced(x, t), net(x, t), atol=1e-5)


def test_patch_size_errors():
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match=f"patch_size must be a positive integer, got {bad!r}"):
            small_unet(patch_size=bad)
    net = small_unet(patch_size=2)  # two levels of patches of 2: H and W divisible by 4, D by 2
    with pytest.raises(ValueError, match="H and W must be divisible by 4 for 2 levels of patch size 2, got 6x8"):
        net(torch.randn(1, 3, 6, 8, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="D must be divisible by the patch size 2, got 5"):
        net(torch.randn(1, 3, 8, 8, 5), torch.tensor([1]))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_depth_convolution_is_a_convolution_along_depth_with_zero_padding(kernel_size):
    conv = DepthConvolution(4, kernel_size)
    torch.nn.init.normal_(conv.proj.weight)
    volumes = torch.randn(2, 4, 5, 3, 7)  # (B, C, H, W, D)
    stack = volumes.permute(4, 0, 1, 2, 3).reshape(7 * 2, 4, 5, 3).contiguous(memory_format=torch.channels_last)
    # the taps as a (kernel, 1, 1) Conv3d over (B, C, D, H, W): tap i of the projection is kernel position i
    weight = conv.proj.weight.view(kernel_size, 4, 4).permute(1, 2, 0)[..., None, None]
    expected = volumes.permute(0, 1, 4, 2, 3) + F.conv3d(volumes.permute(0, 1, 4, 2, 3), weight, padding=(kernel_size // 2, 0, 0))
    out = conv(stack, depth=7).reshape(7, 2, 4, 5, 3).permute(1, 2, 0, 3, 4)
    assert torch.allclose(out, expected, atol=1e-5)


def test_depth_convolution_starts_as_the_paper_and_then_mixes_neighbouring_slices_only():
    torch.manual_seed(0)
    paper = small_unet(depth_attention=False, spatial_attention=True).eval()
    torch.manual_seed(0)
    net = small_unet(depth_attention=False, spatial_attention=True, depth_kernel_size=3).eval()
    extra = {k for k in net.state_dict() if "depth_conv" in k}
    assert extra and all(k.endswith("depth_conv.proj.weight") for k in extra)
    net.load_state_dict(paper.state_dict(), strict=False)  # the zero-initialised depth convolutions aside
    x, t = torch.randn(1, 3, 8, 8, 6), torch.tensor([4])
    with torch.no_grad():
        assert torch.equal(net(x, t), paper(x, t))
    # it learns from zero: the weights get a gradient
    net(x, t).square().mean().backward()
    assert all(net.get_parameter(k).grad.abs().sum() > 0 for k in extra)
    for k in extra:
        torch.nn.init.normal_(net.get_parameter(k), std=0.3)
    # without depth attention only the depth convolutions carry slice 0 to the others: each of the seven residual
    # blocks one slice further, weaker with distance
    influence = _depth_influence(net, k=0)
    assert torch.all(influence > 1e-4), influence.tolist()
    assert influence[0] > influence[2] > influence[5], influence.tolist()


def test_depth_kernel_size_errors():
    for bad in (0, 2, True, 3.0):
        with pytest.raises(ValueError, match=f"depth_kernel_size must be a positive odd integer.*got {bad!r}"):
            small_unet(depth_kernel_size=bad)
        with pytest.raises(ValueError, match=f"kernel_size must be a positive odd integer, got {bad!r}"):
            DepthConvolution(4, bad)


def test_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch):
    monkeypatch.setattr(depth_attention_unet, "CPU_CHUNK_BYTES", 700)  # attention in uneven chunks too
    torch.manual_seed(0)
    plain = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    checkpointed = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4, use_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 4, 8, 8, 4), torch.tensor([3, 40])
    outputs = []
    for network in (plain, checkpointed):
        out = network(x, t)
        out.square().mean().backward()
        outputs.append((out.detach(), [p.grad.clone() for p in network.parameters()]))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outputs[0][1], outputs[1][1]))


@pytest.mark.parametrize("use_checkpointing", [False, True])
def test_bfloat16_autocast_option_runs_and_stays_close(use_checkpointing):
    torch.manual_seed(0)
    settings = dict(channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    reference = DepthAttentionUNet(4, **settings)
    network = DepthAttentionUNet(4, **settings, autocast_dtype="bfloat16", use_checkpointing=use_checkpointing)
    network.load_state_dict(reference.state_dict())
    x, t = torch.randn(1, 4, 8, 8, 4), torch.tensor([10])
    expected = reference(x, t)
    low = network(x, t)
    low.square().mean().backward()
    assert low.dtype == torch.float32
    assert torch.isfinite(low).all() and all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
    assert 0 < (low - expected).abs().mean() < 0.05 * expected.abs().mean()
    with pytest.raises(ValueError, match="autocast_dtype"):
        DepthAttentionUNet(4, **settings, autocast_dtype="float64")


def test_loads_weights_saved_with_1x1_convolution_projections():
    """Earlier versions projected with 1x1 Conv2d layers: their (out, in, 1, 1) weights still load, same outputs."""
    torch.manual_seed(0)
    net = small_unet(depth_position_embedding=True).eval()
    old_format = {k: v[:, :, None, None] if k.endswith(("to_qkv.weight", "to_out.weight")) else v for k, v in net.state_dict().items()}
    assert any(v.ndim == 4 and "to_qkv" in k for k, v in old_format.items())
    reloaded = small_unet(depth_position_embedding=True).eval()
    reloaded.load_state_dict(old_format)
    x, t = torch.randn(1, 3, 8, 8, 4), torch.tensor([9])
    with torch.no_grad():
        assert torch.equal(reloaded(x, t), net(x, t))


def test_a_class_conditional_denoiser_learns_its_labels_and_null_is_the_unconditional_model():
    torch.manual_seed(0)
    net = small_unet(class_counts=[2, 3])
    x, t = torch.randn(2, 3, 8, 8, 4), torch.tensor([5, 9])
    labels = torch.tensor([[0, 2], [1, NULL_LABEL]])
    assert not torch.allclose(net(x, t, context=labels), net(x, t))  # the labels move the prediction from the start
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.stack([torch.full((3, 8, 8, 4), 1.0), torch.full((3, 8, 8, 4), -1.0)])
    x_one = x[:1].expand(2, -1, -1, -1, -1)  # the same input: only the label tells the two targets apart
    for _ in range(60):
        optimiser.zero_grad()
        loss = F.mse_loss(net(x_one, t[:1], context=torch.tensor([[0, 0], [1, 0]])), target)
        loss.backward()
        optimiser.step()
    out = net(x_one, t[:1], context=torch.tensor([[0, 0], [1, 0]]))
    assert out[0].mean() > 0.5 and out[1].mean() < -0.5
    # no label (None, or every entry NULL_LABEL) is one and the same model
    null = torch.full((2, 2), NULL_LABEL)
    assert torch.equal(net(x, t, context=null), net(x, t))
    with pytest.raises(ValueError, match=r"label 3 of variable 1 \(sample 0\) is outside its 3 classes"):
        net(x, t, context=torch.tensor([[0, 3], [0, 0]]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor \(B, 2\)"):
        net(x, t, context=torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected labels for 2 volumes"):
        net(x, t, context=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        small_unet(class_counts=[1])


def test_an_unconditional_denoiser_has_the_state_dict_it_had():
    # checkpoints written before conditioning existed load unchanged: no new entry unless class_counts is set
    assert not any("class" in key for key in small_unet().state_dict())
    assert {k for k in small_unet(class_counts=[2]).state_dict() if "class" in k} == {"class_embedding.tables.0.weight"}


def test_the_prediction_at_chosen_voxels_is_the_full_predictions_there_and_its_gradient_reaches_the_network():
    net = DepthAttentionUNet(4, out_channels=10, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4)
    x, t = torch.randn(2, 4, 8, 8, 4), torch.tensor([3, 40])
    voxels = torch.stack([torch.randperm(256)[:20], torch.randperm(256)[:20]])
    chosen = net(x, t, voxels=voxels)
    assert chosen.shape == (2, 10, 20)
    full = net(x, t).flatten(2)
    assert torch.allclose(chosen, full.gather(2, voxels[:, None].expand(-1, 10, -1)), atol=1e-5)
    chosen.square().mean().backward()
    assert net.final_conv.weight.grad.abs().sum() > 0 and net.init_conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"voxels must index the 256 voxels of a \(8, 8, 4\) volume"):
        net(x, t, voxels=voxels + 250)
    with pytest.raises(ValueError, match=r"voxels must be integer indices \(B, N\) with B=2"):
        net(x, t, voxels=voxels[:1])
    patched = DepthAttentionUNet(4, channels=(8, 16), num_res_blocks=1, num_heads=2, head_channels=4, norm_groups=4, patch_size=2)
    with pytest.raises(ValueError, match="voxels needs patch_size 1"):
        patched(x, t, voxels=voxels)

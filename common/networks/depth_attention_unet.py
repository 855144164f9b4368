"""The Medical Diffusion denoiser: a 3D U-Net that works slice by slice and (by default) mixes slices only by attention.

Every convolution, normalisation and spatial attention acts on one depth slice at a time (kernels 3x3x1,
depth folded into the batch), and information moves along the depth axis only through the depth attention
layers, one sequence of slices per in-plane position (beyond the paper, ``depth_kernel_size`` adds a convolution
along depth to every residual block). Down- and up-sampling are in-plane; depth is never
resampled. This is the video-diffusion layout (Ho et al., "Video Diffusion Models") that Medical Diffusion
(Khader et al., Sci Rep 2023, Sec. 2.3 "Diffusion Models") adopts, in MONAI's (B, C, H, W, D) convention.

Internally the tensor is kept as a depth-major stack of 2D slices, (D * B, C, H, W) with slice d of volume b
at index d * B + b, in channels-last memory format. The 3x3x1 convolutions then run as 2D convolutions, the
attention projections read the feature maps in place as (tokens, channels) matrices, and both attentions find
their sequences (the positions of one slice; the slices at one position) as strided views of the projections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.utils import pixelshuffle, pixelunshuffle
from torch import nn
from torch.utils.checkpoint import checkpoint

from .class_embedding import ClassEmbedding

__all__ = ["DepthAttentionUNet"]


class SliceGroupNorm(nn.GroupNorm):
    """GroupNorm of a depth-major stack of slices (D * B, C, H, W), its statistics taken per slice or per volume.

    Per slice (``volume_norm=False``) it is ``nn.GroupNorm`` on the stack: every slice is normalised on its own, so
    how bright or how full a slice is relative to its neighbours must come back through the depth attention. Per
    volume (``volume_norm=True``) the statistics span all D slices of each volume, as ``nn.GroupNorm`` on the
    (B, C, D, H, W) tensor of the video-diffusion U-Net that Medical Diffusion's code uses (Ho et al., "Video
    Diffusion Models"; Khader et al., Sci Rep 2023). The weights are the same either way.
    """

    def __init__(self, num_groups: int, num_channels: int, volume_norm: bool = False) -> None:
        super().__init__(num_groups, num_channels)
        self.volume_norm = volume_norm

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        if not self.volume_norm:
            return super().forward(x)
        nd, channels, h, w = x.shape
        # each slice's per-channel mean and variance in one pass (float32, as autocast computes group_norm), then
        # pooled over the slices and the channels of each group of a volume: (D, B, groups, channels per group)
        var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0)
        shape = (depth, nd // depth, self.num_groups, channels // self.num_groups)
        mean, square = mean.view(shape), (var + mean**2).view(shape)
        group_mean = mean.mean(dim=(0, 3), keepdim=True)
        group_var = (square.mean(dim=(0, 3), keepdim=True) - group_mean**2).clamp_min(0)
        scale = torch.rsqrt(group_var + self.eps) * self.weight.view(1, 1, self.num_groups, -1)
        shift = self.bias.view(1, 1, self.num_groups, -1) - group_mean * scale
        scale, shift = (v.expand(shape).reshape(nd, channels, 1, 1).to(x.dtype) for v in (scale, shift))
        return torch.addcmul(shift, x, scale)  # one pass over x, keeping its memory format


def _check_odd(value: int, name: str, note: str = "") -> None:
    """``ValueError`` unless ``value`` is a positive odd integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer{note}, got {value!r}.")


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """Every voxel's H, W and D coordinate, from -1 to 1 across the volume, as 3 channels shaped like ``x`` (B, C, H,
    W, D) has them."""
    b, _, *size = x.shape
    axes = [torch.linspace(-1.0, 1.0, n, device=x.device, dtype=x.dtype) for n in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid[None].expand(b, *grid.shape)


class DepthConvolution(nn.Module):
    """A residual convolution along depth only (kernel ``kernel_size`` x 1 x 1) of a depth-major stack of slices.

    Not in the paper, whose slices mix only by attention: the factorised "(2+1)D" convolution of R(2+1)D (Tran et
    al., CVPR 2018) and Make-A-Video's pseudo-3D layers (Singer et al., ICLR 2023), a 2D convolution followed by a
    1D one across frames, here slices. It gives every block the neighbouring slices at the cost of ``kernel_size``
    1x1 convolutions, where depth attention starts out averaging all slices alike. Slices beyond the volume count
    as zeros. Its weights start at zero, so an untrained block is the paper's.

    The input is (D * B, C, H, W) in channels-last memory format; each offset's 1x1 projection is computed on
    every slice at once and the results are summed shifted along depth.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        _check_odd(kernel_size, "kernel_size")
        self.kernel_size = kernel_size
        self.radius = kernel_size // 2
        self.proj = nn.Linear(channels, channels * kernel_size, bias=False)  # a bias would be lost in the next GroupNorm
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        nd, channels, h, w = x.shape
        z = self.proj(_tokens(x)).view(depth, nd // depth, h, w, self.kernel_size, channels)
        pad = z.new_zeros((self.radius, *z.shape[1:]))
        z = torch.cat([pad, z, pad], dim=0)
        # output slice d takes tap i from slice d + i - radius, which sits at index d + i of the padded stack
        out = sum(z[i : i + depth, :, :, :, i] for i in range(self.kernel_size))
        return x + out.view(nd, h, w, channels).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """Two 3x3 in-plane convolutions with GroupNorm and SiLU; the timestep embedding scales and shifts the first.

    With ``depth_kernel_size`` above 1 a ``DepthConvolution`` follows the first convolution (not in the paper).
    """

    def __init__(
        self, in_channels: int, out_channels: int, time_dim: int, norm_groups: int, volume_norm: bool = False,
        depth_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.depth_conv = DepthConvolution(out_channels, depth_kernel_size) if depth_kernel_size > 1 else None
        self.norm1 = SliceGroupNorm(norm_groups, out_channels, volume_norm)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels * 2))
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = SliceGroupNorm(norm_groups, out_channels, volume_norm)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor, depth: int) -> torch.Tensor:
        scale, shift = self.time_proj(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(x)
        if self.depth_conv is not None:
            h = self.depth_conv(h, depth)
        h = self.norm1(h, depth)
        h = F.silu(h * (1 + scale) + shift)
        h = F.silu(self.norm2(self.conv2(h), depth))
        return h + self.skip(x)


CPU_CHUNK_BYTES = 4 * 2**20  # projections computed at once by an attention layer on the CPU


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as (N, H, W, C): a view, no copy, when ``x`` is in channels-last memory format."""
    return x.permute(0, 2, 3, 1)


def _cpu_chunk(x: torch.Tensor, count: int, bytes_each: int) -> int:
    """How many of ``count`` items to process at once: all on GPUs; on the CPU about ``CPU_CHUNK_BYTES`` worth.

    The attention layers are memory-bound on the CPU (short sequences, heads wider than the channels at the first
    level); chunks whose projections stay in cache made them about twice as fast on this project's CPU. Under
    ``torch.jit.trace`` and ``torch.compile`` everything goes in one piece, so a graph does not bake in chunks.
    """
    if x.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return count
    return max(1, min(count, CPU_CHUNK_BYTES // max(1, bytes_each)))


def _joined(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The chunks' results as one tensor, without a copy when there was one chunk."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _accept_conv_projections(state_dict: dict, prefix: str, *args) -> None:
    """Load-state hook: take the (out, in, 1, 1) weights of 1x1-convolution projections, as saved by earlier versions."""
    for name in ("to_qkv.weight", "to_out.weight"):
        weight = state_dict.get(prefix + name)
        if weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1):
            state_dict[prefix + name] = weight.flatten(1)


class _Attention(nn.Module):
    """Pre-norm, query/key/value and output projections over the channel axis, shared by both attentions.

    Weights saved by earlier versions, whose projections were 1x1 convolutions, load too.
    """

    def __init__(self, channels: int, num_heads: int, head_channels: int, norm_groups: int, volume_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = head_channels
        inner = num_heads * head_channels
        self.norm = SliceGroupNorm(norm_groups, channels, volume_norm)
        self.to_qkv = nn.Linear(channels, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, channels)
        self._register_load_state_dict_pre_hook(_accept_conv_projections)


class SpatialAttention(_Attention):
    """Multi-head self-attention over the in-plane positions of each depth slice (pre-norm, residual).

    Works on channels-last slices: the projections are matrix multiplies over the channel axis, and queries,
    keys and values reach the fused kernel (``scaled_dot_product_attention``) as strided views, without copies.
    On the CPU the slices are processed a few at a time (see ``_cpu_chunk``).
    """

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = _tokens(self.norm(x, depth))
        chunk = _cpu_chunk(x, n, h * w * self.to_qkv.out_features * x.element_size())
        out = _joined([self._attend(tokens[i : i + chunk]) for i in range(0, n, chunk)], dim=0)
        return x + out.permute(0, 3, 1, 2)

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention within each slice of ``tokens`` (slices, H, W, channels), projections included."""
        n, h, w, _ = tokens.shape
        qkv = self.to_qkv(tokens).view(n, h * w, 3, self.num_heads, self.head_channels)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, h*w, head_channels)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(n, h, w, self.num_heads * self.head_channels))


class DepthAttention(_Attention):
    """Multi-head self-attention along the depth axis at every in-plane position, with a relative position bias.

    The bias is a learned value per head and per slice offset, offsets clipped to ``max_distance``, so one
    network handles any depth.

    The input is a depth-major stack of channels-last slices, (D * B, C, H, W), so the sequences of slices are
    strided views of the projection's output. The attention itself is written out (two batched matrix
    multiplies and a softmax) rather than fused: the learned bias needs its gradient, which PyTorch's fused
    kernels do not return, and at the paper's depths (8 to 32 slices) the fused CPU kernel measured no faster.
    On the CPU the in-plane positions are processed a chunk at a time (see ``_cpu_chunk``).
    """

    def __init__(
        self, channels: int, num_heads: int, head_channels: int, norm_groups: int, max_distance: int = 32,
        volume_norm: bool = False,
    ) -> None:
        super().__init__(channels, num_heads, head_channels, norm_groups, volume_norm)
        self.max_distance = max_distance
        self.relative_bias = nn.Embedding(2 * max_distance + 1, num_heads)
        nn.init.zeros_(self.relative_bias.weight)

    def position_bias(self, depth: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias of shape (heads, depth, depth)."""
        pos = torch.arange(depth, device=device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.relative_bias(offset).permute(2, 0, 1).to(dtype)

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        nd, channels, h, w = x.shape
        positions = nd // depth * h * w  # B * H * W sequences of slices
        tokens = _tokens(self.norm(x, depth)).reshape(depth, positions, channels)
        bias = self.position_bias(depth, x.device, x.dtype)
        chunk = _cpu_chunk(x, positions, depth * self.to_qkv.out_features * x.element_size())
        out = _joined([self._attend(tokens[:, i : i + chunk], bias) for i in range(0, positions, chunk)], dim=1)
        return x + out.view(nd, h, w, channels).permute(0, 3, 1, 2)

    def _attend(self, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention along the first axis of ``tokens`` (depth, positions, channels), projections included."""
        depth, positions, _ = tokens.shape
        qkv = self.to_qkv(tokens).view(depth, positions, 3, self.num_heads, self.head_channels)
        q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # each (positions, heads, depth, head_channels)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_channels**-0.5 + bias.to(q.dtype)
        out = torch.matmul(scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype), v)  # float32 under autocast too
        return self.to_out(out.permute(2, 0, 1, 3).reshape(depth, positions, self.num_heads * self.head_channels))


class AttentionPair(nn.Module):
    """Spatial attention within slices followed by depth attention across slices; either may be switched off."""

    def __init__(
        self,
        channels: int,
        spatial: bool,
        depth: bool,
        num_heads: int,
        head_channels: int,
        norm_groups: int,
        max_distance: int,
        volume_norm: bool = False,
    ) -> None:
        super().__init__()
        self.spatial = SpatialAttention(channels, num_heads, head_channels, norm_groups, volume_norm) if spatial else None
        self.depth = (
            DepthAttention(channels, num_heads, head_channels, norm_groups, max_distance, volume_norm) if depth else None
        )

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        if self.spatial is not None:
            x = self.spatial(x, depth)
        if self.depth is not None:
            x = self.depth(x, depth)
        return x


class DepthAttentionUNet(nn.Module):
    """Denoising U-Net of Medical Diffusion (Khader et al.) for latents of layout (B, C, H, W, D).

    It is called like MONAI's ``DiffusionModelUNet`` (``net(x, timesteps, context=None)``), so it works inside
    ``DiffusionInferer`` and ``LatentDiffusionInferer`` unchanged. A class-conditional one (``class_counts``) takes
    its labels as ``context``: what those inferers pass as ``condition`` / ``conditioning`` (mode "crossattn").

    Args:
        in_channels: channels of the noisy input (the VQ-GAN's embedding dimension, 8 in the paper).
        out_channels: channels of the predicted noise; defaults to ``in_channels``.
        channels: widths of the resolution levels; the paper uses ``base * (1, 2, 4, 8)`` with base 32 or 64.
            Each level after the first halves H and W.
        num_res_blocks: residual blocks per level, on the way down and on the way up (where the first of them
            also takes the skip connection).
        spatial_attention: per level, whether to attend within each slice. The paper uses linear attention at
            every level; exact softmax attention at the full-resolution level costs several times the rest of
            the network (H*W tokens per slice), so the default (``None``) attends at every level but the first.
            The middle block always attends within slices.
        depth_attention: per level, whether to attend along the depth axis (the paper: every level). The input
            and middle blocks always carry depth attention unless ``depth_attention`` is all False.
        num_heads: attention heads.
        head_channels: channels per attention head.
        norm_groups: GroupNorm groups; must divide every width.
        volume_norm: take every GroupNorm's statistics over the whole volume, as the paper's code does (its
            video-diffusion U-Net normalises the (B, C, D, H, W) tensor), instead of over each slice (False, this
            implementation's layout; see ``SliceGroupNorm``). Same weights either way; it changes the outputs, so
            it defines the model.
        max_distance: largest slice offset with its own relative position bias.
        depth_position_embedding: add a sinusoidal embedding of each slice's index to that slice's timestep
            embedding. Not in the paper: without it, nothing but the depth attention's relative bias tells the
            network where a slice lies in the volume, and short training can place anatomy shifted or wrapped
            along depth. Slices still do not mix outside the depth attention. Its projection starts at zero, so
            an untrained network is the paper's.
        use_checkpointing: recompute each residual block and attention pair in the backward pass instead of
            keeping its activations (``torch.utils.checkpoint``): less memory for about a third more time in
            training; the results are the same.
        autocast_dtype: run the forward pass under ``torch.autocast`` with this dtype (``"bfloat16"`` or
            ``"float16"``) on the input's device, and return the input's dtype. MONAI's trainers autocast on CUDA
            only; this also gives bfloat16 on CPUs, where it made a training step 15-40% faster and needed 0.6-0.8
            of the memory here. Changes results by rounding, so it is off (``None``) by default.
        class_counts: for a class-conditional denoiser (not in the paper), the number of classes of each labelled
            variable; its labels, an integer tensor (B, variables) with ``NULL_LABEL`` for "not given", are summed
            into the timestep embedding (``ClassEmbedding``). None (the paper's): unconditional.
        depth_kernel_size: with an odd value above 1, a convolution along depth of that many slices follows the first
            convolution of every residual block (``DepthConvolution``), so neighbouring slices mix in every block and
            not only through attention. Not in the paper (1, its setting): the (2+1)D convolution of video models.
            It defines the model.
        patch_size: fold each ``patch_size``-cube of the input into channels before the first convolution (pixel
            unshuffle) and unfold the prediction after the last, so the whole U-Net runs at 1 / ``patch_size`` of
            the latent's size along every axis, with ``in_channels * patch_size**3`` channels in and out. Not in
            the paper (1, its setting): the patching of simple diffusion (Hoogeboom et al., ICML 2023) and DiT
            (Peebles and Xie, ICCV 2023), which makes a large latent cost a small one's iterations.
        position_channels: give the first convolution three more input channels holding every voxel's H, W and D
            coordinate, from -1 to 1 across the volume (CoordConv, Liu et al., NeurIPS 2018); with ``patch_size``
            above 1, every patch's. Not in the paper
            (False, its setting): its convolutions and attention see no absolute position but what the zero
            padding at the borders tells them, where in registered volumes (a brain in a fixed frame) the anatomy
            at a place is largely fixed by the place. It defines the model (the first convolution's weights). At
            64^3 it brought no anatomy and learned the outline slower (``benchmarks/convergence_64_levers.md``).
        self_conditioning: take ``in_channels`` more input channels holding an estimate of the clean latent
            (``forward``'s ``self_condition``; zeros when none is given): self-conditioning (Chen et al., "Analog
            Bits", ICLR 2023; used for categorical data by Dieleman et al., 2022), where the denoiser is fed its
            own estimate of the step before (``common.sampling.SelfConditionedDenoiser``; in training, its own
            estimate of the same input half of the time, ``common.engines.SampledVoxelsInferer``). Not in the
            paper (False, its setting). It defines the model (the first convolution's weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_blocks: int = 2,
        spatial_attention: Sequence[bool] | bool | None = None,
        depth_attention: Sequence[bool] | bool = True,
        num_heads: int = 8,
        head_channels: int = 32,
        norm_groups: int = 8,
        volume_norm: bool = False,
        max_distance: int = 32,
        depth_position_embedding: bool = False,
        use_checkpointing: bool = False,
        autocast_dtype: str | torch.dtype | None = None,
        class_counts: Sequence[int] | None = None,
        patch_size: int = 1,
        depth_kernel_size: int = 1,
        position_channels: bool = False,
        self_conditioning: bool = False,
    ) -> None:
        super().__init__()
        levels = len(channels)
        if levels < 1:
            raise ValueError("channels must name at least one level.")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
        _check_odd(depth_kernel_size, "depth_kernel_size", " (1: no depth convolution)")
        if not isinstance(position_channels, bool):
            raise ValueError(f"position_channels must be True or False, got {position_channels!r}.")
        if not isinstance(self_conditioning, bool):
            raise ValueError(f"self_conditioning must be True or False, got {self_conditioning!r}.")
        if any(c % norm_groups for c in channels):
            raise ValueError(f"norm_groups={norm_groups} must divide every entry of channels={tuple(channels)}.")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be at least 1, got {num_res_blocks}.")
        if spatial_attention is None:
            spatial_attention = [level > 0 for level in range(levels)]
        if isinstance(autocast_dtype, str):
            autocast_dtype = getattr(torch, autocast_dtype, autocast_dtype)
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {autocast_dtype!r}.")
        spatial = self._per_level(spatial_attention, levels, "spatial_attention")
        depth = self._per_level(depth_attention, levels, "depth_attention")
        use_depth = any(depth)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.channels = tuple(channels)
        self.patch_size = patch_size
        self.position_channels = position_channels
        self.self_conditioning = self_conditioning
        self.spatial_factor = 2 ** (levels - 1) * patch_size
        self.use_checkpointing = use_checkpointing
        self.autocast_dtype = autocast_dtype

        time_dim = channels[0] * 4
        self.time_mlp = nn.Sequential(
            nn.Linear(channels[0], time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.depth_position = None
        if depth_position_embedding:
            self.depth_position = nn.Linear(channels[0], time_dim)
            nn.init.zeros_(self.depth_position.weight)
            nn.init.zeros_(self.depth_position.bias)
        self.class_embedding = None if class_counts is None else ClassEmbedding(class_counts, time_dim)
        attn_args = dict(num_heads=num_heads, head_channels=head_channels, norm_groups=norm_groups, max_distance=max_distance,
                         volume_norm=volume_norm)
        block_args = dict(time_dim=time_dim, norm_groups=norm_groups, volume_norm=volume_norm, depth_kernel_size=depth_kernel_size)

        inputs = in_channels * (1 + self_conditioning) * patch_size**3 + 3 * position_channels
        self.init_conv = nn.Conv2d(inputs, channels[0], 7, padding=3)
        self.init_attention = AttentionPair(channels[0], spatial=False, depth=use_depth, **attn_args)

        self.down_blocks = nn.ModuleList()
        self.down_attention = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, width in enumerate(channels):
            self.down_blocks.append(
                nn.ModuleList(ResidualBlock(width, width, **block_args) for _ in range(num_res_blocks))
            )
            self.down_attention.append(AttentionPair(width, spatial[level], depth[level], **attn_args))
            last = level == levels - 1
            self.downsamplers.append(nn.Identity() if last else nn.Conv2d(width, channels[level + 1], 4, 2, 1))

        mid = channels[-1]
        self.mid_block1 = ResidualBlock(mid, mid, **block_args)
        self.mid_attention = AttentionPair(mid, spatial=True, depth=use_depth, **attn_args)
        self.mid_block2 = ResidualBlock(mid, mid, **block_args)

        self.up_blocks = nn.ModuleList()
        self.up_attention = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(levels)):
            width = channels[level]
            self.up_blocks.append(
                nn.ModuleList(
                    ResidualBlock(width * 2 if i == 0 else width, width, **block_args)
                    for i in range(num_res_blocks)
                )
            )
            self.up_attention.append(AttentionPair(width, spatial[level], depth[level], **attn_args))
            self.upsamplers.append(
                nn.ConvTranspose2d(width, channels[level - 1], 4, 2, 1) if level else nn.Identity()
            )

        self.final_block = ResidualBlock(channels[0] * 2, channels[0], **block_args)
        self.final_conv = nn.Conv2d(channels[0], self.out_channels * patch_size**3, 1)

    @staticmethod
    def _per_level(value: Sequence[bool] | bool, levels: int, name: str) -> tuple[bool, ...]:
        if isinstance(value, bool):
            return (value,) * levels
        value = tuple(value)
        if not all(isinstance(v, bool) for v in value):
            raise ValueError(
                f"{name} must hold True/False per level, got {value!r} "
                "(on the command line write [False,True], which fire reads as booleans)."
            )
        if len(value) != levels:
            raise ValueError(f"{name} needs one entry per level ({levels}), got {len(value)}.")
        return value

    def _check_input(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is not None and self.class_embedding is None:
            raise ValueError("this DepthAttentionUNet is unconditional (no class_counts): context must be None.")
        if x.ndim != 5:
            raise ValueError(f"expected x of shape (B, C, H, W, D), got shape {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}.")
        h, w, depth = x.shape[2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(
                f"H and W must be divisible by {self.spatial_factor} for {len(self.channels)} levels"
                + (f" of patch size {self.patch_size}" if self.patch_size > 1 else "") + f", got {h}x{w}."
            )
        if depth % self.patch_size:
            raise ValueError(f"D must be divisible by the patch size {self.patch_size}, got {depth}.")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        if timesteps.ndim != 1 or timesteps.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"timesteps must have shape (1,) or (B,)=({x.shape[0]},), got {tuple(timesteps.shape)}.")
        return timesteps.expand(x.shape[0])

    def _run(self, module: nn.Module, *args) -> torch.Tensor:
        """``module(*args)``, recomputed in the backward pass when checkpointing in training."""
        if self.use_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, voxels: torch.Tensor | None = None,
        self_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``x`` (B, C, H, W, D) at ``timesteps`` (shape (1,) or (B,)); a class-conditional
        denoiser reads its labels (B, variables) from ``context``, None giving no label (the unconditional model).

        ``voxels`` (B, N), flat indices into each volume's H x W x D grid (``x[b, :].flatten(1)``'s order): the
        prediction (B, out_channels, N) at those voxels only, the last 1x1 projection skipped elsewhere. A code
        classifier's training takes its cross entropy at a sample of voxels this way, without the logits of every
        code at every voxel (``common.engines.LatentDiffusionPrepareBatch``'s ``code_voxels``). ``patch_size`` 1 only.

        ``self_condition`` (B, C, H, W, D), with ``self_conditioning``: an estimate of the clean latent, read beside
        ``x`` (None: zeros, no estimate yet).
        """
        timesteps = self._check_input(x, timesteps, context)
        if voxels is not None:
            self._check_voxels(x, voxels)
        x = self._with_self_condition(x, self_condition)
        if self.autocast_dtype is None:
            return self._patched(x, timesteps, context, voxels)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self._patched(x, timesteps, context, voxels).to(x.dtype)

    def _with_self_condition(self, x: torch.Tensor, self_condition: torch.Tensor | None) -> torch.Tensor:
        """``x`` with the clean-latent estimate (zeros for None) stacked behind its channels, for a self-conditioned
        network; ``x`` itself otherwise."""
        if not self.self_conditioning:
            if self_condition is not None:
                raise ValueError("this DepthAttentionUNet was built without self_conditioning: self_condition must be None.")
            return x
        if self_condition is None:
            return torch.cat([x, torch.zeros_like(x)], dim=1)
        if self_condition.shape != x.shape:
            raise ValueError(f"self_condition must have the shape of x {tuple(x.shape)}, got {tuple(self_condition.shape)}.")
        return torch.cat([x, self_condition.to(x.dtype)], dim=1)

    def _check_voxels(self, x: torch.Tensor, voxels: torch.Tensor) -> None:
        if self.patch_size != 1:
            raise ValueError(f"voxels needs patch_size 1 (the prediction of single voxels), got patch_size {self.patch_size}.")
        if voxels.ndim != 2 or voxels.shape[0] != x.shape[0] or voxels.dtype != torch.long:
            raise ValueError(f"voxels must be integer indices (B, N) with B={x.shape[0]}, got {voxels.dtype} {tuple(voxels.shape)}.")
        if voxels.numel() and not 0 <= int(voxels.min()) <= int(voxels.max()) < x.shape[2:].numel():
            raise ValueError(f"voxels must index the {x.shape[2:].numel()} voxels of a {tuple(x.shape[2:])} volume.")

    def _patched(
        self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None, voxels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``_denoise`` on the input folded into patches (``patch_size``), the prediction unfolded."""
        if self.patch_size == 1:
            return self._denoise(x, timesteps, labels, voxels)
        out = self._denoise(pixelunshuffle(x, 3, self.patch_size), timesteps, labels)
        return pixelshuffle(out, 3, self.patch_size)

    def _denoise(
        self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None, voxels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w, depth = x.shape
        # slices are stacked depth-major, (D * B, C, H, W) with index d * B + b, in channels-last memory format:
        # the 3x3x1 convolutions run as 2D ones and both attentions read their sequences as strided views
        t = self.time_mlp(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))
        if self.class_embedding is not None:
            labels = self.class_embedding.null_labels(b, x.device) if labels is None else torch.as_tensor(labels, device=x.device)
            if labels.shape[:1] != (b,):
                raise ValueError(f"expected labels for {b} volumes (B, variables), got shape {tuple(labels.shape)}.")
            t = t + self.class_embedding(labels).to(t.dtype)
        t = t.repeat(depth, 1)
        if self.depth_position is not None:
            slices = get_timestep_embedding(torch.arange(depth, device=x.device), self.channels[0]).to(x.dtype)
            t = t + self.depth_position(slices).repeat_interleave(b, dim=0)

        if self.position_channels:
            x = torch.cat([x, _coordinates(x)], dim=1)
        hidden = x.permute(4, 0, 1, 2, 3).reshape(depth * b, x.shape[1], h, w)
        hidden = hidden.contiguous(memory_format=torch.channels_last)
        hidden = self._run(self.init_attention, self.init_conv(hidden), depth)
        stem = hidden
        skips = []
        for blocks, attention, down in zip(self.down_blocks, self.down_attention, self.downsamplers):
            for block in blocks:
                hidden = self._run(block, hidden, t, depth)
            hidden = self._run(attention, hidden, depth)
            skips.append(hidden)
            hidden = down(hidden)

        hidden = self._run(self.mid_block1, hidden, t, depth)
        hidden = self._run(self.mid_attention, hidden, depth)
        hidden = self._run(self.mid_block2, hidden, t, depth)

        for blocks, attention, up in zip(self.up_blocks, self.up_attention, self.upsamplers):
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            for block in blocks:
                hidden = self._run(block, hidden, t, depth)
            hidden = up(self._run(attention, hidden, depth))

        hidden = self.final_block(torch.cat([hidden, stem], dim=1), t, depth)
        if voxels is not None:  # the 1x1 projection at the chosen voxels only
            features = hidden.reshape(depth, b, hidden.shape[1], h, w).permute(1, 2, 3, 4, 0).reshape(b, hidden.shape[1], -1)
            chosen = features.gather(2, voxels[:, None].expand(-1, features.shape[1], -1))
            weight = self.final_conv.weight[:, :, 0, 0]
            return torch.einsum("bcn,oc->bon", chosen, weight.to(chosen.dtype)) + self.final_conv.bias[:, None].to(chosen.dtype)
        out = self.final_conv(hidden)
        return out.reshape(depth, b, out.shape[1], h, w).permute(1, 2, 3, 4, 0)

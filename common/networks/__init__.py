"""Networks that MONAI lacks: the depth-attention denoiser, the VQ-GAN and its codebook."""

from .depth_attention_unet import DepthAttentionUNet
from .quantizer import CodebookQuantizer
from .vqgan import VQGAN

__all__ = ["CodebookQuantizer", "DepthAttentionUNet", "VQGAN"]

"""Networks that MONAI lacks: the depth-attention denoiser, the VQ-GAN with its codebook, the codebook-range
latent wrapper that lets MONAI's latent diffusion inferer train and sample on the VQ-GAN's latents, and (beside
MONAI's schedulers, as ``monai.networks.schedulers`` keeps them) the rectified-flow scheduler the bundles use."""

from .class_embedding import NULL_LABEL, ClassEmbedding
from .clean_estimate import clean_estimate, clean_estimate_line, noising_line
from .code_likelihood import code_log_likelihood
from .codebook_range import LATENT_SCALINGS, CodebookRangeAutoencoder, LatentScale
from .depth_attention_unet import DepthAttentionUNet
from .expected_codes import expected_codes
from .image_size import check_image_size, size_multiple
from .quantizer import CodebookQuantizer
from .rectified_flow import RECTIFIED_FLOW, RectifiedFlowScheduler
from .vqgan import VQGAN

__all__ = [
    "LATENT_SCALINGS", "NULL_LABEL", "RECTIFIED_FLOW", "ClassEmbedding", "CodebookQuantizer", "CodebookRangeAutoencoder",
    "DepthAttentionUNet", "LatentScale", "RectifiedFlowScheduler", "VQGAN", "check_image_size", "clean_estimate",
    "clean_estimate_line", "code_log_likelihood", "expected_codes", "noising_line", "size_multiple",
]

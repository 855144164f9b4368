"""The two training stages of Medical Diffusion on MONAI's ignite engines: the VQ-GAN (``VQGANTrainer``) and the
latent DDPM (MONAI's ``SupervisedTrainer`` with ``LatentDiffusionPrepareBatch``). Med-DDPM's batches are in
``common.med_ddpm``; both learn the target their scheduler's ``prediction_type`` names (``PredictionTargetPrepareBatch``).
A code-classifying denoiser's cross entropy can be taken at sampled voxels (``SampledVoxelsInferer``); each training
volume can be encoded once (``LatentCache``)."""

from .latent_cache import LatentCache
from .latent_diffusion import LatentDiffusionPrepareBatch
from .prediction_target import PREDICTION_TYPES, PredictionTargetPrepareBatch
from .sampled_voxels import SampledVoxelsInferer
from .vqgan_trainer import VQGANTrainer

__all__ = ["PREDICTION_TYPES", "LatentCache", "LatentDiffusionPrepareBatch", "PredictionTargetPrepareBatch", "SampledVoxelsInferer", "VQGANTrainer"]


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

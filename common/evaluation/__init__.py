"""Does a set of synthetic volumes look real, is it diverse, and does it copy a patient?

``metrics`` holds the measures (3D MS-SSIM diversity, histogram distances, MMD, FID on MedicalNet features, slice
consistency, reconstruction PSNR/SSIM/MS-SSIM), ``audit`` the memorisation audit (each sample's nearest real
volume), ``pictures`` the PNGs, ``class_consistency`` whether samples show the class asked for, ``SyntheticEvaluationBase`` what every evaluator shares, and ``SyntheticDataEvaluator`` the
evaluation behind the latent bundles' ``evaluate.json``. Med-DDPM's evaluator is ``common.med_ddpm``'s.
"""

from . import audit, metrics, pictures
from .base import SyntheticEvaluationBase
from .class_consistency import IntensityProfileClassifier, NearestClassMedian
from .synthetic import SyntheticDataEvaluator

__all__ = ["IntensityProfileClassifier", "NearestClassMedian", "SyntheticEvaluationBase", "SyntheticDataEvaluator", "audit", "metrics", "pictures"]


def __getattr__(name: str):
    """Names that moved out of this module in release 0.2 still resolve, with a ``FutureWarning``."""
    from common._deprecated import moved_attribute

    return moved_attribute(__name__, name)

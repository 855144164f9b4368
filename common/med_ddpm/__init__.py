"""Med-DDPM (Dorjsembe et al., "Conditional Diffusion Models for Semantic 3D Medical Image Synthesis", Sec. II): a
pixel-space 3D DDPM conditioned on a label mask, which turns masks into realistic image/label pairs.

Its pieces: ``ConcatConditionPrepareBatch`` (training batches with the mask as extra channels, for MONAI's
``SupervisedTrainer``), ``MaskConditionedSampler`` (images for given masks, written as ready pairs),
``MaskConditionedEvaluator`` and ``segmentation_utility`` (its evaluation, with the segmentation utility check). Its data
reader is ``common.data.paired_datalist`` and its label transform ``common.data.RemapLabelsd``; the network is
MONAI's ``DiffusionModelUNet``. The bundle is ``bundles/brain_tumor_semantic``.
"""

from . import segmentation_utility
from .evaluation import MaskConditionedEvaluator, classes_of
from .prepare_batch import ConcatConditionPrepareBatch
from .sampler import MaskConditionedSampler

__all__ = ["ConcatConditionPrepareBatch", "MaskConditionedEvaluator", "MaskConditionedSampler", "classes_of", "segmentation_utility"]

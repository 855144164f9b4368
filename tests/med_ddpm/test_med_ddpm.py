"""Label remapping, the segmentation utility check and the mask-conditioned evaluator on small known data."""

from __future__ import annotations

import json

import pytest
import torch
from monai.data import Dataset, MetaTensor
from monai.networks.nets import DiffusionModelUNet
from monai.networks.utils import one_hot

from common.data import DatasetError, RemapLabelsd
from common.med_ddpm import MaskConditionedEvaluator, MaskConditionedSampler, classes_of
from common.med_ddpm.segmentation_utility import segmentation_dice, train_segmentation
from common.sampling import make_sampling_scheduler

SIZE = 32


def _labels(centre: int) -> torch.Tensor:
    """(1, 32, 32, 32) classes: a head ball (1) with a tumour cube (2) at ``centre`` along the first axis."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE)] * 3, indexing="ij")).float()
    labels = ((grid - 15.5).square().sum(0).sqrt() < 14).long()
    labels[centre - 3 : centre + 3, 13:19, 13:19] = 2
    return labels[None]


def _image(labels: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (labels.float() - 1) * 0.9 + 0.05 * torch.randn(labels.shape, generator=generator)


def test_labels_are_mapped_and_unexpected_values_named():
    label = MetaTensor(torch.tensor([[[[0.0, 1, 2, 4]]]]), meta={"filename_or_obj": "case.nii.gz"})
    image = torch.tensor([[[[9.0, 9, 9, 9]]]])
    out = RemapLabelsd("label", {"1": 1, "2": 2, "4": 3}, num_classes=4, foreground_class=4)({"label": label, "image": image})
    assert out["label"].tolist() == [[[[4.0, 1.0, 2.0, 3.0]]]] and out["label"].meta["filename_or_obj"] == "case.nii.gz"
    with pytest.raises(DatasetError, match=r"case.nii.gz: label values \[4.0\] are not in the expected label set \[1, 2\]"):
        RemapLabelsd("label", {"1": 1, "2": 2}, num_classes=2)({"label": label})
    with pytest.raises(ValueError, match="classes 1..2"):
        RemapLabelsd("label", {"1": 3}, num_classes=2)
    onehot = one_hot(torch.tensor([[[[0, 1, 2]]]]), 3, dim=0)[1:]
    assert classes_of(onehot).tolist() == [[[[0, 1, 2]]]]


def test_a_segmentation_network_learns_pairs_where_the_label_decides_the_intensity():
    pairs = [(_image(_labels(c), c), _labels(c)) for c in (8, 12, 16, 20, 24)]
    network = train_segmentation(pairs[:4], num_classes=2, epochs=30, batch_size=2, lr=0.01)
    head, tumour = segmentation_dice(network, pairs[4:], num_classes=2)
    assert head > 0.9 and tumour > 0.7


def test_the_evaluator_writes_every_metric(tmp_path):
    real = [{"image": _image(_labels(c), c), "label": one_hot(_labels(c)[None], 3, dim=1)[0, 1:].float()} for c in (6, 10, 14, 18, 22, 26)]
    network = DiffusionModelUNet(3, 3, 1, channels=(8, 8), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4)
    sampler = MaskConditionedSampler(
        network, make_sampling_scheduler(10, 2), [], read_mask=None, num_classes=2, image_size=(SIZE,) * 3,
        spacing=(1.0,) * 3, image_channels=1, output_dir=tmp_path, verbose=False,
    )
    evaluator = MaskConditionedEvaluator(
        sampler, Dataset(real), tmp_path / "evaluation", num_classes=2, num_masks=4, samples_for_one_mask=3,
        heldout_fraction=0.34, utility_epochs=2,
    )
    result = evaluator.run()
    written = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (result["masks"], result["test_pairs"]) == (4, 2)
    assert 0 <= result["diversity_ms_ssim"]["synthetic_one_mask"] <= 1 and 0 <= result["diversity_ms_ssim"]["real_different_patients"] <= 1
    real_means = result["class_mean_intensity"]["real"]
    assert real_means[0] < real_means[1] < real_means[2]  # the real data follow their labels
    assert len(result["memorisation_audit"]["samples"]) == 4 and result["memorisation_audit"]["near_copies"] == []
    utility = result["segmentation_utility"]
    assert len(utility["trained_on_synthetic"]["dice_per_class"]) == 2 and len(utility["trained_on_real"]["dice_per_class"]) == 2
    for picture in ("masks_real_synthetic", "one_mask_diversity"):
        assert (tmp_path / "evaluation" / f"{picture}.png").stat().st_size > 1000


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_mask_conditioned_target_is_what_the_scheduler_predicts(prediction_type):
    from monai.networks.schedulers import DDPMScheduler

    from common.med_ddpm import ConcatConditionPrepareBatch

    scheduler = DDPMScheduler(num_train_timesteps=250, schedule="cosine", prediction_type=prediction_type)
    images, labels = torch.randn(3, 1, 8, 8, 8), torch.rand(3, 2, 8, 8, 8).round()
    inputs, target, _, kwargs = ConcatConditionPrepareBatch(250, scheduler=scheduler)({"image": images, "label": labels})
    noise, timesteps = kwargs["noise"], kwargs["timesteps"]
    alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": images, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * images}
    assert torch.allclose(target, expected[prediction_type], atol=1e-6)
    assert torch.equal(kwargs["condition"], labels) and kwargs["mode"] == "concat" and torch.equal(inputs, images)
    with pytest.raises(ValueError, match="250 training timesteps but num_train_timesteps is 300"):
        ConcatConditionPrepareBatch(300, scheduler=scheduler)

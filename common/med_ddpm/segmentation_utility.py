"""Are synthetic image/label pairs useful? Train a small segmentation network on them and test it on real pairs.

Med-DDPM's utility check (Dorjsembe et al., Sec. III-E) at small scale: the same small 3D U-Net is trained once on synthetic pairs and once on
real pairs (the same masks), and both are scored by Dice on held-out real pairs. Synthetic data are useful when
the first Dice comes close to the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot

__all__ = ["segmentation_dice", "train_segmentation"]

Pair = tuple[torch.Tensor, torch.Tensor]  # image (C, H, W, D) in [-1, 1], classes (1, H, W, D)


def _batches(pairs: Sequence[Pair], batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(pairs), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chosen = [pairs[i] for i in order[start : start + batch_size]]
        yield torch.stack([p[0] for p in chosen]).float(), torch.stack([p[1] for p in chosen]).long()


def train_segmentation(
    pairs: Sequence[Pair], num_classes: int, epochs: int = 50, batch_size: int = 2, lr: float = 1e-3,
    device: str | torch.device = "cpu", seed: int = 0,
) -> torch.nn.Module:
    """A small 3D U-Net (MONAI ``UNet``, channels 8-16-32) trained with Dice + cross-entropy on ``pairs``."""
    if not pairs:
        raise ValueError("no pairs to train the segmentation network on.")
    torch.manual_seed(seed)
    channels = pairs[0][0].shape[0]
    network = UNet(3, channels, num_classes + 1, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for _ in range(epochs):
        for images, labels in _batches(pairs, batch_size, generator):
            optimizer.zero_grad()
            loss = loss_function(network(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
    return network.eval()


@torch.no_grad()
def segmentation_dice(network: torch.nn.Module, pairs: Sequence[Pair], num_classes: int, device: str | torch.device = "cpu") -> list[float]:
    """Mean Dice per class (background excluded) of ``network`` on ``pairs``; NaN for a class absent everywhere."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    for image, labels in pairs:
        predicted = network(image[None].float().to(device)).argmax(1, keepdim=True).cpu()
        metric(one_hot(predicted, num_classes + 1, dim=1), one_hot(labels[None].long(), num_classes + 1, dim=1))
    return [float(v) for v in metric.aggregate()]

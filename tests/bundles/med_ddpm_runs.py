"""Helpers of the Med-DDPM bundle's tests: its small settings at 16^3 and image/label pairs where the label decides
the intensity."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

# the mask-conditioned bundle at 16^3
SIZE = 16
# a small U-Net: two levels, attention at the 8^3 level and in the middle, one head each
SMALL = {
    "image_size": [SIZE] * 3, "crop_size": [SIZE] * 3, "spacing": [1.0] * 3,
    "network_def#channels": [16, 32], "network_def#attention_levels": [False, True],
    "network_def#num_head_channels": [16, 32], "network_def#norm_num_groups": 8,
}
# on the command line every id must be one of the run's configs: crop_size is training's, spacing inference's
TRAINING = {key: value for key, value in SMALL.items() if key != "spacing"}
SAMPLING = {key: value for key, value in SMALL.items() if key != "crop_size"}


def head_labels(tumour_centre: tuple[int, int, int] | None, radius: int = 3) -> np.ndarray:
    """Labels of a 16^3 head: 0 outside a ball, 1 head, 2 a tumour ball."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"))
    labels = (np.sqrt(((grid - 7.5) ** 2).sum(0)) < 7).astype(np.uint8)
    if tumour_centre is not None:
        labels[np.sqrt(((grid - np.reshape(tumour_centre, (3, 1, 1, 1))) ** 2).sum(0)) < radius] = 2
    return labels


def save_labels(path: Path, labels: np.ndarray, origin=(0.0, 0.0, 0.0), zooms=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Write a label volume as NIfTI with a diagonal affine (signed ``zooms`` flip axes); returns the affine."""
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return affine


def write_pairs(folder: Path, count: int, seed: int = 0) -> Path:
    """Image/label pairs where the label decides the intensity: background 0, head 1, tumour 2 (plus noise)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for index in range(count):
        labels = head_labels(tuple(int(v) for v in rng.integers(4, 12, size=3)))
        image = labels.astype(np.float32) + 0.05 * rng.standard_normal(labels.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "images" / f"case_{index}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / "labels" / f"case_{index}.nii.gz"))
    return folder


def drawn_on_another_grid(path, centre=(5, 8, 8)) -> tuple[np.ndarray, np.ndarray]:
    """The 16^3 head label as drawn on another scan: 0.7 x 0.7 x 0.9 mm voxels, flipped axes, another origin."""
    from scipy.ndimage import zoom

    labels = zoom(head_labels(centre), (1 / 0.7, 1 / 0.7, 1 / 0.9), order=0).astype(np.uint8)
    return labels, save_labels(path, labels, origin=(20, 30, -5), zooms=(-0.7, -0.7, 0.9))

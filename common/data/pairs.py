"""Image/label NIfTI pairs, the training data of mask-conditioned synthesis (Med-DDPM): find and check them.

Pairs live in ``dataset_dir/images/<name>`` and ``dataset_dir/labels/<name>`` (the same relative path). Each pair
is checked from its headers before training: readable, the label 3D, the image 3D (or 4D with one volume per
modality, channels last), both on the same grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .checks import DatasetError, raise_if_problems, require_folder
from .nifti import find_nifti_files

__all__ = ["check_pair", "paired_datalist"]


def check_pair(image: str | os.PathLike, label: str | os.PathLike, image_channels: int = 1) -> None:
    """Raise ``DatasetError`` unless the headers of an image and its label mask fit together: readable, the
    label 3D, the image 3D (or 4D with ``image_channels`` volumes), the same grid (shape and affine)."""
    headers = {}
    for path in (image, label):
        try:
            headers[path] = nib.load(str(path))
        except Exception as error:
            raise DatasetError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error}).") from error
    image_header, label_header = headers[image], headers[label]
    if len(label_header.shape) != 3:
        raise DatasetError(f"{label}: a label mask must be 3D, got shape {tuple(label_header.shape)}.")
    expected = 3 if image_channels == 1 else 4  # several modalities: channels last
    channels = image_header.shape[3] if len(image_header.shape) == 4 else 1
    if len(image_header.shape) != expected or channels != image_channels:
        raise DatasetError(f"{image}: expected {image_channels} 3D volume(s), got shape {tuple(image_header.shape)}.")
    if tuple(image_header.shape[:3]) != tuple(label_header.shape):
        raise DatasetError(
            f"{label}: label mask of shape {tuple(label_header.shape)} does not match its image {image} of shape "
            f"{tuple(image_header.shape[:3])}."
        )
    if not np.allclose(image_header.affine, label_header.affine, atol=1e-3):
        raise DatasetError(f"{label}: its affine (position, spacing or orientation) differs from its image {image}.")


def paired_datalist(dataset_dir: str | os.PathLike, image_channels: int = 1) -> list[dict[str, str]]:
    """``[{"image", "label"}, ...]`` of ``dataset_dir/images`` and ``dataset_dir/labels`` (the same relative paths),
    every pair checked first (``check_pair``); all problems are listed at once."""
    root = require_folder(dataset_dir)
    folders = {name: root / name for name in ("images", "labels")}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise DatasetError(f"dataset_dir {root} needs images/ and labels/ folders with the same file names; missing {', '.join(missing)}.")
    images = {str(Path(p).relative_to(folders["images"])): p for p in find_nifti_files(folders["images"])}
    labels = {str(Path(p).relative_to(folders["labels"])): p for p in find_nifti_files(folders["labels"])}
    problems = [f"{images[name]}: has no label {folders['labels'] / name}." for name in sorted(set(images) - set(labels))]
    problems += [f"{labels[name]}: has no image {folders['images'] / name}." for name in sorted(set(labels) - set(images))]
    for name in sorted(set(images) & set(labels)):
        try:
            check_pair(images[name], labels[name], image_channels)
        except DatasetError as error:
            problems.append(str(error))
    raise_if_problems(problems, f"{len(set(images) | set(labels))} image/label pairs in {root}")
    return [{"image": images[name], "label": labels[name]} for name in sorted(images)]

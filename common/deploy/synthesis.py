"""One synthetic volume at a time from a bundle folder: what serving applications (MONAI Label, MONAI Deploy) call.

A bundle's ``configs/inference.json`` builds its networks, weights, scheduler and sampler once; each request then
asks for one volume: a sample of a latent bundle (Khader et al., Sci Rep 2023, Sec. 2.3: reverse diffusion in the
codebook-range latent space, quantisation, decoding), of the classes asked for if the bundle was trained
class-conditional (classifier-free guidance, Ho & Salimans 2022), or, for a mask-conditioned bundle, an image
that follows the user's label volume (Dorjsembe et al., Med-DDPM, 2024: the one-hot mask joined to the noisy
image at every step). The result carries the affine it belongs to, so a viewer lays it over the label it came from.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForeground,
    EnsureChannelFirst,
    LoadImage,
    Orientation,
    ResampleToMatch,
    ResizeWithPadOrCrop,
    Spacing,
)

from common.data import DatasetError, find_nifti_files, nifti_stem, requested_labels
from common.io import save_nifti, to_nifti_layout
from common.med_ddpm import MaskConditionedSampler
from common.sampling import LatentSampler, checked_guidance_scale, labels_description, volume_affine

__all__ = [
    "BundleSynthesizer", "SynthesisError", "SynthesisRequest", "SyntheticVolume", "find_bundle_folder", "plan_requests",
    "write_volume",
]


class SynthesisError(ValueError):
    """A request a bundle cannot answer: no label for a mask-conditioned bundle, a label for an unconditional one,
    classes a class-conditional bundle was not trained with."""


@dataclass
class SyntheticVolume:
    """A synthetic image (H, W, D) or (H, W, D, C) in [-1, 1] with its voxel-to-world affine and seed; for a
    class-conditional bundle, ``labels`` asked for ({variable: class}, None: no label) and ``description``, what the
    NIfTI header says of them ("ventricles=enlarged", "no label")."""

    image: np.ndarray
    affine: np.ndarray
    seed: int
    labels: dict[str, str] | None = None
    description: str | None = None


class BundleSynthesizer:
    """The sampler of a bundle folder (a source bundle or an unpacked package), built once, answering requests.

    Args:
        bundle_dir: the bundle's folder (holding ``configs/inference.json`` and ``models/``).
        device: where to sample (``"cuda:0"``, ``"cpu"``); by default a GPU if there is one.
        num_inference_steps: DDIM steps (fewer than the training steps) or all of them (the paper's DDPM); by
            default the bundle's.
        overrides: other ids of ``inference.json`` to set (``{"ckpt_dir": ...}``).
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        num_inference_steps: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        folder = Path(bundle_dir)
        config = folder / "configs" / "inference.json"
        if not config.is_file():
            raise FileNotFoundError(f"{folder}: not a bundle folder (no configs/inference.json).")
        parser = ConfigParser()
        parser.read_config(str(config))
        # nothing is written here, but the samplers check that their output folder could be (a package's folder
        # may be read-only): point it at the temporary folder
        settings: dict[str, Any] = {"bundle_root": str(folder), "output_dir": tempfile.gettempdir(), **(overrides or {})}
        if device is not None:
            settings["device"] = f"$torch.device({str(device)!r})"
        if num_inference_steps is not None:
            settings["num_inference_steps"] = int(num_inference_steps)
        unknown = sorted(k for k in settings if k not in parser)
        if unknown:
            raise KeyError(f"{config}: no ids {unknown} to override.")
        parser.update(settings)
        self.bundle_dir = folder
        self.sampler: LatentSampler | MaskConditionedSampler = parser.get_parsed_content("sampler")
        self.conditional = isinstance(self.sampler, MaskConditionedSampler)

    @property
    def class_labels(self) -> dict[str, tuple[str, ...]] | None:
        """A class-conditional latent bundle's labelled variables and their classes (as trained); None otherwise."""
        return getattr(self.sampler, "class_labels", None)

    def __call__(
        self,
        label: str | os.PathLike | None = None,
        seed: int = 0,
        fit_to_model: bool = False,
        labels: Mapping[str, str] | None = None,
        guidance_scale: float | None = None,
    ) -> SyntheticVolume:
        """One volume from the noise of ``seed``.

        For a mask-conditioned bundle, following the NIfTI ``label``, which holds the model's classes and is at its
        size and spacing (``DatasetError`` naming the file otherwise), or, with ``fit_to_model``, on any grid: then
        the label is fitted to the model's grid (``fit_label``) and the image resampled back onto the label's grid.
        For a class-conditional latent bundle, of the classes ``labels`` asks for ({variable: class}, every variable;
        None: the unconditional model), guided with ``guidance_scale`` (by default the bundle's ``guidance_scale``).
        """
        if self.conditional:
            if label is None:
                raise SynthesisError(f"{self.bundle_dir.name} makes images from label masks: give a label volume.")
            if labels is not None or guidance_scale is not None:
                raise SynthesisError(f"{self.bundle_dir.name} makes images from label masks: it takes no class labels "
                                     "or guidance scale.")
            if fit_to_model:
                return self._on_the_labels_grid(Path(label), seed)
            classes = self.sampler.load(str(label))
            image = to_nifti_layout(self.sampler.sample(classes, seed).numpy())
            return SyntheticVolume(image, np.asarray(classes.affine, dtype=np.float64), seed)
        if label is not None:
            raise SynthesisError(f"{self.bundle_dir.name} samples without a label volume: it takes none.")
        ((names, indices),) = self.requested([labels] if labels is not None else None, 1)
        scale = None if guidance_scale is None else self.checked_guidance_scale(guidance_scale)
        volume = self.sampler.sample([seed], [indices], scale)[0, 0].numpy()
        description = None if self.class_labels is None else labels_description(names)
        return SyntheticVolume(volume, volume_affine(volume.shape, self.sampler.spacing), seed, names, description)

    def checked_guidance_scale(self, scale: object) -> float:
        """``scale`` as a guidance scale of a class-conditional latent bundle; ``SynthesisError`` naming the bundle
        and the problem otherwise."""
        if self.class_labels is None:
            raise SynthesisError(f"{self.bundle_dir.name} was trained without class labels: it takes no guidance scale.")
        try:
            return checked_guidance_scale(scale)
        except ValueError as error:
            raise SynthesisError(f"{self.bundle_dir.name}: {error}") from None

    def requested(
        self, labels: Mapping[str, str] | Sequence[Mapping[str, str] | None] | str | os.PathLike | None, count: int,
    ) -> list[tuple[dict[str, str] | None, tuple[int, ...] | None]]:
        """The labels of ``count`` volumes of a latent bundle, checked against the classes it was trained with
        (``common.data.requested_labels``: one mapping for all, a list, one per volume, or a CSV/JSON file of them;
        None: no labels); ``SynthesisError`` naming the bundle and the problem otherwise."""
        if labels is not None and self.class_labels is None:
            raise SynthesisError(f"{self.bundle_dir.name} was trained without class labels: it takes none.")
        try:
            return requested_labels(labels, self.class_labels, count)
        except ValueError as error:
            raise SynthesisError(f"{self.bundle_dir.name}: {error}") from None

    def fit_label(self, label: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
        """A label drawn on any grid, fitted to the model's: (the label as drawn, its classes on the model's grid).

        RAS orientation, the model's spacing (nearest), the foreground's bounding box centred in the model's size;
        then the bundle's own reading and checks of a mask. ``DatasetError`` naming the file for a volume that is
        not a 3D label, classes the model does not know, or a foreground larger than the model's field of view."""
        label = Path(label)
        try:
            drawn = EnsureChannelFirst(channel_dim="no_channel")(LoadImage(image_only=True)(str(label)))
            resampled = Compose([
                Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                Spacing(pixdim=tuple(float(s) for s in self.sampler.spacing), mode="nearest"),
            ])(drawn)
        except Exception as error:
            raise DatasetError(f"{label}: cannot be read as a 3D label volume ({type(error).__name__}: {error}).") from error
        foreground = CropForeground(select_fn=lambda x: x != 0, allow_smaller=True)(resampled)
        extent, size = tuple(foreground.shape[1:]), tuple(self.sampler.image_size)
        if any(e > s for e, s in zip(extent, size)):
            millimetres = tuple(round(e * float(s), 1) for e, s in zip(extent, self.sampler.spacing))
            raise DatasetError(
                f"{label}: the labelled region spans {millimetres} mm, more than the model's field of view of "
                f"{tuple(round(n * float(s), 1) for n, s in zip(size, self.sampler.spacing))} mm."
            )
        fitted = ResizeWithPadOrCrop(size)(foreground)
        with tempfile.TemporaryDirectory() as scratch:  # float32: the checks see every value as it was drawn
            path = save_nifti(np.asarray(fitted[0]), np.asarray(fitted.affine), Path(scratch) / "label.nii.gz")
            try:
                classes = self.sampler.load(path)
            except DatasetError as error:
                raise DatasetError(str(error).replace(path, f"{label} (fitted to the model's grid)")) from None
        return drawn, classes

    def _on_the_labels_grid(self, label: Path, seed: int) -> SyntheticVolume:
        """A label drawn on any image: fitted to the model's grid, sampled there, the image resampled back; outside
        the model's field of view the image is background (-1)."""
        drawn, classes = self.fit_label(label)
        image = MetaTensor(torch.as_tensor(self.sampler.sample(classes, seed).numpy()) + 1, affine=classes.affine)
        back = ResampleToMatch(mode="bilinear", padding_mode="zeros")(image, img_dst=drawn) - 1
        volume = to_nifti_layout(np.asarray(back, dtype=np.float32))
        return SyntheticVolume(volume, np.asarray(drawn.affine, dtype=np.float64), seed)


def find_bundle_folder(model_path: str | os.PathLike) -> Path:
    """The bundle folder at ``model_path``: the folder itself, or its one sub-folder holding a bundle (a MONAI
    Deploy package mounts its models as ``<models>/<name>/``)."""
    folder = Path(model_path)
    if (folder / "configs" / "inference.json").is_file():
        return folder
    found = sorted(p for p in folder.iterdir() if (p / "configs" / "inference.json").is_file()) if folder.is_dir() else []
    if len(found) != 1:
        what = "does not exist" if not folder.exists() else f"holds {len(found)} bundle folders, not one"
        raise FileNotFoundError(f"model path {folder} {what} (a bundle folder has configs/inference.json).")
    return found[0]


def write_volume(volume: SyntheticVolume, path: str | os.PathLike) -> str:
    """Write ``volume`` as NIfTI (float32, its affine, the labels it was asked for in the header's description);
    returns the path."""
    return save_nifti(volume.image, volume.affine, path, description=volume.description)


@dataclass
class SynthesisRequest:
    """One volume to make: the file name to write it as, its seed, and its label volume (mask-conditioned bundles)
    or class labels and guidance scale (class-conditional latent bundles)."""

    name: str
    seed: int
    label: str | None = None
    fit_to_model: bool = False
    labels: dict[str, str] | None = None
    guidance_scale: float | None = None

    def answer(self, synthesizer: BundleSynthesizer) -> SyntheticVolume:
        """The volume this request asks ``synthesizer`` for."""
        return synthesizer(self.label, self.seed, self.fit_to_model, self.labels, self.guidance_scale)


def plan_requests(
    synthesizer: BundleSynthesizer,
    input_dir: str | os.PathLike | None,
    num_samples: int = 1,
    seed: int = 0,
    fit_to_model: bool = False,
    labels: Mapping[str, str] | Sequence[Mapping[str, str] | None] | str | os.PathLike | None = None,
    guidance_scale: float | None = None,
) -> list[SynthesisRequest]:
    """The volumes a folder request asks for, as a batch application gets it, checked before any sampling.

    For a mask-conditioned bundle, one image per NIfTI label under ``input_dir`` (sub-folders included), named
    ``<label name>_seed<seed>.nii.gz`` (every label is read and checked here, as it is or, with ``fit_to_model``,
    fitted to the model's grid: ``BundleSynthesizer.fit_label``; two labels of one name in different sub-folders
    are refused). For a latent bundle, ``num_samples`` volumes named ``sample_<k>_seed<seed + k>.nii.gz``; a
    class-conditional one's of the classes ``labels`` asks for (one {variable: class} for every volume, a list of
    them, or a CSV/JSON file of them, one per volume, as ``inference.json``'s ``labels``; None: unconditional),
    guided with ``guidance_scale`` (by default the bundle's)."""
    if synthesizer.conditional:
        if input_dir is None:
            raise SynthesisError(f"{synthesizer.bundle_dir.name} makes images from label masks: give an input folder of them.")
        if labels is not None or guidance_scale is not None:
            raise SynthesisError(f"{synthesizer.bundle_dir.name} makes images from label masks: it takes no class "
                                 "labels or guidance scale.")
        labels = find_nifti_files(input_dir)
        names = [f"{nifti_stem(label)}_seed{seed}.nii.gz" for label in labels]
        clashes = sorted(label for label, name in zip(labels, names) if names.count(name) > 1)
        if clashes:
            raise SynthesisError(f"labels in {input_dir} share a file name, so their images would too: {clashes}.")
        for label in labels:  # a wrong mask is named before minutes of sampling, not after
            synthesizer.fit_label(label) if fit_to_model else synthesizer.sampler.load(label)
        return [SynthesisRequest(name, seed, label, fit_to_model) for label, name in zip(labels, names)]
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    asked = synthesizer.requested(labels, num_samples)
    guidance_scale = None if guidance_scale is None else synthesizer.checked_guidance_scale(guidance_scale)
    return [SynthesisRequest(f"sample_{k:04d}_seed{seed + k}.nii.gz", seed + k, labels=names, guidance_scale=guidance_scale)
            for k, (names, _) in enumerate(asked)]

"""Label masks edited as a user would draw them: a lesion moved, grown, or a second one added.

Med-DDPM's promise (Dorjsembe et al., Sec. I) is pathology placed on purpose: a mask a user edits should give an
image that follows the edit. These edits make such masks from a real one, so a demo or a test can sample for them
and show whether the images follow. They work on class maps (0 background, 1..K classes) in which one class is the
healthy tissue the lesion sits in (``tissue_class``, for example the brain area) and the other non-zero classes
are the lesion's (nested or not). A lesion is kept inside the tissue: an edit that cannot place it there fails
with a clear error rather than drawing a lesion outside the organ.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

__all__ = ["EDITS", "edit_mask"]

EDITS = ("moved", "grown", "added")


def _tissue_and_lesion(classes: np.ndarray, tissue_class: int) -> tuple[np.ndarray, np.ndarray]:
    tissue = classes > 0
    lesion = tissue & (classes != tissue_class)
    if not lesion.any():
        raise ValueError(f"the mask has no lesion voxels (classes other than 0 and the tissue class {tissue_class}).")
    return tissue, lesion


def _shifted(volume: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``volume`` moved by a whole-voxel ``offset``, zeros where nothing moves in."""
    out = np.zeros_like(volume)
    source = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, volume.shape))
    target = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, volume.shape))
    out[target] = volume[source]
    return out


def _placement(tissue: np.ndarray, lesion: np.ndarray, keep_original: bool, rng: np.random.Generator) -> np.ndarray:
    """A whole-voxel offset that puts the lesion wholly inside the tissue, clear of where it was (by more than its own
    extent along some axis, so a moved or added lesion is in a new place, not a nudge, and an added one does not touch
    the first); the nearest such offsets are tried first."""
    extent = np.ptp(np.argwhere(lesion), axis=0) + 1
    spread = np.array(tissue.shape) // 2
    candidates = rng.integers(-spread, spread + 1, size=(4000, 3))
    candidates = candidates[(np.abs(candidates) > extent).any(1)]
    candidates = candidates[np.argsort(np.abs(candidates).sum(1), kind="stable")]
    lesion_voxels = np.argwhere(lesion)
    room = tissue if not keep_original else tissue & ~lesion
    for offset in candidates:
        moved = lesion_voxels + offset
        if (moved < 0).any() or (moved >= tissue.shape).any():
            continue
        if room[tuple(moved.T)].all():
            return offset
    raise ValueError("no place inside the tissue holds the lesion; the mask's tissue class is too small for it.")


def edit_mask(classes: np.ndarray, edit: str, tissue_class: int, seed: int = 0, growth: float = 1.4) -> np.ndarray:
    """``classes`` (H, W, D) with its lesion edited: ``"moved"`` elsewhere in the tissue (its old place becomes
    tissue), ``"grown"`` by ``growth`` about its centre (as far as the tissue reaches), or a copy ``"added"``
    elsewhere in the tissue. The result has the same classes; the lesion's classes keep their nesting."""
    if edit not in EDITS:
        raise ValueError(f"edit must be one of {EDITS}, got {edit!r}.")
    classes = np.asarray(classes)
    if classes.ndim != 3:
        raise ValueError(f"expected an (H, W, D) class map, got shape {classes.shape}.")
    tissue, lesion = _tissue_and_lesion(classes, tissue_class)
    if edit == "grown":
        if growth <= 1:
            raise ValueError(f"growth must be above 1, got {growth}.")
        centre = np.argwhere(lesion).mean(0)
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in classes.shape], indexing="ij"))
        source = centre[:, None, None, None] + (grid - centre[:, None, None, None]) / growth
        lesion_classes = np.where(lesion, classes, 0)
        grown = map_coordinates(lesion_classes, source.reshape(3, -1), order=0, mode="constant").reshape(classes.shape)
        return np.where(tissue & (grown > 0), grown, classes).astype(classes.dtype)
    rng = np.random.default_rng(seed)
    offset = _placement(tissue, lesion, keep_original=edit == "added", rng=rng)
    out = classes.copy() if edit == "added" else np.where(lesion, tissue_class, classes).astype(classes.dtype)
    moved = _shifted(np.where(lesion, classes, 0), offset)
    return np.where(moved > 0, moved, out).astype(classes.dtype)

"""Pictures to look at: volumes in three planes, runs of adjacent slices, and training curves from TensorBoard logs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.io import atomic_path

__all__ = ["save_adjacent_slices", "save_slices_through", "save_three_plane_montage", "save_training_curves"]


def save_three_plane_montage(
    volumes: Sequence[np.ndarray], path: str | os.PathLike, titles: Sequence[str] | None = None
) -> str:
    """Save a PNG with one row per (H, W, D) volume: its middle axial, coronal and sagittal slices.

    Intensities are shown on one grey scale from -1 to 1 (the models' range). Returns the path.
    """
    plt = _pyplot()
    if not volumes:
        raise ValueError("no volumes to show.")
    rows = len(volumes)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    planes = ("axial (H-W)", "coronal (H-D)", "sagittal (W-D)")
    for row, volume in enumerate(volumes):
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"expected (H, W, D) volumes, got shape {volume.shape}.")
        h, w, d = volume.shape
        slices = (volume[:, :, d // 2], volume[:, w // 2, :], volume[h // 2, :, :])
        for col, (ax, image) in enumerate(zip(axes[row], slices)):
            ax.imshow(np.rot90(image), cmap="gray", vmin=-1, vmax=1, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(planes[col], fontsize=9)
            if col == 0 and titles is not None:
                ax.set_ylabel(titles[row], fontsize=8)
    return _save(fig, path, IMAGES)


def save_slices_through(
    rows: Sequence[Sequence[np.ndarray]],
    centres: Sequence[Sequence[int]],
    path: str | os.PathLike,
    column_titles: Sequence[str],
    row_titles: Sequence[str],
) -> str:
    """Save a PNG of volumes side by side, each (H, W, D) volume of a row cut through that row's ``centre`` (for
    example a lesion's): its axial slice above its coronal one, so a small structure off the middle is seen in
    every volume of the row at the same place. Grey scale from -1 to 1, as ``save_three_plane_montage``."""
    plt = _pyplot()
    columns = max((len(row) for row in rows), default=0)
    if not rows or len(centres) != len(rows) or len(row_titles) != len(rows) or len(column_titles) != columns:
        raise ValueError("need at least one row, a centre and a title per row, and a title per column.")
    fig, axes = plt.subplots(2 * len(rows), columns, figsize=(1.9 * columns, 3.6 * len(rows)), squeeze=False)
    for r, (volumes, centre, title) in enumerate(zip(rows, centres, row_titles)):
        for c in range(columns):
            for plane, ax in enumerate((axes[2 * r][c], axes[2 * r + 1][c])):
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(volumes):
                    ax.axis("off")
                    continue
                volume = np.asarray(volumes[c], dtype=np.float32)
                if volume.ndim != 3:
                    raise ValueError(f"expected (H, W, D) volumes, got shape {volume.shape}.")
                index = [min(max(int(i), 0), n - 1) for i, n in zip(centre, volume.shape)]
                image = volume[:, :, index[2]] if plane == 0 else volume[:, index[1], :]
                ax.imshow(np.rot90(image), cmap="gray", vmin=-1, vmax=1, aspect="auto")
                if r == 0 and plane == 0:
                    ax.set_title(column_titles[c], fontsize=8)
        axes[2 * r][0].set_ylabel(f"{title}\naxial", fontsize=7)
        axes[2 * r + 1][0].set_ylabel("coronal", fontsize=7)
    return _save(fig, path, Margins(0.45, 0.05, 0.3, 0.05, 0.06, 0.06))  # two-line row labels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, margins: Margins) -> str:
    """Write a figure to ``path`` atomically, close it, and return the path. ``margins`` place the subplots (fixed
    for each kind of picture: matplotlib's ``tight_layout`` would measure every text first, a second drawing that
    made up a third of an evaluation's pictures' time)."""
    plt = _pyplot()
    try:
        width, height = fig.get_size_inches()
        rows, columns = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
        axes_width = (width - margins.left - margins.right - (columns - 1) * margins.between_columns) / columns
        axes_height = (height - margins.top - margins.bottom - (rows - 1) * margins.between_rows) / rows
        fig.subplots_adjust(left=margins.left / width, right=1 - margins.right / width, top=1 - margins.top / height,
                            bottom=margins.bottom / height, wspace=margins.between_columns / axes_width,
                            hspace=margins.between_rows / axes_height)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return str(path)


class Margins(NamedTuple):
    """Space around and between the subplots of a picture, in inches."""

    left: float
    right: float
    top: float
    bottom: float
    between_columns: float
    between_rows: float


# images with a title over the first row and a label left of the first column
IMAGES = Margins(left=0.3, right=0.05, top=0.3, bottom=0.05, between_columns=0.06, between_rows=0.06)
# images with a title over each
TITLED_IMAGES = Margins(left=0.3, right=0.05, top=0.25, bottom=0.05, between_columns=0.06, between_rows=0.28)
# line plots with titles, tick labels and an x label
PLOTS = Margins(left=0.5, right=0.15, top=0.3, bottom=0.45, between_columns=0.6, between_rows=0.8)


def save_adjacent_slices(volumes: Sequence[np.ndarray], path: str | os.PathLike, titles: Sequence[str], count: int = 8) -> str:
    """Save a PNG with one row per (H, W, D) volume: ``count`` consecutive depth slices around its middle, to see
    whether anatomy continues smoothly from slice to slice."""
    plt = _pyplot()
    if not volumes or len(titles) != len(volumes):
        raise ValueError("need one title per volume, and at least one volume.")
    fig, axes = plt.subplots(len(volumes), count, figsize=(1.6 * count, 1.8 * len(volumes)), squeeze=False)
    for row, (volume, title) in enumerate(zip(volumes, titles)):
        volume = np.asarray(volume, dtype=np.float32)
        first = max(0, volume.shape[2] // 2 - count // 2)
        for col, ax in enumerate(axes[row]):
            index = min(first + col, volume.shape[2] - 1)
            ax.imshow(np.rot90(volume[:, :, index]), cmap="gray", vmin=-1, vmax=1, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"slice {index}", fontsize=7)
        axes[row][0].set_ylabel(title, fontsize=7)
    return _save(fig, path, TITLED_IMAGES)


def save_training_curves(log_dir: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """Plot every scalar of the TensorBoard event files in ``log_dir`` against the iteration; None if there are none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, tuple[list[int], list[float]]] = {}
    for events_file in sorted(Path(log_dir).glob("**/events.out.tfevents*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            steps, values = curves.setdefault(tag, ([], []))
            for event in events.Scalars(tag):
                steps.append(event.step)
                values.append(event.value)
    if not curves:
        return None
    plt = _pyplot()
    columns = min(4, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, (tag, (steps, values)) in zip(axes.flat, sorted(curves.items())):
        order = np.argsort(steps, kind="stable")
        ax.plot(np.asarray(steps)[order], np.asarray(values)[order], linewidth=0.8)
        ax.set_title(tag, fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    return _save(fig, path, PLOTS)

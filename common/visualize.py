"""Pictures of volumes: the middle slice of each in three planes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_three_plane_montage"]


def save_three_plane_montage(
    volumes: Sequence[np.ndarray], path: str | os.PathLike, titles: Sequence[str] | None = None
) -> str:
    """Save a PNG with one row per (H, W, D) volume: its middle axial, coronal and sagittal slices.

    Intensities are shown on one grey scale from -1 to 1 (the models' range). Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)

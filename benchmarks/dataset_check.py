"""What checking a dataset costs: the header check and the preprocessing check of 100 volumes, each against its
baseline in the same run.

    python benchmarks/dataset_check.py            # writes benchmarks/dataset_check.md
    python benchmarks/dataset_check.py --volumes 20 --out /tmp/check.md

The brain bundle's own preprocessing (train_autoencoder.json, 64^3) on brain-sized NIfTI volumes (160x192x160
voxels of 1 mm, gzipped), made once into a temporary folder:

- header check: ``nifti_datalist`` (reads every file, checks shape, affine and voxels) against reading every
  file once with nibabel;
- cached training set (``cache_rate`` 1, the brain, breast and chest bundles): ``CheckedCacheDataset`` against
  MONAI's ``CacheDataset`` filling the same cache (the check rides along with the caching pass);
- uncached training set (``cache_rate`` 0, the knee bundle): ``CheckedCacheDataset`` preprocessing every item
  once at start-up against one epoch of preprocessing, which is what it adds (``--check_preprocessing false``
  skips it).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_volumes(folder: Path, count: int) -> None:
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in (160, 192, 160)], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    texture = gaussian_filter(rng.standard_normal((160, 192, 160)).astype(np.float32), 2)
    for index in range(count):
        brain = (radius < rng.uniform(0.7, 0.85)) * (500 + 100 * texture * rng.uniform(0.8, 1.2))
        nib.save(nib.Nifti1Image(brain.astype(np.float32), np.eye(4)), str(folder / f"sub-{index:03d}.nii.gz"))


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "dataset_check.md")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.data import CacheDataset, Dataset

    from common.data import CheckedCacheDataset, nifti_datalist
    from common.io import write_text

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        made = timed(lambda: make_volumes(folder, args.volumes))
        config = ConfigParser()
        config.read_config(str(REPO / "bundles" / "brain_mri" / "configs" / "train_autoencoder.json"))
        transform = config.get_parsed_content("train#preprocessing")
        results = {}
        results["read"] = timed(lambda: [np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))])
        datalist: list = []
        results["header_check"] = timed(lambda: datalist.extend(nifti_datalist(folder)))
        options = dict(cache_rate=1.0, num_workers=2, progress=False)
        results["cache"] = timed(lambda: CacheDataset(datalist, transform, **options))
        results["checked_cache"] = timed(lambda: CheckedCacheDataset(datalist, transform, image_size=[64] * 3, **options))
        results["epoch"] = timed(lambda: [item for item in Dataset(datalist, transform)])
        results["checked_uncached"] = timed(
            lambda: CheckedCacheDataset(datalist, transform, image_size=[64] * 3, cache_rate=0.0, num_workers=2, progress=False)
        )

    n = args.volumes
    lines = [
        "# What checking a dataset costs",
        "",
        f"Command: `python benchmarks/dataset_check.py --volumes {n}`. Machine: {platform.machine()}, 2 threads, "
        f"torch {torch.__version__}. {n} gzipped NIfTI volumes of 160x192x160 voxels (made in {made:.0f} s), the "
        "brain bundle's preprocessing to 64^3, single runs (expect about 10% noise).",
        "",
        "| what | baseline, same run | seconds | baseline seconds | ratio | per volume |",
        "|---|---|---|---|---|---|",
        f"| header check (`nifti_datalist`) | reading every file once | {results['header_check']:.1f} | {results['read']:.1f} "
        f"| {results['header_check'] / results['read']:.2f}x | {results['header_check'] / n * 1000:.0f} ms |",
        f"| preprocessing check, cached (`CheckedCacheDataset`, cache_rate 1) | MONAI `CacheDataset` filling the same cache "
        f"| {results['checked_cache']:.1f} | {results['cache']:.1f} | {results['checked_cache'] / results['cache']:.2f}x "
        f"| {results['checked_cache'] / n * 1000:.0f} ms |",
        f"| preprocessing check, uncached (cache_rate 0) | one epoch of preprocessing | {results['checked_uncached']:.1f} "
        f"| {results['epoch']:.1f} | {results['checked_uncached'] / results['epoch']:.2f}x | {results['checked_uncached'] / n * 1000:.0f} ms |",
        "",
        "With a cache (brain, breast, chest, Med-DDPM) the preprocessing check costs what caching already cost: the "
        "ratio is the price of the output checks. Without one (knee, whose 1,250 exams at 256x256x32 would take about 10 GB of memory), "
        "it adds one pass of preprocessing before training: `--check_preprocessing false` skips it, and an item that "
        "then fails during training still stops the run with its file named.",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Helpers the tests import: tiny networks, the real T1 crop that ships with nibabel, and a process that holds a
checkpoint folder's lock (fixtures are in conftest)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib

from common.networks import VQGAN

# nibabel's real T1 brain crop (33 x 41 x 25 voxels of 2 mm), shipped with the package
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def tiny_vqgan(**kwargs) -> VQGAN:
    """A VQ-GAN small enough for unit tests (compression 2, 64 codes)."""
    settings = dict(downsample_factor=2, base_channels=4, num_embeddings=64, embedding_dim=4)
    settings.update(kwargs)
    return VQGAN(**settings)


_HOLD = """
import sys, time
from common.handlers import CheckpointDirLock
CheckpointDirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextmanager
def lock_held_in_another_process(folder: Path, seconds: float = 600) -> Iterator[subprocess.Popen]:
    """A process that holds the lock of checkpoint folder ``folder`` (as a training run does) until the block ends
    or ``seconds`` pass; it is killed and waited for, and its pipe closed, on the way out."""
    with subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout.readline().strip() == "held"
            yield process
        finally:
            process.kill()

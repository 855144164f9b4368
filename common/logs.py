"""Logs a user can trust: the few messages of other libraries that look like failures but are not are filtered in
the bundles' commands, so that a clean run prints nothing alarming and the warnings that remain mean something.

Each config's ``initialize`` calls ``silence_known_noise`` (after ``common.overrides.check_command_line``). It
changes nothing for code that does not call it, and filters only the exact messages below:

- faiss's loader logs ``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")`` (and avx2) at INFO
  every time it falls back to the generic build, which works;
- MONAI logs and warns that nvImageCodec (an optional GPU DICOM decoder) is not installed whenever a DICOM-capable
  reader is built, also for NIfTI or NumPy data;
- PyTorch's ``DistributedDataParallel`` calls ``broadcast_buffers`` deprecated, yet its replacement does not
  keep the behaviour the multi-GPU configs need (codebook buffers that are not synchronised at construction);
- MONAI warns, for every config it parses, that configs run code: the command's first parse says it (it comes
  before any bundle code runs); the repeats of ``train.json``'s two stages are dropped.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["KNOWN_NOISE", "silence_known_noise"]

# (logger name or warning category, message pattern)
KNOWN_NOISE: tuple[tuple[str | type[Warning], str], ...] = (
    ("faiss.loader", r"Could not load library with AVX\d* support"),
    ("faiss.loader", r"ModuleNotFoundError\(\"No module named 'faiss\.swigfaiss_avx"),
    ("monai.data.nvimgcodec_pydicom_plugin", r"nvImageCodec is not available"),
    (UserWarning, r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"),
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    (UserWarning, r"parsing config_file .*is resolved to an importable callable"),
)


class _DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def silence_known_noise() -> None:
    """Filter the messages of ``KNOWN_NOISE`` in this process (once; calling again changes nothing)."""
    by_logger: dict[str, list[str]] = {}
    for source, pattern in KNOWN_NOISE:
        if isinstance(source, str):
            by_logger.setdefault(source, []).append(pattern)
        else:
            warnings.filterwarnings("ignore", message=pattern, category=source)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(patterns))

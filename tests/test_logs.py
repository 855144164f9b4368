"""Logs a user can trust (common.logs): a clean run of a bundle command prints nothing that looks like a failure,
and the filters drop only the known messages."""

from __future__ import annotations

import logging
import re
import warnings

import pytest

from common.logs import _DropMatching, silence_known_noise
from tests.bundles.bundle_runs import SMALL_AUTOENCODER, SMALL_DENOISER, SMALL_SHARED, checkpoints_in, command_line, config_files

ERROR_LIKE = re.compile(r"(?i)error|exception|traceback|fail|could not|cannot|not available|did not")


@pytest.fixture
def restored_filters():
    loggers = [logging.getLogger(n) for n in ("faiss.loader", "monai.data.nvimgcodec_pydicom_plugin")]
    before = [list(logger.filters) for logger in loggers]
    with warnings.catch_warnings():
        yield
    for logger, filters in zip(loggers, before):
        logger.filters[:] = filters


def test_only_the_known_messages_are_dropped(restored_filters):
    silence_known_noise()
    silence_known_noise()  # twice changes nothing
    faiss = logging.getLogger("faiss.loader")
    assert sum(isinstance(f, _DropMatching) for f in faiss.filters) == 1

    def passes(logger: logging.Logger, message: str) -> bool:
        return all(f.filter(logging.LogRecord(logger.name, logging.INFO, __file__, 1, message, None, None)) for f in logger.filters)

    assert not passes(faiss, "Could not load library with AVX512 support due to:\nModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx512'\")")
    assert passes(faiss, "Successfully loaded faiss.")
    assert passes(faiss, "Could not load faiss at all")  # anything else from faiss still shows
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        silence_known_noise()  # catch_warnings reset the filters: install them again inside
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.", UserWarning)
        warnings.warn("your volume is not skull-stripped", UserWarning)
    assert [str(w.message) for w in shown] == ["your volume is not skull-stripped"]


@pytest.mark.slow
def test_a_clean_train_json_run_prints_no_line_that_looks_like_a_failure(tmp_path, demo_brains):
    demo_brains(tmp_path / "demo")
    stage_overrides = {
        "both": SMALL_SHARED,
        "autoencoder": {**SMALL_AUTOENCODER, "train#trainer#max_epochs": 1},
        "diffusion": {**SMALL_DENOISER, "batch_size": 2, "train#trainer#max_epochs": 1, "ema#start_iteration": 1},
    }
    result = command_line(
        config_files("brain_mri", "train"), "--ckpt_dir", str(tmp_path / "models"), "--log_dir", str(tmp_path / "logs"),
        "--demo_dir", str(tmp_path / "demo"), "--image_size", "[16,16,16]", "--num_workers", "0",
        "--stage_overrides", repr(stage_overrides),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoints_in(tmp_path / "models") == ["autoencoder.pt", "autoencoder_iteration=10.pt", "autoencoder_iteration=8.pt", "diffusion.pt"]
    lines = (result.stdout + result.stderr).splitlines()
    alarming = [line for line in lines if ERROR_LIKE.search(line)]
    assert not alarming, "\n".join(alarming)
    # MONAI's note that configs run code is said once (for train.json), not again for each stage
    assert sum("is resolved to an importable callable" in line for line in lines) == 1

"""The VQ-GAN's training tells how it is going: held-out reconstruction quality, a collapsed codebook, and a decoder
whose reconstructions stay constant (which stops the run)."""

from __future__ import annotations

import logging

import torch
import pytest
from ignite.engine import Engine, Events
from monai.data import Dataset

from common.handlers import CodebookCollapseWarning, ConstantReconstructionError, HeldoutReconstruction, StopOnConstantReconstruction
from tests.helpers import tiny_vqgan


def _engine(outputs: list[dict]) -> Engine:
    engine = Engine(lambda e, batch: outputs[e.state.iteration - 1])
    return engine


def test_a_collapsed_codebook_is_reported_once_after_the_patience(caplog):
    healthy = {"losses": {"codebook_usage": 0.4, "perplexity": 120.0}}
    collapsed = {"losses": {"codebook_usage": 0.004, "perplexity": 2.0}}
    outputs = [healthy] * 5 + [collapsed] * 3 + [healthy] + [collapsed] * 6
    engine = _engine(outputs)
    CodebookCollapseWarning(patience=5).attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run(range(len(outputs)), max_epochs=1)
    warnings = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 1 and "0.40% of the codes (perplexity 2.0)" in warnings[0]  # the 3 then the 6: only the 6 count


def test_held_out_reconstruction_is_measured_in_eval_mode_and_written_to_tensorboard(tmp_path):
    vqgan = tiny_vqgan().train()
    volumes = [torch.rand(1, 16, 16, 16) * 2 - 1 for _ in range(3)]
    vqgan(torch.stack(volumes))  # initialise the codebook
    codebook = vqgan.codebook.embedding.weight.clone()
    monitor = HeldoutReconstruction(vqgan, Dataset([{"image": v} for v in volumes]), interval=2, log_dir=tmp_path)
    engine = _engine([{"losses": {}}] * 5)
    monitor.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(len(monitor.measured)))
    engine.run(range(5), max_epochs=1)
    assert seen == [0, 1, 1, 2, 2] and [i for i, _ in monitor.measured] == [2, 4, 5]  # every 2, and at the end
    assert not any("heldout" in key for key in engine.state.metrics)  # not echoed by the epoch-end handlers
    assert vqgan.training and torch.equal(vqgan.codebook.embedding.weight, codebook)  # train mode back, codebook untouched
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    steps = [e.step for e in events.Scalars("heldout/psnr_db")]
    assert steps == [2, 4, 5] and all(0 < e.value < 60 for e in events.Scalars("heldout/psnr_db"))
    HeldoutReconstruction(vqgan, None).attach(_engine([]))  # without held-out volumes: nothing to do, no error


def test_constant_reconstructions_stop_the_run_after_the_patience_and_varied_ones_reset_it():
    torch.manual_seed(0)
    image = torch.rand(2, 1, 8, 8, 8) * 2 - 1  # a voxel spread of about 0.58
    saturated = {"image": image, "pred": torch.full_like(image, -1.0)}
    nearly = {"image": image, "pred": -0.9 + 1e-6 * torch.randn_like(image)}  # spread 1e-6: below 1e-4 of the input's
    untrained = {"image": image, "pred": 0.004 * torch.randn_like(image)}  # an untrained decoder varies this much
    just_above = {"image": image, "pred": -0.9 + 2e-4 * image}  # spread 2e-4 of the input's: not constant
    one_varies = {"image": image, "pred": torch.cat([saturated["pred"][:1], untrained["pred"][1:]])}
    faint = {"image": image * 1e-3, "pred": 1e-5 * torch.randn_like(image)}  # relative, not absolute: not constant
    outputs = [untrained] * 3 + [saturated, nearly] * 2 + [one_varies] + [nearly] * 4 + [just_above] + [faint]
    outputs += [nearly] * 4 + [saturated]
    engine = _engine(outputs)
    StopOnConstantReconstruction(patience=5).attach(engine)
    with pytest.raises(ConstantReconstructionError, match=r"iteration 19 \(epoch 1\): for 5 iterations the VQ-GAN's "
                       r"reconstructions were constant \(this batch's between -1 and -1\).*saturated.*output_act null"):
        engine.run(range(len(outputs)), max_epochs=1)  # each run of 4 is broken by one that varies: 19 is the fifth
    engine = _engine([nearly] * 5)
    StopOnConstantReconstruction(patience=5).attach(engine)
    with pytest.raises(ConstantReconstructionError, match=r"between -0.9.*no longer depends on its input"):
        engine.run(range(5), max_epochs=1)  # constant away from an activation's bound: another cause named
    engine = _engine([untrained] * 8)
    StopOnConstantReconstruction(patience=2).attach(engine)
    engine.run(range(8), max_epochs=1)  # never constant: runs to its end
    assert engine.state.iteration == 8
    for bad in ({"tolerance": 0.0}, {"tolerance": 1.0}, {"patience": 0}):
        with pytest.raises(ValueError, match="need 0 < tolerance < 1 and patience >= 1"):
            StopOnConstantReconstruction(**bad)

"""Telling the user how a VQ-GAN training is going while it runs: held-out reconstruction quality in TensorBoard,
a warning when the codebook collapses, and an error when the decoder has stopped learning altogether.

A VQ-GAN that will never reconstruct unseen volumes well, or whose codebook has collapsed to a few codes, looks
like any other run in its training losses. These handlers make it visible hours before the run ends.
"""

from __future__ import annotations

import logging
import os

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from torch.utils.data import Dataset

__all__ = ["CodebookCollapseWarning", "ConstantReconstructionError", "HeldoutReconstruction", "StopOnConstantReconstruction"]

logger = logging.getLogger(__name__)


class HeldoutReconstruction:
    """Every ``interval`` iterations (and when training completes), the PSNR of the VQ-GAN's quantised
    reconstructions of held-out volumes: written to TensorBoard (``heldout/psnr_db``, in ``log_dir``) and logged, once
    each, at the iteration it was measured, and kept in ``measured`` as (iteration, dB) pairs. Not in
    ``engine.state.metrics``: the epoch-end handlers would log and plot it again at every epoch as if it were new.
    Does nothing without held-out volumes (``heldout_dir``).

    The network is switched to eval mode for the measurement (the codebook is not updated) and back.

    Args:
        autoencoder: the VQ-GAN being trained (wrapped in DDP or not).
        dataset: held-out volumes, preprocessed without random transforms; items hold an ``"image"`` (1, H, W, D).
        interval: iterations between measurements.
        log_dir: TensorBoard folder; None logs only.
        device: where to run the reconstructions.
        max_volumes: how many held-out volumes to use (the first ones).
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        dataset: Dataset | None,
        interval: int = 500,
        log_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        max_volumes: int = 8,
    ) -> None:
        if interval < 1 or max_volumes < 1:
            raise ValueError(f"need interval >= 1 and max_volumes >= 1, got {interval} and {max_volumes}.")
        self.autoencoder = getattr(autoencoder, "module", autoencoder)
        self.dataset = dataset
        self.interval = interval
        self.log_dir = log_dir
        self.device = torch.device(device)
        self.max_volumes = max_volumes
        self.measured: list[tuple[int, float]] = []
        self._volumes: torch.Tensor | None = None
        self._writer = None

    def attach(self, engine: Engine) -> None:
        if self.dataset is None or len(self.dataset) == 0:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def volumes(self) -> torch.Tensor:
        if self._volumes is None:
            count = min(self.max_volumes, len(self.dataset))
            self._volumes = torch.stack([torch.as_tensor(self.dataset[i]["image"]).float() for i in range(count)])
        return self._volumes

    @torch.no_grad()
    def measure(self) -> float:
        """Mean PSNR (dB, range [-1, 1]) of the quantised reconstructions of the held-out volumes."""
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            values = []
            for volume in self.volumes():
                volume = volume[None].to(self.device)
                rebuilt = self.autoencoder(volume)[0].float().clamp(-1, 1)
                mse = (rebuilt - volume).square().mean().clamp_min(1e-12)
                values.append(float(10 * torch.log10(4.0 / mse)))
        finally:
            self.autoencoder.train(was_training)
        return sum(values) / len(values)

    def __call__(self, engine: Engine) -> None:
        if self.measured and self.measured[-1][0] == engine.state.iteration:
            return  # the last iteration is also a multiple of the interval
        psnr = self.measure()
        self.measured.append((engine.state.iteration, psnr))
        logger.info("iteration %d: held-out reconstruction PSNR %.2f dB (%d volumes)", engine.state.iteration, psnr, len(self.volumes()))
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            self._writer.add_scalar("heldout/psnr_db", psnr, engine.state.iteration)
            self._writer.flush()

    def close(self, engine: Engine | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CodebookCollapseWarning:
    """Warn (once) when the codebook has collapsed: for ``patience`` iterations in a row, the batches used fewer than
    ``min_usage`` of the codes, or their perplexity (the effective number of codes) stayed below ``min_perplexity``.

    Reads the ``codebook_usage`` and ``perplexity`` that ``VQGANTrainer`` puts in ``engine.state.output["losses"]``.
    A collapsed codebook encodes every volume with a handful of codes: reconstructions blur and the diffusion model
    has little to learn. The warning names the numbers and what usually helps.

    Args:
        min_usage: fraction of the codes a batch should use.
        min_perplexity: effective number of codes a batch should use.
        patience: iterations in a row below either before warning.
    """

    def __init__(self, min_usage: float = 0.01, min_perplexity: float = 8.0, patience: int = 200) -> None:
        if not 0 <= min_usage < 1 or min_perplexity < 0 or patience < 1:
            raise ValueError(f"need 0 <= min_usage < 1, min_perplexity >= 0, patience >= 1; got {min_usage}, {min_perplexity}, {patience}.")
        self.min_usage = min_usage
        self.min_perplexity = min_perplexity
        self.patience = patience
        self.below = 0
        self.warned = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @staticmethod
    def _value(losses: dict, name: str) -> float | None:
        value = losses.get(name)
        return float(value) if value is not None else None

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        losses = output.get("losses", {}) if isinstance(output, dict) else {}
        usage, perplexity = self._value(losses, "codebook_usage"), self._value(losses, "perplexity")
        if usage is None or perplexity is None:
            return
        self.below = self.below + 1 if usage < self.min_usage or perplexity < self.min_perplexity else 0
        if self.below >= self.patience and not self.warned:
            self.warned = True
            logger.warning(
                "the VQ-GAN codebook has collapsed: for %d iterations the batches used %.2f%% of the codes (perplexity "
                "%.1f). Reconstructions will be blurry. Lower the codebook's decay (autoencoder_def#decay), raise "
                "dead_code_threshold, or lower the learning rate, and check the data.",
                self.patience, 100 * usage, perplexity,
            )


class ConstantReconstructionError(RuntimeError):
    """The VQ-GAN's reconstructions stayed constant: its decoder learns nothing more."""


class StopOnConstantReconstruction:
    """Raise ``ConstantReconstructionError`` when the reconstructions have been constant for ``patience`` iterations.

    A decoder whose output no longer depends on its input gets no useful gradient, and the rest of the run would
    train nothing: typically a ``TANH`` output activation saturated at -1 on the background within the first
    iterations (seen with learning rate 1e-3 at compression 4, ``benchmarks/convergence_64_compression_4_long.md``),
    after which the codebook collapses too. A reconstruction counts as constant when the standard deviation of its
    voxels is at most ``tolerance`` times that of its input, for every volume of the batch; an untrained decoder's
    output varies far more than that. Under torchrun the ranks agree on it each iteration (all of them stop at once).
    Reads ``image`` and ``pred`` of the ``VQGANTrainer``'s output. Like ``StopOnNonFiniteLoss`` it raises, so no
    final checkpoint of the dead weights is written.

    Args:
        tolerance: the largest standard deviation, relative to the input's, of a reconstruction taken as constant.
        patience: iterations in a row with constant reconstructions before stopping.
    """

    def __init__(self, tolerance: float = 1e-4, patience: int = 50) -> None:
        if not 0 < tolerance < 1 or patience < 1:
            raise ValueError(f"need 0 < tolerance < 1 and patience >= 1, got {tolerance} and {patience}.")
        self.tolerance = tolerance
        self.patience = patience
        self.constant = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self.constant = 0

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or Keys.PRED not in output or Keys.IMAGE not in output:
            return
        reconstruction = output[Keys.PRED].detach().float().flatten(1)
        spread = reconstruction.std(dim=1)
        reference = output[Keys.IMAGE].detach().float().flatten(1).std(dim=1)
        constant = torch.tensor(int(bool((spread <= self.tolerance * reference).all())), device=spread.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # constant on every rank
            torch.distributed.all_reduce(constant, op=torch.distributed.ReduceOp.MIN)
        self.constant = self.constant + 1 if bool(constant) else 0
        if self.constant >= self.patience:
            low, high = float(reconstruction.min()), float(reconstruction.max())
            saturated = min(abs(low), abs(high)) > 0.999  # at +-1, where a TANH output saturates
            cause = (
                "at +-1 a TANH output activation has saturated: lower the learning rate (lr), or train without one "
                "(autoencoder_def#output_act null, the bundles' default)" if saturated else
                "its output no longer depends on its input: lower the learning rate (lr), and check the data"
            )
            raise ConstantReconstructionError(
                f"training stopped at iteration {engine.state.iteration} (epoch {engine.state.epoch}): for "
                f"{self.patience} iterations the VQ-GAN's reconstructions were constant (this batch's between {low:.4g} "
                f"and {high:.4g}), so the rest of the run would learn nothing; {cause}. No final checkpoint is written."
            )

"""The VQ-GAN training stage on MONAI's ignite ``Trainer``.

MONAI's ``AdversarialTrainer`` trains one generator against one discriminator with a reconstruction loss. The
Medical Diffusion VQ-GAN needs more: the autoencoder returns a commitment loss besides the reconstruction, two
discriminators (a random depth slice and the whole volume) with feature matching, adversarial terms that start
after a given iteration, and gradient clipping (Khader et al., Sci Rep 2023, Sec. 2.3 "VQ-GAN"; the settings of
Supplementary Table 1). The objective itself lives in ``common.losses.VQGANLoss``; with its scale-equivariance term
on, the autoencoder's forward pass also decodes the pooled latent.

Beyond the paper, the last ``frozen_codebook_iterations`` can train the decoder alone on a frozen encoder and
codebook: the EMA codebook moves (and restarts dead codes) at every step until the end, so the decoder always lags
behind the codes it will decode; this fits it once to the final codes (a decoder fine-tuned with its encoder
frozen, as Stable Diffusion's autoencoder decoders were, there without a codebook).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.networks.nets import VQVAE
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from common.losses import VQGANLoss

__all__ = ["VQGANTrainer", "last_decoder_weight"]


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """CPU convolutions without oneDNN inside the block (only that flag: ``torch.backends.mkldnn.flags`` also sets
    its TF32 flag, with a warning on every call)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def last_decoder_weight(network: torch.nn.Module) -> torch.Tensor:
    """The last weight (a parameter of two or more dimensions) of the autoencoder's ``decoder``, where
    ``VQGANLoss.adversarial_balance`` compares gradients (unwrapping ``DistributedDataParallel``)."""
    decoder = getattr(getattr(network, "module", network), "decoder", None)
    weights = [p for p in decoder.parameters() if p.ndim > 1] if decoder is not None else []
    if not weights:
        raise ValueError(f"adaptive_adversarial_weight needs an autoencoder with a decoder holding weights; "
                         f"{type(network).__name__} has none.")
    return weights[-1]


class VQGANTrainer(Trainer):
    """Alternating autoencoder / discriminator updates of the Medical Diffusion VQ-GAN.

    Each iteration updates the autoencoder on ``loss_function.generator_loss``; once the adversarial terms are
    active (after ``loss_function.adversarial_start`` iterations) it also updates both discriminators on
    ``loss_function.discriminator_loss``. ``engine.state.output`` holds the input (``image``), the
    reconstruction (``pred``), the autoencoder loss (``loss``) and ``losses``, a dict of every loss term plus
    the codebook's ``perplexity``, ``codebook_usage`` (fraction of codes used in the batch),
    ``codebook_restarts`` (dead codes re-seeded this step; these two are left out while the codebook is frozen) and
    ``codebook_frozen`` (1 in the last ``frozen_codebook_iterations``), for ``StatsHandler`` /
    ``TensorBoardStatsHandler``.

    Args:
        device: device of the networks.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with an ``image`` key (B, C, H, W, D).
        network: the VQ-GAN (``common.networks.VQGAN``; ``forward`` returns reconstruction and commitment loss, and
            with ``latent_downsample`` the decoding of the pooled latent; a plain MONAI ``VQVAE`` serves when
            ``loss_function.scale_equivariance_weight`` is 0).
        optimizer: optimizer of ``network``.
        loss_function: the objective, holding both discriminators. With its ``adaptive_adversarial_weight`` on, the
            network's decoder must hold weights (``last_decoder_weight``), checked here.
        discriminator_optimizer: one optimizer over the parameters of both discriminators.
        epoch_length: iterations per epoch; defaults to the loader's length.
        gradient_clip: max norm of the gradients of each update (the paper: 1.0); 0 disables clipping.
        amp: mixed precision: ``amp_dtype``, by default float16 (with loss scaling) on CUDA and bfloat16 elsewhere.
            Under bfloat16 on a CPU the steps run without oneDNN: with torch 2.13.0+cpu on an AMD EPYC (Zen 4),
            its bfloat16 3D-convolution weight gradients now and then held a few non-finite values from finite
            inputs (the tiny VQ-GAN step of ``benchmarks/gpu_check.py`` ended in NaN for 2 of 40 seeds at 2
            threads, 12 of 40 at 3, other seeds on each run; 0 of 80 without oneDNN). PyTorch's own kernels are
            slower but sound.
        amp_dtype: "float16" (loss scaling on CUDA) or "bfloat16" (no scaling needed); None for the default above.
        frozen_codebook_iterations: the last this many iterations of the run (of ``max_epochs`` x ``epoch_length``)
            update the decoder and the discriminators only: the codebook stops its EMA updates and dead-code
            restarts, and the encoder's gradients are dropped before the step (still computed, so that
            ``DistributedDataParallel`` sees every parameter used; ``gradient_clip`` then bounds the decoder's
            gradients alone). 0, the paper's, trains everything to the end. The latents the diffusion model learns
            are fixed from the first of these iterations on. Must be fewer than the run's iterations.
        train_handlers: ignite handlers with ``attach(engine)``.
        prepare_batch: how to take the image from a batch.
        non_blocking: non-blocking host-to-device copies.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: VQVAE,
        optimizer: Optimizer,
        loss_function: VQGANLoss,
        discriminator_optimizer: Optimizer,
        epoch_length: int | None = None,
        gradient_clip: float = 1.0,
        amp: bool = False,
        amp_dtype: str | None = None,
        frozen_codebook_iterations: int = 0,
        train_handlers: Sequence | None = None,
        prepare_batch: Callable = default_prepare_batch,
        non_blocking: bool = False,
    ) -> None:
        if gradient_clip < 0:
            raise ValueError(f"gradient_clip must be >= 0, got {gradient_clip}.")
        if isinstance(frozen_codebook_iterations, bool) or not isinstance(frozen_codebook_iterations, numbers.Integral) \
                or frozen_codebook_iterations < 0:
            raise ValueError(f"frozen_codebook_iterations must be an integer >= 0, got {frozen_codebook_iterations!r}.")
        device = torch.device(device)
        if amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {amp_dtype!r}.")
        dtype = getattr(torch, amp_dtype) if amp_dtype else (torch.float16 if device.type == "cuda" else torch.bfloat16)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
            amp_kwargs={"device_type": device.type, "dtype": dtype},
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.discriminator_optimizer = discriminator_optimizer
        self.gradient_clip = gradient_clip
        self.frozen_codebook_iterations = int(frozen_codebook_iterations)
        if self.frozen_codebook_iterations:
            self._check_frozen_codebook_iterations()
        # where the adversarial terms are balanced against the reconstruction, found once (the same Parameter object
        # all training: loading a checkpoint copies into it)
        self.balance_layer = last_decoder_weight(network) if loss_function.adaptive_adversarial_weight else None
        use_scaler = amp and device.type == "cuda" and dtype == torch.float16
        self.onednn = not (amp and device.type == "cpu" and dtype == torch.bfloat16)  # see ``amp``
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.discriminator_scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _total_iterations(self) -> int:
        return self.state.max_epochs * self.state.epoch_length

    def _check_frozen_codebook_iterations(self) -> None:
        """The frozen phase needs a known run length and must leave iterations that train the encoder and codebook."""
        if not self.state.epoch_length:
            raise ValueError("frozen_codebook_iterations needs the run's length: give epoch_length, or a loader with a length.")
        total = self._total_iterations()
        if self.frozen_codebook_iterations >= total:
            raise ValueError(
                f"frozen_codebook_iterations ({self.frozen_codebook_iterations}) must be fewer than the run's "
                f"{total} iterations (max_epochs {self.state.max_epochs} x {self.state.epoch_length} per epoch): "
                "the encoder and the codebook would never train."
            )

    def codebook_frozen(self, iteration: int) -> bool:
        """Whether ``iteration`` (1-based) is one of the run's last ``frozen_codebook_iterations``."""
        return iteration > self._total_iterations() - self.frozen_codebook_iterations

    def _step(self, loss: torch.Tensor, optimizer: Optimizer, scaler: torch.amp.GradScaler | None,
              frozen: Sequence[torch.nn.Parameter] = ()) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        for parameter in frozen:  # no gradient: the optimizer leaves it (and its moments) as they are
            parameter.grad = None
        if self.gradient_clip:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.gradient_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def _iteration(self, engine: VQGANTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        with contextlib.nullcontext() if engine.onednn else _without_onednn():
            return self._update(engine, batchdata)

    def _update(self, engine: VQGANTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """The autoencoder step and, once the adversarial terms are active, the discriminators' step."""
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images = batch[0]
        iteration = engine.state.iteration
        slice_index = torch.randint(images.shape[-1], (images.shape[0],), device=images.device)
        losses = engine.loss_function

        autoencoder = getattr(engine.network, "module", engine.network)  # unwrap DistributedDataParallel
        frozen = engine.frozen_codebook_iterations > 0 and engine.codebook_frozen(iteration)
        engine.network.train()
        if frozen:  # the codebook neither moves nor restarts codes; the encoder's gradients are dropped below
            autoencoder.quantizer.eval()
        losses.train()
        engine.optimizer.zero_grad(set_to_none=True)
        discriminators = (losses.image_discriminator, losses.volume_discriminator)
        for discriminator in discriminators:  # the generator step needs no discriminator gradients
            discriminator.requires_grad_(False)
        factor = 1
        if losses.scale_equivariance_weight:  # the latent's size: the image's over the VQGAN's compression
            compression = getattr(engine.network, "module", engine.network).downsample_factor
            factor = losses.scale_factor([size // compression for size in images.shape[2:]])
        balanced = engine.balance_layer is not None and losses.adversarial_active(iteration)
        last_layer = {"last_layer": engine.balance_layer} if balanced else {}
        with torch.autocast(**engine.amp_kwargs, enabled=engine.amp):
            reconstruction, commitment, *pooled = engine.network(images, factor) if factor > 1 else engine.network(images)
            terms = losses.generator_loss(images, reconstruction, commitment, slice_index, iteration, *pooled, **last_layer)
        engine._step(terms["loss"], engine.optimizer, engine.scaler, tuple(autoencoder.encoder.parameters()) if frozen else ())
        for discriminator in discriminators:
            discriminator.requires_grad_(True)

        if losses.adversarial_active(iteration):
            engine.discriminator_optimizer.zero_grad(set_to_none=True)
            with torch.autocast(**engine.amp_kwargs, enabled=engine.amp):
                disc_terms = losses.discriminator_loss(images, reconstruction, slice_index)
            engine._step(disc_terms["loss"], engine.discriminator_optimizer, engine.discriminator_scaler)
            terms.update({k: v for k, v in disc_terms.items() if k != "loss"})
            terms["disc_loss"] = disc_terms["loss"]

        codebook = autoencoder.quantizer
        logged = {key: float(value.detach()) for key, value in terms.items()}
        logged["perplexity"] = float(codebook.perplexity)
        if not frozen:  # a frozen codebook measures no usage and restarts no codes
            logged["codebook_usage"] = float(getattr(codebook.quantizer, "last_usage", float("nan")))
            logged["codebook_restarts"] = float(getattr(codebook.quantizer, "last_restarts", 0))
        logged["codebook_frozen"] = float(frozen)
        engine.state.output = {
            Keys.IMAGE: images,
            Keys.PRED: reconstruction.detach(),
            Keys.LOSS: terms["loss"].detach(),
            "losses": logged,
        }
        return engine.state.output

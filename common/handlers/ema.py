"""Exponential moving average of a network's weights, updated as the papers' code does it (Medical Diffusion and
Med-DDPM both sample from an EMA copy of the denoiser: decay 0.995, every 10 steps, from step 2000)."""

from __future__ import annotations

import copy

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["DelayedEMAHandler"]


class DelayedEMAHandler:
    """Keep ``ema_network``, an EMA copy of ``network``, during training.

    Before ``start_iteration`` the copy simply follows the network; from then on, every ``every`` iterations,
    ``ema = decay * ema + (1 - decay) * weights`` (the paper: decay 0.995, every 10 optimizer steps, from step
    2000). Buffers are copied as they are. Sample from ``ema_network``. Iterations are the engine's: with gradient
    accumulation over k batches, multiply the paper's step counts by k. Unlike ignite's ``EMAHandler`` the copy
    simply follows the network until ``start_iteration``, as in the paper's code.

    Args:
        network: the network being trained.
        decay: EMA decay in (0, 1).
        every: iterations between updates.
        start_iteration: iteration before which the copy equals the network.
    """

    def __init__(self, network: nn.Module, decay: float = 0.995, every: int = 10, start_iteration: int = 2000) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}.")
        if every < 1 or start_iteration < 0:
            raise ValueError(f"need every >= 1 and start_iteration >= 0, got {every} and {start_iteration}.")
        self.network = getattr(network, "module", network)  # unwrap DistributedDataParallel
        self.decay = decay
        self.every = every
        self.start_iteration = start_iteration
        self.ema_network = copy.deepcopy(self.network).eval().requires_grad_(False)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if iteration < self.start_iteration:
            self.ema_network.load_state_dict(self.network.state_dict())
        elif iteration % self.every == 0:
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step of the parameters; buffers are copied."""
        for ema_param, param in zip(self.ema_network.parameters(), self.network.parameters()):
            ema_param.lerp_(param.detach(), 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.ema_network.buffers(), self.network.buffers()):
            ema_buffer.copy_(buffer)

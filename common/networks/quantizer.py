"""An EMA codebook that starts from the data, restarts dead codes and searches in bounded memory.

MONAI's ``EMAQuantizer`` is the base: same buffers, same EMA update and commitment loss, so state dicts stay
compatible with ``monai.networks.nets.VQVAE``. What it adds is what the Medical Diffusion VQ-GAN needs at
16384 codes: the codebook is initialised from the first training batch's encoder outputs, codes that fall out
of use are re-seeded from current encoder outputs (usage must not collapse), and the nearest-code search holds
no (vectors x codes) distance or one-hot matrix at once (``common.networks.nearest_code``).

The EMA codebook is the one of Khader et al., Sci Rep 2023, Sec. 2.3 "VQ-GAN" (after van den Oord et al.,
VQ-VAE); initialisation from data and dead-code restart are what the authors' code does besides.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.networks.layers.vector_quantizer import EMAQuantizer

from .nearest_code import BACKENDS, nearest_code

__all__ = ["CodebookQuantizer"]


class CodebookQuantizer(EMAQuantizer):
    """EMA vector quantizer with data-dependent initialisation, dead-code restart and a chunked search.

    Args:
        spatial_dims: number of spatial dimensions of the input (2 or 3).
        num_embeddings: number of codes.
        embedding_dim: length of each code (the encoder's output channels).
        commitment_cost: weight of the commitment loss.
        decay: EMA decay of the codebook.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        dead_code_threshold: a code whose EMA cluster size (its smoothed use per step) falls below this is
            re-seeded from a random encoder output of the current batch; 0 disables restarts.
        max_distances: how many vector-code distances one search chunk of the torch backend may hold (its memory
            bound).
        search_backend: "auto" (faiss on the CPU when ``faiss-cpu`` is installed, else chunked torch), "faiss" or
            "torch"; see ``common.networks.nearest_code``. All give the same codes.
        ddp_sync: under ``torch.distributed``, sum the EMA statistics over ranks and take initial and
            restarted codes from rank 0 so every rank keeps the same codebook.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 1.0,
        max_distances: int = 2**20,
        search_backend: str = "auto",
        ddp_sync: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            epsilon=epsilon,
            ddp_sync=ddp_sync,
        )
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}.")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}.")
        if max_distances < num_embeddings:
            raise ValueError(f"max_distances ({max_distances}) must hold at least one row of {num_embeddings} codes.")
        if search_backend not in BACKENDS:
            raise ValueError(f"search_backend must be one of {BACKENDS}, got {search_backend!r}.")
        self.dead_code_threshold = dead_code_threshold
        self.max_distances = max_distances
        self.search_backend = search_backend
        self.register_buffer("initialized", torch.tensor(False))
        self.initialized: torch.Tensor
        self.last_usage = 0.0
        self.last_restarts = 0

    def search(self, flat_inputs: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every row of ``flat_inputs`` (N, embedding_dim)."""
        return nearest_code(flat_inputs, self.embedding.weight, self.max_distances, self.search_backend)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``inputs`` (B, C, spatial...); in training mode also update the codebook."""
        with torch.autocast(inputs.device.type, enabled=False):
            inputs_f = inputs.float()
            flat = inputs_f.movedim(1, -1).reshape(-1, self.embedding_dim).detach()
            if self.training and not bool(self.initialized):
                self.initialize_from(flat)
            indices = self.search(flat)
            encoding_indices = indices.view(inputs.shape[0], *inputs.shape[2:])
            quantized = self.embed(encoding_indices)
            if self.training:
                self.update_codebook(flat, indices)
        loss = self.commitment_cost * F.mse_loss(quantized.detach(), inputs_f)
        quantized = inputs_f + (quantized - inputs_f).detach()
        return quantized, loss, encoding_indices

    @torch.no_grad()
    def initialize_from(self, flat: torch.Tensor) -> None:
        """Set every code to a random encoder output of this batch (the paper's data-dependent start)."""
        codes = self._random_rows(flat, self.num_embeddings)
        self.embedding.weight.data.copy_(codes)
        self.ema_w.data.copy_(codes)
        self.ema_cluster_size.data.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA update from the code assignments (no one-hot matrix), then restart codes that went dead."""
        counts = torch.bincount(indices, minlength=self.num_embeddings).float()
        self.last_usage = float((counts > 0).float().mean())
        dw = torch.zeros_like(self.ema_w).index_add_(0, indices, flat)
        if self.ddp_sync:
            self.distributed_synchronization(counts, dw)
        self.ema_cluster_size.data.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_w.data.mul_(self.decay).add_(dw, alpha=1 - self.decay)
        n = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.epsilon) / (n + self.num_embeddings * self.epsilon) * n
        self.embedding.weight.data.copy_(self.ema_w / smoothed[:, None])
        self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Re-seed codes whose EMA cluster size is below ``dead_code_threshold`` from random encoder outputs."""
        self.last_restarts = 0
        if self.dead_code_threshold <= 0:
            return
        dead = (self.ema_cluster_size < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        new_codes = self._random_rows(flat, dead.numel())
        self.embedding.weight.data[dead] = new_codes
        # a restarted code starts as if it had been used `threshold` times by exactly that vector
        self.ema_cluster_size.data[dead] = self.dead_code_threshold
        self.ema_w.data[dead] = new_codes * self.dead_code_threshold
        self.last_restarts = int(dead.numel())

    def _random_rows(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` random rows of ``flat`` (with replacement only when there are too few), equal on all ranks."""
        if flat.shape[0] >= count:
            rows = flat[torch.randperm(flat.shape[0], device=flat.device)[:count]]
        else:
            rows = flat[torch.randint(flat.shape[0], (count,), device=flat.device)]
        rows = rows.contiguous()
        if self.ddp_sync and dist.is_available() and dist.is_initialized():
            dist.broadcast(rows, src=0)
        return rows

"""Exact nearest-code search in bounded memory, with the fastest backend the device has.

The VQ-GAN looks up, for every latent vector, the nearest of 16384 codes: 65,536 x 16,384 distances per knee
batch, 4 GiB as one matrix. ``faiss`` (``faiss-cpu``, optional) does it on the CPU with a fused kernel that never
holds the matrix; otherwise chunks of at most ``max_distances`` distances are computed with one ``addmm`` each
(the vectors' own norms are left out: they do not change which code is nearest) and reduced by ``argmin``.
Both give the code a full distance matrix's ``argmin`` gives. Under ``torch.jit.trace`` the torch search is one
unchunked ``addmm`` (a chunk loop would be frozen to the tracing input's size), so traced exports hold the full
matrix of their input.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BACKENDS", "faiss_available", "nearest_code"]

BACKENDS = ("auto", "faiss", "torch")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_search(vectors: torch.Tensor, codes: torch.Tensor, max_distances: int) -> torch.Tensor:
    codes_sq = codes.square().sum(1)
    if torch.jit.is_tracing():  # a traced chunk loop would be unrolled for the tracing input's size only
        return torch.addmm(codes_sq, vectors, codes.t(), alpha=-2).argmin(dim=1)
    chunk = max(1, max_distances // codes.shape[0])
    indices = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
    for start in range(0, vectors.shape[0], chunk):
        distances = torch.addmm(codes_sq, vectors[start : start + chunk], codes.t(), alpha=-2)
        indices[start : start + chunk] = distances.argmin(dim=1)
    return indices


def _faiss_search(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    import faiss

    index = faiss.IndexFlatL2(codes.shape[1])
    index.add(np.ascontiguousarray(codes.detach().cpu().numpy(), dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(vectors.detach().cpu().numpy(), dtype=np.float32), 1)
    return torch.from_numpy(found[:, 0]).long()


def nearest_code(vectors: torch.Tensor, codes: torch.Tensor, max_distances: int = 2**20, backend: str = "auto") -> torch.Tensor:
    """Index of the nearest row of ``codes`` (K, D) for every row of ``vectors`` (N, D), in float32.

    ``backend``: "faiss" (CPU tensors, needs ``faiss-cpu``), "torch" (any device, chunked), or "auto" (faiss for
    CPU tensors when it is installed, else torch). While a network is traced or scripted for export the torch
    search is used whatever ``backend`` says: faiss works on NumPy arrays, which a traced graph cannot record.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if vectors.ndim != 2 or codes.ndim != 2 or vectors.shape[1] != codes.shape[1]:
        raise ValueError(f"need (N, D) vectors and (K, D) codes, got {tuple(vectors.shape)} and {tuple(codes.shape)}.")
    if torch.jit.is_tracing() or torch.jit.is_scripting():  # an export (ckpt_export) records torch ops only
        return _torch_search(vectors.float(), codes.float(), max_distances)
    use_faiss = backend == "faiss" or (backend == "auto" and vectors.device.type == "cpu" and faiss_available())
    if use_faiss:
        if not faiss_available():
            raise ImportError("backend 'faiss' needs the faiss-cpu package: pip install faiss-cpu (or use backend 'torch').")
        found = _faiss_search(vectors.float(), codes.float())
        if bool((found < 0).any()):  # faiss finds no neighbour for a NaN vector and answers -1
            raise FloatingPointError(
                f"{int((found < 0).sum())} of {vectors.shape[0]} vectors given to the codebook search are not finite "
                "(NaN or infinite encoder outputs or codes); the training has diverged or the input holds NaN.")
        return found.to(vectors.device)
    return _torch_search(vectors.float(), codes.float(), max_distances)

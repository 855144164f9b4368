from __future__ import annotations

import pytest
import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer

from common.networks import CodebookQuantizer
from common.networks.nearest_code import nearest_code


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
def test_every_search_backend_picks_the_same_codes_as_the_full_matrix(backend):
    quantizer = CodebookQuantizer(3, num_embeddings=512, embedding_dim=8, max_distances=512 * 37, search_backend=backend)
    latents = torch.randn(2, 8, 6, 7, 5)
    reference = EMAQuantizer.quantize(quantizer, latents)[2]  # MONAI's full (vectors x codes) matrix
    flat = latents.movedim(1, -1).reshape(-1, 8)
    assert torch.equal(quantizer.search(flat).view(reference.shape), reference)
    many, codes = torch.randn(20000, 8), torch.randn(4096, 8)
    full = torch.cdist(many.double(), codes.double()).argmin(1)
    assert torch.equal(nearest_code(many, codes, max_distances=4096 * 100, backend=backend), full)


def test_without_faiss_auto_falls_back_and_faiss_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr("common.networks.nearest_code.faiss_available", lambda: False)
    vectors, codes = torch.randn(300, 4), torch.randn(50, 4)
    assert torch.equal(nearest_code(vectors, codes, backend="auto"), torch.cdist(vectors, codes).argmin(1))
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        nearest_code(vectors, codes, backend="faiss")
    with pytest.raises(ValueError, match="backend must be one of"):
        nearest_code(vectors, codes, backend="gpu")


def test_ema_update_matches_monai_one_hot_update():
    ours = CodebookQuantizer(3, num_embeddings=32, embedding_dim=4, dead_code_threshold=0.0)
    ours.initialized.fill_(True)  # keep the random start so both begin from the same codebook
    monai_quantizer = EMAQuantizer(3, num_embeddings=32, embedding_dim=4, decay=0.99)
    monai_quantizer.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "initialized"})
    latents = torch.randn(2, 4, 4, 4, 4)
    out_ours = ours.train()(latents)
    out_monai = monai_quantizer.train()(latents)
    for a, b in zip(out_ours, out_monai):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ours.embedding.weight, monai_quantizer.embedding.weight, atol=1e-6)
    assert torch.allclose(ours.ema_cluster_size, monai_quantizer.ema_cluster_size)


def test_codebook_starts_from_the_first_training_batch():
    quantizer = CodebookQuantizer(3, num_embeddings=16, embedding_dim=4, dead_code_threshold=0.0).train()
    latents = torch.randn(1, 4, 4, 4, 4) * 5 + 10  # far from the N(0, 1) initial codes
    assert not quantizer.initialized
    quantizer(latents)
    assert quantizer.initialized
    flat = latents.movedim(1, -1).reshape(-1, 4)
    # every code is (the EMA of) encoder outputs: within the data's range, not near the N(0, 1) start
    assert quantizer.embedding.weight.min() > flat.min() - 1e-4
    # eval mode does not initialise or update
    fresh = CodebookQuantizer(3, num_embeddings=16, embedding_dim=4).eval()
    before = fresh.embedding.weight.clone()
    fresh(latents)
    assert not fresh.initialized and torch.equal(before, fresh.embedding.weight)


def _collapsed(threshold: float) -> CodebookQuantizer:
    """A trained-looking codebook where all data falls on code 0 and 31 codes sit far away, unused."""
    quantizer = CodebookQuantizer(3, num_embeddings=32, embedding_dim=4, dead_code_threshold=threshold)
    quantizer.initialized.fill_(True)
    codes = torch.full((32, 4), 100.0)
    codes[0] = 0.0
    quantizer.embedding.weight.data.copy_(codes)
    quantizer.ema_w.data.copy_(codes)
    quantizer.ema_cluster_size.data.fill_(1.0)
    return quantizer.train()


def _codes_in_use(quantizer: CodebookQuantizer) -> int:
    latents = torch.randn(2, 4, 4, 4, 4)
    _, _, indices = quantizer.eval()(latents)
    return int(indices.unique().numel())


def test_dead_code_restart_brings_unused_codes_back_into_use():
    quantizer = _collapsed(threshold=1.0)
    assert _codes_in_use(quantizer) == 1
    quantizer.train()
    for _ in range(5):
        quantizer(torch.randn(2, 4, 4, 4, 4))
    assert _codes_in_use(quantizer) > 16

    without_restart = _collapsed(threshold=0.0)
    for _ in range(5):
        without_restart(torch.randn(2, 4, 4, 4, 4))
    assert _codes_in_use(without_restart) == 1


def test_usage_is_reported():
    quantizer = CodebookQuantizer(3, num_embeddings=64, embedding_dim=4).train()
    quantizer(torch.randn(1, 4, 4, 4, 4))
    assert 0.0 < quantizer.last_usage <= 1.0


def test_argument_errors():
    with pytest.raises(ValueError, match="decay"):
        CodebookQuantizer(3, 16, 4, decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        CodebookQuantizer(3, 16, 4, dead_code_threshold=-1)
    with pytest.raises(ValueError, match="max_distances"):
        CodebookQuantizer(3, 16, 4, max_distances=8)


def test_a_nan_vector_in_the_faiss_search_is_a_clear_error():
    from common.networks.nearest_code import faiss_available, nearest_code

    if not faiss_available():
        pytest.skip("faiss-cpu is not installed")
    vectors = torch.randn(10, 8)
    vectors[3] = float("nan")  # faiss answers -1 for it, which an embedding lookup would turn into an IndexError
    with pytest.raises(FloatingPointError, match="1 of 10 vectors given to the codebook search are not finite"):
        nearest_code(vectors, torch.randn(5, 8), backend="faiss")

"""SyntheticDataEvaluator: metrics.json and pictures, and an audit that flags copies of training volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import Dataset
from PIL import Image

from common.evaluation import SyntheticDataEvaluator, metrics
from common.io import save_nifti
from common.networks import CodebookRangeAutoencoder
from common.sampling import volume_affine
from tests.helpers import tiny_vqgan

SIZE = (32, 32, 32)


def _real_volumes(count: int = 6) -> list[torch.Tensor]:
    """Smooth blobs of varying size and position, like the same anatomy in different people."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SIZE], indexing="ij"))
    volumes = []
    for _ in range(count):
        centre = rng.uniform(-0.2, 0.2, size=(3, 1, 1, 1))
        radius = rng.uniform(0.4, 0.7)
        blob = np.exp(-(((grid - centre) / radius) ** 2).sum(0)) * 2 - 1
        volumes.append(torch.as_tensor(blob[None], dtype=torch.float32))
    return volumes


def _write_samples(folder, volumes) -> None:
    files = []
    for index, volume in enumerate(volumes):
        name = f"sample_{index:04d}_seed{index}.nii.gz"
        save_nifti(np.asarray(volume[0]), volume_affine(SIZE, (2.0, 2.0, 2.0)), folder / name)
        files.append(name)
    (folder / "samples.json").write_text(json.dumps({"files": files, "seeds": list(range(len(files)))}))


def _evaluator(tmp_path, samples, **kwargs) -> SyntheticDataEvaluator:
    real = _real_volumes()
    (tmp_path / "samples").mkdir(parents=True, exist_ok=True)
    _write_samples(tmp_path / "samples", samples)
    vqgan = tiny_vqgan(downsample_factor=4).train()
    vqgan(torch.stack(real[:2]))  # initialises the codebook from data
    dataset = Dataset([{"image": v, "name": f"real_{i}"} for i, v in enumerate(real)])
    return SyntheticDataEvaluator(tmp_path / "samples", dataset, tmp_path / "evaluation", CodebookRangeAutoencoder(vqgan), **kwargs)


def test_training_volumes_given_as_samples_are_flagged_as_copies(tmp_path):
    real = _real_volumes()
    samples = [real[4], real[1].flip(1)]  # a copy, and a mirror image (the training flip)
    result = _evaluator(tmp_path, samples).run()
    audit = result["memorisation_audit"]
    assert audit["near_copies"] == ["sample_0000_seed0.nii.gz", "sample_0001_seed1.nii.gz"]
    assert [(e["nearest_real"], e["flipped"]) for e in audit["samples"]] == [("real volume 4", False), ("real volume 1", True)]
    assert all(e["distance"] < 1e-3 for e in audit["samples"]) and audit["real_nearest_neighbour_median"] > 0.05
    assert result["diversity_ms_ssim"]["synthetic"] < 1.0


def test_independent_noise_is_not_flagged_and_every_metric_is_written(tmp_path):
    generator = torch.Generator().manual_seed(1)
    noise = [torch.rand(1, *SIZE, generator=generator) * 2 - 1 for _ in range(3)]
    result = _evaluator(tmp_path, noise).run()
    assert result["memorisation_audit"]["near_copies"] == []
    assert all(e["ratio_to_real_median"] > 1 for e in result["memorisation_audit"]["samples"])
    written = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    for key in ("diversity_ms_ssim", "intensity_histogram", "mmd", "fid", "slice_consistency_ssim", "reconstruction", "memorisation_audit", "seconds"):
        assert key in written, key
    assert "skipped" in written["fid"] and "fid_weights" in written["fid"]["skipped"]
    # noise is much more diverse, less consistent between slices and differently distributed than the blobs
    assert written["diversity_ms_ssim"]["synthetic"] < written["diversity_ms_ssim"]["real"]
    assert written["slice_consistency_ssim"]["synthetic"] < written["slice_consistency_ssim"]["real"]
    assert written["mmd"]["synthetic_vs_real"] > written["mmd"]["real_half_vs_half"]
    assert written["intensity_histogram"]["synthetic_vs_real"]["wasserstein"] > written["intensity_histogram"]["real_half_vs_half"]["wasserstein"]
    assert written["reconstruction"]["count"] == 6 and "not a held-out measure" in written["reconstruction"]["volumes"]
    for picture in ("samples_and_real", "adjacent_slices", "nearest_neighbours"):
        assert (tmp_path / "evaluation" / f"{picture}.png").stat().st_size > 1000
    assert written["pictures"]["training_curves"] is None  # no log_dir given


def test_clear_errors(tmp_path):
    evaluator = _evaluator(tmp_path, _real_volumes()[:2])
    (tmp_path / "samples" / "samples.json").unlink()
    with pytest.raises(FileNotFoundError, match="run inference"):
        evaluator.run()
    small = [torch.zeros(1, 16, 16, 16), torch.ones(1, 16, 16, 16)]
    evaluator = _evaluator(tmp_path / "small", [])
    _write_samples(tmp_path / "small" / "samples", small)
    with pytest.raises(ValueError, match=r"samples are \(16, 16, 16\) but the real volume real volume 0 is \(32, 32, 32\)"):
        evaluator.run()
    with pytest.raises(ValueError, match="copy_threshold"):
        _evaluator(tmp_path / "x", small, copy_threshold=1.5)


def test_duplicated_real_volumes_do_not_hide_copies(tmp_path):
    evaluator = _evaluator(tmp_path, [_real_volumes()[2], _real_volumes()[5]])
    real = _real_volumes()
    real[1] = real[0].flip(1)  # a mirror-image twin in the real data
    evaluator.real_dataset = Dataset([{"image": v} for v in real])
    audit = evaluator.run()["memorisation_audit"]
    assert audit["real_duplicates"] == 2 and audit["real_nearest_neighbour_median"] > 0.05
    assert len(audit["near_copies"]) == 2


def test_held_out_volumes_give_the_reconstruction_picture_the_held_out_diversity_and_the_ratios(tmp_path):
    real = _real_volumes(8)
    heldout = Dataset([{"image": v} for v in real[6:]])
    evaluator = _evaluator(tmp_path, [real[0] * 0.9, real[3] * 0.9, real[5] * 0.9], heldout_dataset=heldout)
    result = evaluator.run()
    assert result["reconstruction"]["count"] == 2 and result["reconstruction"]["volumes"] == "held-out volumes (heldout_dir)"
    diversity, ratios = result["diversity_ms_ssim"], result["ratios_to_real"]
    assert diversity["real_heldout"] == pytest.approx(metrics.mean_pairwise_ms_ssim(torch.stack(real[6:]), 100, 0)[0])
    assert ratios["diversity_compared_with"] == "held-out real volumes"
    assert ratios["diversity_ms_ssim"] == pytest.approx(diversity["synthetic"] / diversity["real_heldout"])
    assert ratios["slice_consistency_ssim"] == pytest.approx(result["slice_consistency_ssim"]["synthetic"] / result["slice_consistency_ssim"]["real"])
    assert ratios["histogram_wasserstein"] == pytest.approx(
        result["intensity_histogram"]["synthetic_vs_real"]["wasserstein"] / result["intensity_histogram"]["real_half_vs_half"]["wasserstein"]
    )
    picture = tmp_path / "evaluation" / "reconstructions.png"
    assert result["pictures"]["reconstructions"] == str(picture) and picture.stat().st_size > 10_000
    with Image.open(picture) as reconstructions, Image.open(tmp_path / "evaluation" / "adjacent_slices.png") as adjacent:
        assert reconstructions.size[1] > adjacent.size[1]  # 4 rows: 2 pairs

"""The evaluation metrics on volumes whose answers are known."""

from __future__ import annotations

import pytest
import torch

from common.evaluation import audit, metrics


def _volumes(count: int, size=(32, 32, 32), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, *size, generator=generator) * 2 - 1


@pytest.mark.parametrize("size", [(32, 32, 32), (64, 64, 64), (256, 256, 32)])
def test_ms_ssim_of_a_volume_with_itself_is_one_at_every_bundle_size(size):
    volume = torch.linspace(-1, 1, size[0] * size[1] * size[2]).reshape(1, 1, *size).sin()
    assert float(metrics.ms_ssim(volume, volume)) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics.ms_ssim(volume, -volume)) < 0.5


def test_ms_ssim_refuses_volumes_too_small_for_its_scales():
    with pytest.raises(ValueError, match="at least 25 voxels per axis"):
        metrics.ms_ssim(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16))


def test_diversity_is_lower_for_independent_noise_than_for_near_duplicates():
    noise = _volumes(4)
    duplicates = noise[:1].repeat(4, 1, 1, 1, 1) + 0.01 * _volumes(4, seed=1)
    diverse, pairs = metrics.mean_pairwise_ms_ssim(noise)
    assert pairs == 6 and diverse < 0.2
    assert metrics.mean_pairwise_ms_ssim(duplicates)[0] > 0.95
    assert metrics.mean_pairwise_ms_ssim(_volumes(6), max_pairs=4)[1] == 4


def test_histogram_and_mmd_are_zero_for_one_set_and_grow_with_a_shift():
    x = _volumes(6)
    assert metrics.histogram_distances(x, x) == {"wasserstein": 0.0, "jensen_shannon": 0.0}
    shifted = metrics.histogram_distances(x, (x + 1) / 2)  # uniform on [-1, 1] against uniform on [0, 1]
    assert shifted["wasserstein"] == pytest.approx(0.5, abs=0.02) and 0.3 < shifted["jensen_shannon"] < 1
    assert abs(metrics.mmd(x, _volumes(6, seed=3))) < 0.01
    assert metrics.mmd(x, _volumes(6, seed=4) + 0.5) == pytest.approx(0.25, abs=0.01)  # squared mean difference per voxel


def test_slice_consistency_is_high_for_smooth_depth_and_low_for_noise():
    h, w, d = torch.meshgrid(*[torch.linspace(0, 6.28, 32)] * 3, indexing="ij")
    smooth = (torch.sin(h) * torch.cos(w) * (1 + 0.2 * torch.sin(d))).reshape(1, 1, 32, 32, 32) * 0.8
    assert metrics.slice_consistency(smooth) > 0.95
    assert metrics.slice_consistency(_volumes(2)) < 0.1


def test_nearest_neighbours_find_copies_and_mirror_images():
    real = _volumes(5)
    queries = torch.cat([real[[3]], real[[1]].flip(2), _volumes(1, seed=9)])
    found = audit.nearest_neighbours(queries, real, flip_axis=0)
    assert (found[0].index, found[0].distance, found[0].flipped) == (3, pytest.approx(0.0, abs=1e-3), False)
    assert (found[1].index, found[1].distance, found[1].flipped) == (1, pytest.approx(0.0, abs=1e-3), True)
    assert found[2].distance > 0.7  # two independent uniform volumes differ by about sqrt(2/3)
    within = audit.nearest_neighbours(real, real, flip_axis=None, exclude_self=True)
    assert all(n.index != i and n.distance > 0.7 for i, n in enumerate(within))


def test_psnr_and_ssim_of_known_pairs():
    x = _volumes(2)
    assert torch.allclose(metrics.psnr(x, x + 0.02), torch.full((2,), 40.0), atol=1e-3)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-5)


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")  # a handful of volumes: a singular covariance
def test_fid_with_medicalnet_weights_from_a_local_file(tmp_path):
    from monai.networks.nets import resnet10

    network = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False)
    # as MedicalNet releases them: wrapped in DataParallel ("module.") with a segmentation head
    state = {f"module.{k}": v for k, v in network.state_dict().items()} | {"module.conv_seg.0.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, tmp_path / "resnet_10.pth")
    loaded = metrics.load_medicalnet(tmp_path / "resnet_10.pth", depth=10)
    real, noise = _volumes(6), _volumes(6, seed=5) * 0.1
    features_real = metrics.medicalnet_features(loaded, real)
    assert features_real.shape == (6, 512)
    assert metrics.fid(features_real, features_real) == pytest.approx(0.0, abs=1e-3)
    assert metrics.fid(metrics.medicalnet_features(loaded, noise + real.mean()), features_real) >= 0.0


def test_two_similar_brains_against_a_background_are_similar_at_every_scale(tmp_path):
    """SSIM's luminance term assumes non-negative intensities; on volumes in [-1, 1] with a -1 background it turned
    negative at the coarsest scale and made the MS-SSIM of two similar brains 0 (demo subjects 0 and 7: 0.0)."""
    from monai.bundle import ConfigParser

    from common.data import brain_demo_datalist
    from tests.bundles.bundle_runs import config_files

    parser = ConfigParser()
    parser.read_config(config_files("brain_mri", "train_autoencoder"))
    parser.update({"image_size": [32, 32, 32]})
    preprocessing = parser.get_parsed_content("evaluation_preprocessing")
    brains = [torch.as_tensor(preprocessing(dict(item))["image"])[None].float() for item in brain_demo_datalist(tmp_path, count=8)]
    assert float(metrics.ms_ssim(brains[0], brains[7])) > 0.6
    assert float(metrics.ssim(brains[0], brains[7])) > 0.5 and float(metrics.ms_ssim(brains[0], brains[0])) == pytest.approx(1.0)


def test_power_spectrum_holds_the_centred_volumes_power_by_frequency():
    from common.evaluation.metrics import power_spectrum

    volumes = torch.rand(2, 1, 8, 6, 4, generator=torch.Generator().manual_seed(0))
    power, frequency = power_spectrum(volumes)
    assert power.shape == (2, 8, 6, 4) and frequency.shape == (8, 6, 4)
    centred = volumes[:, 0].double() - volumes[:, 0].double().mean(dim=(1, 2, 3), keepdim=True)
    # Parseval: the spectrum's total is the number of voxels times the centred volume's energy; the mean is removed
    assert torch.allclose(power.flatten(1).sum(1), 8 * 6 * 4 * centred.square().flatten(1).sum(1))
    assert float(power[:, 0, 0, 0].abs().max()) < 1e-20 and float(frequency[0, 0, 0]) == 0.0
    assert float(frequency.max()) == pytest.approx((0.5**2 + 0.5**2 + 0.5**2) ** 0.5)  # the corner of the spectrum
    with pytest.raises(ValueError, match="volumes"):
        power_spectrum(torch.zeros(8, 6, 4))


def test_high_frequency_share_sees_blur_and_scores_identical_sets_alike():
    from monai.transforms import GaussianSmooth

    from common.evaluation.metrics import high_frequency_share

    generator = torch.Generator().manual_seed(0)
    volumes = torch.rand(3, 1, 24, 24, 24, generator=generator) * 2 - 1
    blurred = torch.stack([GaussianSmooth(sigma=1.0)(v) for v in volumes])
    sharp, soft = high_frequency_share(volumes), high_frequency_share(blurred)
    assert sharp.shape == (3,) and (soft < 0.5 * sharp).all()  # blur removes most of the power above 0.25 cycles
    assert torch.equal(high_frequency_share(volumes.clone()), sharp)  # identical sets: ratio exactly 1
    # a smooth blob has next to none; the share ignores the mean intensity
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))
    smooth = (-((grid - 11.5) ** 2).sum(0) / (2 * 4.0**2)).exp()[None, None] - 0.5
    assert float(high_frequency_share(smooth)) < 0.05
    assert torch.allclose(high_frequency_share(smooth + 0.3), high_frequency_share(smooth))
    with pytest.raises(ValueError, match="cutoff must be in"):
        high_frequency_share(volumes, cutoff=0.6)

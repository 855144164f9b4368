"""``common.deploy.BundleSynthesizer``: one volume per request from a packaged bundle, as the serving apps use it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from common.data import DatasetError
from common.deploy import BundleSynthesizer, SynthesisError
from tests.bundles.conftest import SIZE, head_labels


def test_an_unconditional_sample_of_a_latent_package(brain_package):
    synthesizer = BundleSynthesizer(brain_package.parent / "brain_mri", device="cpu", num_inference_steps=3)
    volume = synthesizer(seed=4)
    assert volume.image.shape == (32, 32, 32) and np.isfinite(volume.image).all() and volume.seed == 4
    assert -1 <= volume.image.min() < volume.image.max() <= 1
    assert np.allclose(np.abs(np.diag(volume.affine)[:3]), 2.7)  # the bundle's spacing (mm)
    assert np.array_equal(synthesizer(seed=4).image, volume.image) and not np.allclose(synthesizer(seed=5).image, volume.image)
    with pytest.raises(SynthesisError, match="brain_mri samples without a condition: it takes no label volume"):
        synthesizer("label.nii.gz")


def test_a_mask_conditioned_image_follows_the_users_label(semantic_package, tmp_path):
    labels = head_labels((5, 8, 8))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    path = tmp_path / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=10)
    volume = synthesizer(path, seed=1)
    assert volume.image.shape == (SIZE,) * 3 and np.allclose(volume.affine, affine)  # lies over the label
    assert volume.image[labels == 2].mean() > volume.image[labels == 1].mean() > volume.image[labels == 0].mean()
    with pytest.raises(SynthesisError, match="makes images from label masks: give a label volume"):
        synthesizer()
    nib.save(nib.Nifti1Image(labels[:, :, :8], affine), str(tmp_path / "small.nii.gz"))
    with pytest.raises(DatasetError, match=r"small.nii.gz: mask of shape \(16, 16, 8\), but the model makes images of \(16, 16, 16\)"):
        synthesizer(tmp_path / "small.nii.gz")


def test_a_folder_that_is_not_a_bundle_or_an_unknown_id(tmp_path, semantic_package):
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        BundleSynthesizer(tmp_path)
    with pytest.raises(KeyError, match=r"no ids \['not_an_id'\] to override"):
        BundleSynthesizer(semantic_package, overrides={"not_an_id": 1})


def drawn_on_another_grid(path, centre=(5, 8, 8)) -> tuple[np.ndarray, np.ndarray]:
    """The 16^3 head label as drawn on another scan: 0.7 x 0.7 x 0.9 mm voxels, flipped axes, another origin."""
    from scipy.ndimage import zoom

    labels = zoom(head_labels(centre), (1 / 0.7, 1 / 0.7, 1 / 0.9), order=0).astype(np.uint8)
    affine = np.diag([-0.7, -0.7, 0.9, 1.0])
    affine[:3, 3] = (20, 30, -5)
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return labels, affine


def test_a_label_drawn_on_another_grid_is_fitted_and_the_image_returned_on_its_grid(semantic_package, tmp_path):
    labels, affine = drawn_on_another_grid(tmp_path / "drawn.nii.gz")
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=10)
    with pytest.raises(DatasetError, match=r"drawn.nii.gz: mask of shape \(23, 23, 18\)"):
        synthesizer(tmp_path / "drawn.nii.gz")  # strict by default, as the bundle's own sampler
    volume = synthesizer(tmp_path / "drawn.nii.gz", seed=1, fit_to_model=True)
    assert volume.image.shape == labels.shape and np.allclose(volume.affine, affine)
    assert volume.image[labels == 2].mean() > volume.image[labels == 1].mean() > volume.image[labels == 0].mean()
    labels[10:13, 10:13, 8:10] = 7  # a class the model does not know
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "odd.nii.gz"))
    with pytest.raises(DatasetError, match=r"odd.nii.gz \(fitted to the model's grid\): label values \[7.0\] are not in"):
        synthesizer(tmp_path / "odd.nii.gz", fit_to_model=True)
    (tmp_path / "broken.nii.gz").write_text("not a volume")
    with pytest.raises(DatasetError, match="broken.nii.gz: cannot be read as a label volume"):
        synthesizer(tmp_path / "broken.nii.gz", fit_to_model=True)

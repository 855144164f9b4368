"""``common.deploy.BundleSynthesizer``: one volume per request from a packaged bundle, as the serving apps use it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from common.data import DatasetError
from common.deploy import BundleSynthesizer, SynthesisError
from tests.bundles.med_ddpm_runs import SIZE, drawn_on_another_grid, head_labels, save_labels


def test_an_unconditional_sample_of_a_latent_package(brain_package):
    synthesizer = BundleSynthesizer(brain_package.parent / "brain_mri", device="cpu", num_inference_steps=3)
    volume = synthesizer(seed=4)
    assert volume.image.shape == (32, 32, 32) and np.isfinite(volume.image).all() and volume.seed == 4
    assert -1 <= volume.image.min() < volume.image.max() <= 1
    assert np.allclose(np.abs(np.diag(volume.affine)[:3]), 2.7)  # the bundle's spacing (mm)
    assert np.array_equal(synthesizer(seed=4).image, volume.image) and not np.allclose(synthesizer(seed=5).image, volume.image)
    with pytest.raises(SynthesisError, match="brain_mri samples without a label volume: it takes none"):
        synthesizer("label.nii.gz")


def test_a_mask_conditioned_image_follows_the_users_label(semantic_package, tmp_path):
    labels = head_labels((5, 8, 8))
    path = tmp_path / "drawn.nii.gz"
    affine = save_labels(path, labels, origin=(-10, 20, 5))
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
    with pytest.raises(DatasetError, match="broken.nii.gz: cannot be read as a 3D label volume"):
        synthesizer(tmp_path / "broken.nii.gz", fit_to_model=True)


def test_fitting_centres_the_labelled_region_pads_and_refuses_what_does_not_fit(semantic_package, tmp_path):
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=5)
    corner = np.zeros((30, 30, 30), np.uint8)  # a larger scan, the head in one corner: cropped around it
    corner[14:, 14:, 14:] = head_labels((5, 8, 8))
    affine = save_labels(tmp_path / "corner.nii.gz", corner, origin=(3, -4, 7))
    volume = synthesizer(tmp_path / "corner.nii.gz", seed=1, fit_to_model=True)
    assert volume.image.shape == (30, 30, 30) and volume.image[0, 0, 0] == -1  # background outside the model's view
    assert volume.image[corner == 2].mean() > volume.image[corner == 1].mean() > volume.image[corner == 0].mean()
    small = head_labels((5, 8, 8))[3:13, 3:13, 3:13]  # a smaller scan: padded
    nib.save(nib.Nifti1Image(small, affine), str(tmp_path / "small.nii.gz"))
    volume = synthesizer(tmp_path / "small.nii.gz", seed=1, fit_to_model=True)
    assert volume.image.shape == (10, 10, 10) and volume.image[small == 2].mean() > volume.image[small == 1].mean()
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), affine), str(tmp_path / "huge.nii.gz"))
    with pytest.raises(DatasetError, match=r"huge.nii.gz: the labelled region spans \(20.0, 20.0, 20.0\) mm, more than the model's field of view of \(16.0, 16.0, 16.0\) mm"):
        synthesizer(tmp_path / "huge.nii.gz", fit_to_model=True)
    fractional = head_labels((5, 8, 8)).astype(np.float32)
    fractional[8, 8, 8] = 1.6
    nib.save(nib.Nifti1Image(fractional, np.eye(4)), str(tmp_path / "fractional.nii.gz"))
    with pytest.raises(DatasetError, match=r"fractional.nii.gz \(fitted to the model's grid\): label values \[1.60"):
        synthesizer(tmp_path / "fractional.nii.gz", fit_to_model=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.uint8), np.eye(4)), str(tmp_path / "four_d.nii.gz"))
    with pytest.raises(DatasetError, match="four_d.nii.gz: cannot be read as a 3D label volume"):
        synthesizer(tmp_path / "four_d.nii.gz", fit_to_model=True)

"""A class-conditional latent bundle after training: packaged with its labels named in the Model Zoo metadata and a
TorchScript denoiser that takes them, and served (``BundleSynthesizer``, the MONAI Deploy app's requests) with the
classes asked for, as ``inference.json`` samples them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

from common.deploy import BundleSynthesizer, SynthesisError, check_bundle, package_bundle, plan_requests, write_volume
from tests.bundles.bundle_runs import SIZE_32_OVERRIDES, VENTRICLES, error_chain, run_bundle

ENLARGED, NORMAL = {"ventricles": "enlarged"}, {"ventricles": "normal"}


def denoiser_labels(synthesizer: BundleSynthesizer, **asked) -> set[int]:
    """The class indices the sampler's denoiser is given while ``synthesizer(**asked)`` samples one volume."""
    seen: set[int] = set()
    hook = synthesizer.sampler.network.register_forward_hook(
        lambda module, args, kwargs, output: seen.update(kwargs["context"].flatten().tolist()), with_kwargs=True)
    try:
        synthesizer(**asked)
    finally:
        hook.remove()
    return seen


def test_the_package_names_its_labels_input_and_passes_the_model_zoo_checks(conditional_brain_package):
    metadata = json.loads((conditional_brain_package / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["context"] == {
        "type": "tabular", "format": "class indices", "num_channels": 1, "spatial_shape": [], "dtype": "int64",
        "value_range": [-1, 1], "is_patch_data": False, "channel_def": {"0": "ventricles: 0 normal, 1 enlarged, -1 not given"},
    }
    assert json.loads((conditional_brain_package / "configs" / "inference.json").read_text())["class_labels"] == VENTRICLES
    assert check_bundle(conditional_brain_package, packaged=True) == []  # the shape check runs the denoiser with labels


def test_the_torchscript_denoiser_takes_the_labels(conditional_brain_package):
    parser = ConfigParser()
    parser.read_config(str(conditional_brain_package / "configs" / "inference.json"))
    parser.update({"bundle_root": str(conditional_brain_package)})
    network = parser.get_parsed_content("network").eval()
    traced, _, _ = load_net_with_metadata(str(conditional_brain_package / "models" / "model.ts"))
    latent, timesteps = torch.randn(3, 8, 16, 16, 16), torch.tensor([3, 3, 3])
    labels = torch.tensor([[0], [1], [-1]])  # normal, enlarged, not given
    with torch.no_grad():
        found, expected = traced(latent, timesteps, labels), network(latent, timesteps, labels)
        assert torch.allclose(found, expected, atol=1e-4)
        assert torch.allclose(found[2:], network(latent[2:], timesteps[2:]), atol=1e-4)  # -1: the unconditional model
    assert not torch.allclose(found[0], traced(latent[:1], timesteps[:1], labels[1:2])[0], atol=1e-3)  # the class counts


def test_the_synthesizer_samples_the_classes_asked_for_as_inference_json_does(conditional_brain_package, tmp_path):
    synthesizer = BundleSynthesizer(conditional_brain_package, device="cpu", num_inference_steps=3)
    assert synthesizer.class_labels == {"ventricles": ("normal", "enlarged")}
    enlarged = synthesizer(seed=4, labels=ENLARGED, guidance_scale=2.0)
    assert enlarged.labels == ENLARGED and enlarged.description == "ventricles=enlarged"
    # the same sample as the packaged bundle's own inference.json, asked the same
    out = tmp_path / "bundle_run"
    run_bundle([str(conditional_brain_package / "configs" / "inference.json")], bundle_root=str(conditional_brain_package),
               output_dir=str(out), num_samples=1, seed=4, num_inference_steps=3, labels=ENLARGED, guidance_scale=2.0,
               device="$torch.device('cpu')")
    written = nib.load(str(out / "sample_0000_seed4.nii.gz"))
    assert np.allclose(np.asanyarray(written.dataobj), enlarged.image, atol=1e-5)
    # the denoiser is asked for the class (beside MONAI's "not given" row of guidance): the traced test above shows
    # that the class changes its prediction; the test VQ-GAN's decoder is nearly flat (std ~0.005), so the volumes
    # differ, but by how much depends on the machine's arithmetic
    assert denoiser_labels(synthesizer, seed=4, labels=ENLARGED, guidance_scale=2.0) == {-1, 1}
    assert denoiser_labels(synthesizer, seed=4, labels=NORMAL, guidance_scale=2.0) == {-1, 0}
    assert denoiser_labels(synthesizer, seed=4) == {-1}
    normal, unlabelled = synthesizer(seed=4, labels=NORMAL, guidance_scale=2.0), synthesizer(seed=4)
    assert not np.array_equal(normal.image, enlarged.image)
    assert unlabelled.labels is None and unlabelled.description == "no label"
    path = write_volume(enlarged, tmp_path / "enlarged.nii.gz")
    assert nib.load(path).header["descrip"].item().decode() == "ventricles=enlarged" == written.header["descrip"].item().decode()


def test_what_the_model_was_not_trained_for_is_refused_with_the_reason(conditional_brain_package, brain_package):
    synthesizer = BundleSynthesizer(conditional_brain_package, device="cpu", num_inference_steps=2)
    for asked, message in (
        ({"labels": {"ventricles": "large"}}, "'ventricles' is 'large', not one of its classes ['normal', 'enlarged']"),
        ({"labels": {"sex": "f"}}, "['sex'] are no labelled variables (class_labels: ['ventricles'])"),
        ({"labels": "enlarged"}, "expected a {variable: class} mapping, got 'enlarged'"),
        ({"guidance_scale": -1}, "guidance_scale must be a number >= 0, got -1"),
        ({"label": "mask.nii.gz"}, "samples without a label volume: it takes none"),
    ):
        with pytest.raises(SynthesisError, match="brain_mri") as refused:
            synthesizer(**asked)
        assert message in str(refused.value)
    unconditional = BundleSynthesizer(brain_package.parent / "brain_mri", device="cpu", num_inference_steps=2)
    assert unconditional.class_labels is None
    for asked in ({"labels": ENLARGED}, {"guidance_scale": 3.0}):
        with pytest.raises(SynthesisError, match="brain_mri was trained without class labels: it takes none|it takes no guidance scale"):
            unconditional(**asked)
        with pytest.raises(SynthesisError, match="trained without class labels"):
            plan_requests(unconditional, None, 1, **asked)


def test_a_batch_request_takes_one_mapping_or_a_labels_file(conditional_brain_package, tmp_path):
    """What the MONAI Deploy app plans from app.yaml's labels (a mapping, or a file of one row per volume)."""
    synthesizer = BundleSynthesizer(conditional_brain_package, device="cpu", num_inference_steps=2)
    every = plan_requests(synthesizer, None, num_samples=2, seed=5, labels=ENLARGED, guidance_scale=3)
    assert [(r.name, r.labels, r.guidance_scale) for r in every] == [
        ("sample_0000_seed5.nii.gz", ENLARGED, 3.0), ("sample_0001_seed6.nii.gz", ENLARGED, 3.0)]
    table = tmp_path / "asked.csv"
    table.write_text("ventricles\nnormal\nenlarged\n")
    rows = plan_requests(synthesizer, None, num_samples=2, labels=str(table))
    assert [(r.labels, r.guidance_scale) for r in rows] == [(NORMAL, None), (ENLARGED, None)]
    volume = rows[1].answer(synthesizer)  # what the app's operator does with each request
    assert volume.description == "ventricles=enlarged" and volume.image.shape == (32, 32, 32)
    assert [r.labels for r in plan_requests(synthesizer, None, num_samples=2)] == [None, None]  # unconditional
    with pytest.raises(SynthesisError, match=r"asked.csv asks for 2 samples' labels but num_samples is 3"):
        plan_requests(synthesizer, None, num_samples=3, labels=str(table))  # checked before any sampling


def test_packaging_a_conditional_model_without_its_classes_is_refused(conditional_brain_model, tmp_path):
    for classes in (None, {"ventricles": ["enlarged", "normal"]}):  # none, or the same in another order
        with pytest.raises(Exception) as refused:
            package_bundle("brain_mri", conditional_brain_model["models"], tmp_path, {**SIZE_32_OVERRIDES, "class_labels": classes})
        assert f"trained with class_labels {VENTRICLES} (configured: {classes})" in error_chain(refused.value)
        assert not list(tmp_path.iterdir())  # nothing written


def test_the_zoo_shape_check_gives_the_denoiser_the_labels_the_metadata_names(conditional_brain_package, brain_package):
    from common.deploy.model_zoo import _labels_input

    metadata = json.loads((conditional_brain_package / "configs" / "metadata.json").read_text())
    context = _labels_input(metadata, "cpu")["context"]
    assert context.shape == (1, 1) and context.dtype == torch.int64
    unconditional = json.loads((brain_package.parent / "brain_mri" / "configs" / "metadata.json").read_text())
    assert "context" not in unconditional["network_data_format"]["inputs"] and _labels_input(unconditional, "cpu") == {}

"""The MONAI Deploy application (``integrations/monai_deploy/synthesis_app``): the logic its operators call, on a
CPU without the SDK, and the application itself where an interpreter with the SDK is given."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import DatasetError
from common.deploy import BundleSynthesizer, SynthesisError, find_bundle_folder, plan_requests, write_volume
from tests.bundles.bundle_runs import REPO
from tests.bundles.med_ddpm_runs import SIZE, head_labels, save_labels

APP = REPO / "integrations" / "monai_deploy" / "synthesis_app"


def answer(synthesizer: BundleSynthesizer, *args, **kwargs) -> list:
    """What the application's operators do: plan the request, then make and hand on one volume at a time."""
    return [(r.name, r.answer(synthesizer)) for r in plan_requests(synthesizer, *args, **kwargs)]


def _labels(folder: Path, centres: dict[str, tuple[int, int, int]]) -> Path:
    """Label volumes, each on its own grid (origin), as drawn on different patients."""
    folder.mkdir(parents=True)
    for index, (name, centre) in enumerate(centres.items()):
        save_labels(folder / f"{name}.nii.gz", head_labels(centre), origin=(-5 + 10 * index, 3, 2))
    return folder


def test_a_folder_of_labels_gives_one_image_each_that_follows_it(semantic_package, tmp_path):
    labels = _labels(tmp_path / "in", {"case_a": (5, 8, 8), "case_b": (10, 8, 8)})
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=10)
    volumes = answer(synthesizer, labels, seed=3)
    assert [name for name, _ in volumes] == ["case_a_seed3.nii.gz", "case_b_seed3.nii.gz"]
    for (name, volume), (case, centre) in zip(volumes, (("case_a", (5, 8, 8)), ("case_b", (10, 8, 8)))):
        written = nib.load(write_volume(volume, tmp_path / "out" / name))
        mask = head_labels(centre)
        image = np.asanyarray(written.dataobj)
        assert written.shape == (SIZE,) * 3 and np.allclose(written.affine, nib.load(str(labels / f"{case}.nii.gz")).affine)
        assert image[mask == 2].mean() > image[mask == 1].mean() > image[mask == 0].mean()


def test_a_wrong_label_is_named_before_any_sampling(semantic_package, tmp_path, monkeypatch):
    labels = _labels(tmp_path / "in", {"case_a": (5, 8, 8)})
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(labels / "case_z.nii.gz"))
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=2)
    monkeypatch.setattr(synthesizer.sampler, "sample", lambda *a: pytest.fail("sampled before every label was checked"))
    with pytest.raises(DatasetError, match=r"case_z.nii.gz: mask of shape \(8, 8, 8\)"):
        plan_requests(synthesizer, labels)
    with pytest.raises(DatasetError, match="is empty"):
        plan_requests(synthesizer, (tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_labels_on_another_grid_with_fit_to_model(semantic_package, tmp_path):
    from tests.bundles.med_ddpm_runs import drawn_on_another_grid

    (tmp_path / "in").mkdir()
    labels, affine = drawn_on_another_grid(tmp_path / "in" / "scan_7.nii.gz")
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=3)
    with pytest.raises(DatasetError, match=r"scan_7.nii.gz: mask of shape \(23, 23, 18\)"):
        plan_requests(synthesizer, tmp_path / "in")
    ((name, volume),) = answer(synthesizer, tmp_path / "in", fit_to_model=True)
    assert name == "scan_7_seed0.nii.gz" and volume.image.shape == labels.shape and np.allclose(volume.affine, affine)
    assert volume.image[labels == 2].mean() > volume.image[labels == 1].mean() > volume.image[labels == 0].mean()
    nib.save(nib.Nifti1Image(np.ones((30, 30, 30), np.uint8), affine), str(tmp_path / "in" / "scan_8.nii.gz"))
    monkey = synthesizer.sampler
    sampled = []
    original = monkey.sample
    monkey.sample = lambda *a: sampled.append(1) or original(*a)
    with pytest.raises(DatasetError, match="scan_8.nii.gz: the labelled region spans"):  # before any sampling
        plan_requests(synthesizer, tmp_path / "in", fit_to_model=True)
    assert sampled == []


def test_labels_of_one_name_in_two_sub_folders_are_refused(semantic_package, tmp_path):
    _labels(tmp_path / "in" / "site_a", {"case": (5, 8, 8)})
    _labels(tmp_path / "in" / "site_b", {"case": (10, 8, 8)})
    synthesizer = BundleSynthesizer(semantic_package, device="cpu", num_inference_steps=2)
    with pytest.raises(SynthesisError, match=r"share a file name, so their images would too: .*site_a/case.nii.gz.*site_b/case.nii.gz"):
        plan_requests(synthesizer, tmp_path / "in")


def test_unconditional_samples_of_a_latent_bundle(brain_package):
    synthesizer = BundleSynthesizer(brain_package.parent / "brain_mri", device="cpu", num_inference_steps=2)
    volumes = answer(synthesizer, None, num_samples=2, seed=3)
    assert [name for name, _ in volumes] == ["sample_0000_seed3.nii.gz", "sample_0001_seed4.nii.gz"]
    assert all(v.image.shape == (32, 32, 32) and np.isfinite(v.image).all() for _, v in volumes)
    with pytest.raises(ValueError, match="num_samples must be at least 1, got 0"):
        plan_requests(synthesizer, None, num_samples=0)


def test_the_bundle_under_a_model_path(semantic_package, tmp_path):
    assert find_bundle_folder(semantic_package) == semantic_package
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(semantic_package / "configs", models / "brain_tumor_semantic" / "configs")
    assert find_bundle_folder(models) == models / "brain_tumor_semantic"  # as a MAP mounts --models
    shutil.copytree(semantic_package / "configs", models / "other" / "configs")
    with pytest.raises(FileNotFoundError, match="holds 2 bundle folders, not one"):
        find_bundle_folder(models)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_bundle_folder(tmp_path / "nowhere")


def test_the_apps_settings_are_checked():
    import importlib.util
    import sys
    import types

    # app.py imports the SDK at the top; its settings check does not need it
    stubs = {name: types.ModuleType(name) for name in ("monai.deploy", "monai.deploy.conditions", "monai.deploy.core")}
    stubs["monai.deploy.conditions"].CountCondition = object
    stubs["monai.deploy.core"].AppContext = stubs["monai.deploy.core"].Application = object
    operators = types.ModuleType("operators")
    operators.NiftiWriterOperator = operators.SynthesisOperator = object
    saved = {name: sys.modules.get(name) for name in [*stubs, "operators"]}
    sys.modules.update(stubs, operators=operators)
    try:
        spec = importlib.util.spec_from_file_location("synthesis_app_under_test", APP / "app.py")
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
    finally:
        sys.path[:] = [entry for entry in sys.path if entry != str(APP)]  # app.py puts its folder first
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert app.checked_settings({"num_samples": 2, "seed": 0, "device": None, "fit_to_model": True}) == {
        "num_samples": 2, "seed": 0, "fit_to_model": True}
    with pytest.raises(ValueError, match="fit_to_model must be a bool, got 'false'"):
        app.checked_settings({"fit_to_model": "false"})
    with pytest.raises(ValueError, match="num_samples must be a int, got 2.5"):
        app.checked_settings({"num_samples": 2.5})
    with pytest.raises(ValueError, match=r"unknown settings \['samples'\]"):
        app.checked_settings({"samples": 2})
    asked = {"labels": {"ventricles": "enlarged"}, "guidance_scale": 3}  # a class-conditional latent bundle's
    assert app.checked_settings(asked) == asked and app.checked_settings({"labels": "labels.csv"}) == {"labels": "labels.csv"}
    with pytest.raises(ValueError, match="labels must be a mapping or file path, got 3"):
        app.checked_settings({"labels": 3})
    with pytest.raises(ValueError, match="guidance_scale must be a number, got True"):
        app.checked_settings({"guidance_scale": True})
    # a labels file is found in the input folder unless its path is absolute; a mapping is kept as it is
    assert app.labels_setting("labels.csv", Path("/in")) == "/in/labels.csv"
    assert app.labels_setting("/tables/labels.csv", Path("/in")) == "/tables/labels.csv"
    assert app.labels_setting({"ventricles": "normal"}, Path("/in")) == {"ventricles": "normal"}
    assert app.labels_setting("~/labels.csv", Path("/in")) == str(Path.home() / "labels.csv")


def test_the_apps_requirements_are_the_packages_plus_the_holoscan_release():
    from common.deploy.package import requirements_text

    def listed(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    assert listed((APP / "requirements.txt").read_text()) == listed(requirements_text()) + ["holoscan-cu13==4.2.0"]


@pytest.mark.skipif("MONAI_DEPLOY_PYTHON" not in os.environ, reason="set MONAI_DEPLOY_PYTHON to a Python with monai-deploy-app-sdk")
def test_the_application_runs_with_the_sdk(semantic_package, brain_package, tmp_path):
    """The application as ``monai-deploy run`` starts it (``python <app folder> -i -o -m``), in an environment
    with the SDK (see docs/deployment.md); both kinds of bundle."""
    labels = _labels(tmp_path / "in", {"case_a": (5, 8, 8)})
    for bundle, arguments, expected in (
        (semantic_package, ["-i", str(labels)], ["case_a_seed0.nii.gz"]),
        (brain_package.parent / "brain_mri", [], ["sample_0000_seed7.nii.gz", "sample_0001_seed8.nii.gz"]),
    ):
        models, output = tmp_path / f"models_{bundle.name}", tmp_path / f"out_{bundle.name}"
        shutil.copytree(bundle, models / bundle.name)
        config = tmp_path / "app.yaml"
        config.write_text("application:\n  title: test\n  version: 0.1\nresources:\n  cpu: 1\n"
                          "synthesis:\n  num_samples: 2\n  seed: 7\n  num_inference_steps: 5\n  device: cpu\n"
                          if bundle.name == "brain_mri" else (APP / "app.yaml").read_text().replace("num_inference_steps: 50", "num_inference_steps: 5"))
        result = subprocess.run(
            [os.environ["MONAI_DEPLOY_PYTHON"], str(APP), *arguments, "-o", str(output), "-m", str(models)],
            capture_output=True, text=True, env={**os.environ, "HOLOSCAN_CONFIG_PATH": str(config)}, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(p.name for p in output.iterdir()) == expected

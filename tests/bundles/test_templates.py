"""The bundles' shared files have one source (templates/), and every bundle's training and inference configs
build the same networks, so weights trained by one always load in the other."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundles.bundle_runs import REPO, config_files

spec = importlib.util.spec_from_file_location("render", REPO / "templates" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)

LATENT = ["brain_mri", "knee_mri", "breast_mri", "chest_ct"]
# per bundle: (training configs, inference configs, the ids both must declare alike, the networks both build)
PAIRS = {
    **{b: (["train_autoencoder", "train_diffusion"], ["inference"], ["image_size", "autoencoder_def", "network_def", "num_train_timesteps", "noise_schedule", "prediction_type"], ["autoencoder_def", "network_def"]) for b in LATENT},
    "brain_tumor_semantic": (["train"], ["inference"], ["image_size", "image_channels", "num_classes", "network_def", "num_train_timesteps", "noise_schedule", "prediction_type", "model_settings"], ["network_def"]),
}


def test_every_bundle_file_equals_its_rendering():
    assert render.stale_files() == [], "edit templates/ and run python templates/render.py"
    assert {p.stem for p in (REPO / "templates" / "bundles").glob("*.json")} == {
        p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file()
    }


def test_a_hand_edit_of_a_bundle_file_is_found(tmp_path, monkeypatch):
    target = REPO / "bundles" / "knee_mri" / "configs" / "evaluate.json"
    edited = tmp_path / "evaluate.json"
    edited.write_text(target.read_text().replace('"max_pairs": 100', '"max_pairs": 99'))
    rendered = render.render_all()
    monkeypatch.setattr(render, "render_all", lambda: {edited: rendered[target]})
    assert render.stale_files() == [edited]


def test_a_mistyped_id_in_a_bundle_spec_is_an_error(tmp_path, monkeypatch):
    spec_path = tmp_path / "knee_mri.json"
    spec_path.write_text(json.dumps({"template": "latent", "train_diffusion.json": {"train#trainer#max_epoch": 3}}))
    with pytest.raises(render.TemplateError, match="id 'train#trainer#max_epoch' does not exist in the template"):
        render.render_bundle(spec_path)
    spec_path.write_text(json.dumps({"template": "latent", "shared_ids": {"network_def#chanels": [8]}}))
    with pytest.raises(render.TemplateError, match="network_def#chanels"):
        render.render_bundle(spec_path)
    spec_path.write_text(json.dumps({"template": "latent", "trian.json": {}}))
    with pytest.raises(render.TemplateError, match=r"\['trian.json'\] are not files of the 'latent' templates"):
        render.render_bundle(spec_path)


def test_new_ids_of_a_bundle_go_where_the_template_marks_them():
    config = render.render_config(
        {"dataset_dir": None, "<bundle ids>": None, "train": {"x": 1}}, {}, {"mask_dir": "m", "train#x": 2}, "b", "test"
    )
    assert list(config) == ["dataset_dir", "mask_dir", "train"] and config["train"] == {"x": 2}


@pytest.mark.parametrize("bundle", sorted(PAIRS))
def test_training_and_inference_declare_the_same_networks(bundle):
    training_files, inference_files, ids, networks = PAIRS[bundle]
    training, inference = ConfigParser(), ConfigParser()
    training.read_config(config_files(bundle, *training_files))
    inference.read_config(config_files(bundle, *inference_files))
    for config_id in ids:
        assert training[config_id] == inference[config_id], config_id
    for network_id in networks:  # at full size, built without memory on the meta device
        with torch.device("meta"):
            trained, loaded = training.get_parsed_content(network_id), inference.get_parsed_content(network_id)
        shapes = {k: v.shape for k, v in trained.state_dict().items()}
        assert shapes == {k: v.shape for k, v in loaded.state_dict().items()} and shapes, network_id


@pytest.mark.parametrize("bundle", sorted(PAIRS))
def test_training_and_inference_build_their_noise_schedule_from_one_id(bundle):
    """The schedule, the prediction type and the settings stored with the checkpoint follow one id each, alike in
    training and inference."""
    training_files, inference_files, _, _ = PAIRS[bundle]
    schedules = {}
    for schedule, prediction_type in (("cosine", "epsilon"), ("linear_beta", "v_prediction")):
        built, stored = [], []
        for files in (training_files, inference_files):
            parser = ConfigParser()
            parser.read_config(config_files(bundle, *files))
            parser.update({"noise_schedule": schedule, "prediction_type": prediction_type, "num_inference_steps": parser["num_train_timesteps"]})
            built.append(parser.get_parsed_content("noise_scheduler"))
            stored.append(parser.get_parsed_content("model_settings").state_dict())
        trained, sampling = built
        assert torch.equal(trained.betas, sampling.betas) and trained.prediction_type == sampling.prediction_type == prediction_type
        assert stored[0] == stored[1] and stored[0]["noise_schedule"] == schedule and stored[0]["prediction_type"] == prediction_type
        schedules[schedule] = trained.betas
    assert not torch.allclose(schedules["cosine"], schedules["linear_beta"])  # the id decides, in both


@pytest.mark.parametrize("bundle", sorted(PAIRS))
def test_configs_name_only_current_paths_of_common(bundle):
    """Every ``common.<...>`` a bundle config names resolves, and not through a path kept only for old configs."""
    import pydoc
    import re
    import warnings

    names = set()
    for path in (REPO / "bundles" / bundle / "configs").glob("*.json"):
        names.update(re.findall(r"\bcommon(?:\.[A-Za-z_]\w*)+", path.read_text()))
    assert names
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in sorted(names):
            assert pydoc.locate(name) is not None, name


def test_readme_parts_are_rendered_and_a_hand_edit_of_one_is_found(tmp_path, monkeypatch):
    readme = REPO / "bundles" / "knee_mri" / "docs" / "README.md"
    text = readme.read_text()
    assert "<!-- part: small_models -->" in text and "--autoencoder_def#num_embeddings 64" in text
    edited = text.replace("--autoencoder_def#num_embeddings 64", "--autoencoder_def#num_embeddings 65")
    parts = REPO / "templates" / "latent" / "readme"
    values = render.readme_values("knee_mri", json.loads((REPO / "templates" / "bundles" / "knee_mri.json").read_text())["readme"])
    (tmp_path / "README.md").write_text(edited)
    assert render.render_readme(tmp_path / "README.md", parts, values, "test") == text  # the part wins
    (tmp_path / "README.md").write_text("<!-- part: nothing -->\n<!-- end part -->\n")
    with pytest.raises(render.TemplateError, match="README part 'nothing' is not in"):
        render.render_readme(tmp_path / "README.md", parts, values, "test")
    (tmp_path / "README.md").write_text("<!-- part: one_command -->\n<!-- end part -->\n")
    with pytest.raises(render.TemplateError, match=r"needs \['dataset'\]"):
        render.render_readme(tmp_path / "README.md", parts, {"bundle": "knee_mri"}, "test")


def test_the_small_model_settings_have_one_source():
    """common.pipeline.SMALL_SETTINGS: the READMEs render them, the tests and the GPU check import them; no copy."""
    from common.pipeline import SMALL_SETTINGS

    copies = []  # a file holding every setting of a stage as its own literals
    for folder in ("tests", "benchmarks", "common"):
        for path in (REPO / folder).rglob("*.py"):
            source = path.read_text().replace("True", "true").replace("False", "false")
            copies += [f"{path.relative_to(REPO)} {stage}" for stage in ("shared", "autoencoder", "denoiser")
                       if all(f'"{key}": {json.dumps(value)}' in source for key, value in SMALL_SETTINGS[stage].items())]
    assert copies == ["common/pipeline.py shared", "common/pipeline.py autoencoder", "common/pipeline.py denoiser"]
    for bundle in LATENT:  # every README has the rendered commands and no other copy of them
        text = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
        outside = re.sub(r"<!-- part: [\w-]+ -->\n.*?<!-- end part -->", "", text, flags=re.S)
        assert "--network_def#head_channels 4" in text and "--network_def#head_channels 4" not in outside, bundle

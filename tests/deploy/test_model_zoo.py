"""The Model Zoo's checks (``common.deploy.model_zoo``) pass for every bundle and catch each kind of mistake."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from common.deploy import ZooCheckError, check_bundle, check_zoo
from common.deploy.model_zoo import check_large_files, check_metadata_schema
from tests.bundles.bundle_runs import REPO
from tests.environments import made_in_the_background

LATENT = ("brain_mri", "breast_mri", "chest_ct", "knee_mri")


@pytest.mark.parametrize("bundle", LATENT)
def test_every_latent_bundle_passes_at_its_full_size(bundle):
    """Including MONAI's verify_net_in_out of the paper-size denoiser (with timesteps) and the VQ-GAN."""
    assert check_bundle(REPO / "bundles" / bundle) == []


def test_the_mask_conditioned_bundle_passes():
    # the 128^3 full-width U-Net takes ~40 s on a CPU; it is fully convolutional, so a 32^3 input checks the
    # channels and dtype that verify_net_in_out compares (the packaged model is checked at its size elsewhere)
    assert check_bundle(REPO / "bundles" / "brain_tumor_semantic", spatial_shape=[32, 32, 32]) == []


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of brain_mri to break."""
    folder = tmp_path / "brain_mri"
    shutil.copytree(REPO / "bundles" / "brain_mri", folder)
    return folder


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=4) + "\n")


def test_missing_files_are_named(bundle):
    (bundle / "LICENSE").unlink()
    assert check_bundle(bundle) == [f"{bundle / 'LICENSE'}: missing (the Model Zoo requires it)."]
    assert check_bundle(bundle, packaged=True)[-1] == f"{bundle / 'models/model.pt'}: missing (the Model Zoo requires it)."


def test_a_version_without_a_changelog_entry(bundle):
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    assert check_bundle(bundle) == [f"{bundle / 'configs/metadata.json'}: version '9.9.9' has no entry in 'changelog'."]


def test_metadata_that_breaks_the_schema(bundle):
    meta = bundle / "configs" / "metadata.json"
    _edit_json(meta, lambda m: m.pop("task"))
    assert check_metadata_schema(bundle) == [f"{meta}: does not follow meta_schema_20240725.json: 'task' is a required property"]
    _edit_json(meta, lambda m: m.update(task="t", schema=m["schema"].replace("20240725", "20230507")))
    assert "is not one this check has a copy of (meta_schema_20240725.json)" in check_metadata_schema(bundle)[0]


def test_json_not_formatted_as_the_zoo_formats_it(bundle):
    path = bundle / "configs" / "inference.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2))
    assert check_bundle(bundle) == [f"{path}: not formatted as json.dumps(..., indent=4) with a final newline."]


def test_large_files_must_be_listed_with_the_right_hash(bundle):
    check = functools.partial(check_bundle, spatial_shape=[16, 16, 16])  # every check; the denoiser's shape check at 16^3
    figure = bundle / "docs" / "figure.bin"
    figure.write_bytes(b"\0" * (1024 * 1024 + 1))
    problems = check(bundle)
    assert problems == [f"{figure}: 1048577 bytes, over the zoo's 1 MiB limit, and not in large_files.yml."]
    (bundle / "large_files.yml").write_text(
        'large_files:\n  - path: "docs/figure.bin"\n    url: ""\n    hash_val: "0123"\n    hash_type: "sha256"\n'
    )
    assert check(bundle) == [f"{bundle / 'large_files.yml'}: docs/figure.bin: the file's sha256 differs from hash_val."]
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "docs/figure.bin"\n    url: ""\n    hash_val: "0123"\n')
    assert check(bundle) == [f"{bundle / 'large_files.yml'}: docs/figure.bin: the file's md5 differs from hash_val."]
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "docs/figure.bin"\n    url: ""\n  - "models/x.pt"\n')
    assert check(bundle) == [f"{bundle / 'large_files.yml'}: entry 'models/x.pt' is not a mapping with a 'path'."]
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "docs/figure.bin"\n    url: ""\n')
    assert check(bundle) == []
    assert check(bundle, require_urls=True) == [
        f"{bundle / 'large_files.yml'}: docs/figure.bin: no url; the zoo downloads the file from it."
    ]
    figure.unlink()  # a source folder's large files are hosted; a package must hold what it lists
    assert check(bundle) == []
    assert check_large_files(bundle, packaged=True, require_urls=False) == [
        f"{bundle / 'large_files.yml'}: docs/figure.bin: listed, but the package has no such file."
    ]


def test_a_source_folder_trained_in_place_is_checked_as_a_source_folder(bundle):
    """Checkpoints in models/ and what runs wrote (output/, logs/) are not part of a submission."""
    (bundle / "models").mkdir()
    (bundle / "models" / "diffusion.pt").write_bytes(b"\0" * (2 * 1024 * 1024))
    (bundle / "output").mkdir()
    (bundle / "output" / "metrics.json").write_text('{"a":1}')
    assert check_bundle(bundle) == []
    (bundle / "docs" / "output").mkdir()  # only the top-level folders of runs are left out
    (bundle / "docs" / "output" / "table.json").write_text('{"a":1}')
    assert check_bundle(bundle) == [f"{bundle / 'docs/output/table.json'}: not formatted as json.dumps(..., indent=4) with a final newline."]


def test_json_that_is_not_json_is_named(bundle):
    (bundle / "configs" / "metadata.json").write_text('{"version": ')
    with pytest.raises(ZooCheckError, match=r"metadata.json: not valid JSON \(Expecting value"):
        check_zoo(str(bundle))


def test_a_schema_error_names_the_key(bundle):
    meta = bundle / "configs" / "metadata.json"
    _edit_json(meta, lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="eight"))
    (problem,) = check_metadata_schema(bundle)
    assert problem.startswith(f"{meta}: does not follow meta_schema_20240725.json: ") and problem.endswith(
        "(at $.network_data_format.inputs.image.num_channels)")


def test_an_inference_config_without_an_inferer(bundle):
    path = bundle / "configs" / "inference.json"
    _edit_json(path, lambda c: c.pop("inferer"))
    assert check_bundle(bundle) == [
        f"{path}: no inferer (the Model Zoo asks every inference config for bundle_root, device, network_def, inferer, output_dir)."
    ]
    _edit_json(path, lambda c: c.update(inferer="$@noise_scheduler"))
    assert check_bundle(bundle) == [f"{path}: 'inferer' is a DDPMScheduler, not a MONAI Inferer."]


def test_a_readme_without_the_templates_sections(bundle):
    readme = bundle / "docs" / "README.md"
    readme.write_text(readme.read_text().replace("## System Configuration", "## Memory and time"))
    assert check_bundle(bundle) == [f"{readme}: no section 'system configuration' of the Model Zoo's README template."]


def test_metadata_shapes_that_do_not_match_the_networks(bundle):
    meta = bundle / "configs" / "metadata.json"
    _edit_json(meta, lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=4))
    _edit_json(meta, lambda m: m["autoencoder_data_format"]["outputs"]["pred"].update(spatial_shape=[32, 32, 32]))
    denoiser, autoencoder = check_bundle(bundle)
    assert "network_def fails MONAI's verify_net_in_out: ValueError: output channel number `8` doesn't match: `4`" in denoiser
    assert autoencoder.endswith("autoencoder_def gives (channels, shape, dtype) (1, [64, 64, 64], 'float32'), "
                                "autoencoder_data_format says (1, [32, 32, 32], 'float32').")


def test_the_command_raises_with_every_problem(bundle, capsys):
    (bundle / "configs" / "inference.json").write_text(json.dumps(json.loads((bundle / "configs" / "inference.json").read_text())))
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    with pytest.raises(ZooCheckError, match=r"fails 2 Model Zoo check\(s\):\n- .*version '9.9.9'.*\n- .*inference.json: not formatted"):
        check_zoo(str(bundle))
    with pytest.raises(ZooCheckError, match="not a bundle folder"):
        check_zoo(str(bundle / "configs"))


def _pins() -> dict[str, str]:
    versions = json.loads((REPO / "templates" / "versions.json").read_text())
    return {"torch": versions["pytorch_version"], "monai": versions["monai_version"], "numpy": versions["numpy_version"],
            **versions["required_packages_version"]}


def test_the_pinned_versions_cover_and_satisfy_every_install_requirement():
    import configparser

    from packaging.requirements import Requirement

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    requirements = [Requirement(line) for line in setup["options"]["install_requires"].split("\n") if line.strip()]
    pins = _pins()
    assert sorted(r.name for r in requirements) == sorted(pins)  # each requirement pinned, nothing else
    for requirement in requirements:
        assert requirement.specifier.contains(pins[requirement.name]), (requirement, pins[requirement.name])
    versions = json.loads((REPO / "templates" / "versions.json").read_text())
    for bundle in (REPO / "bundles").iterdir():
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
        assert {key: metadata[key] for key in versions} == versions, bundle.name


def _interpreter(version: str) -> str | None:
    """A working ``python<version>``: on the PATH, or one of pyenv's installed versions (its shims may be inactive)."""
    import glob
    import os
    import subprocess

    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for candidate in [shutil.which(f"python{version}"), *sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))]:
        if candidate and subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


PYTHONS = ("3.10", "3.13")  # the zoo CI's Python and the newest


@made_in_the_background(needed_by="test_the_pinned_versions_install_together_on_the_oldest_and_newest_python")
def pins_resolved(folder: Path) -> dict[str, BaseException | dict | None]:
    """``pip install --dry-run`` of the pins (``==``, as the zoo's CI installs them) for each of :data:`PYTHONS`, both
    at once: per version, pip's report of what it would install, the exception
    (a failure, or a skip where the index cannot be reached), or None where this machine lacks that Python."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.environments import pip_install

    pythons = {version: _interpreter(version) for version in PYTHONS}
    pins = [f"{n}=={v}" for n, v in _pins().items()]
    found = {version: python for version, python in pythons.items() if python is not None}
    with ThreadPoolExecutor(max(1, len(found))) as pool:
        resolving = {version: pool.submit(pip_install, python, "--dry-run", "--ignore-installed", "-q",
                                          "--report", str(folder / f"{version}.json"), *pins, own_pip=True)
                     for version, python in found.items()}
        outcomes = {version: future.exception() for version, future in resolving.items()}
    return {version: None if version not in found else outcomes[version] or json.loads((folder / f"{version}.json").read_text())
            for version in PYTHONS}


def test_the_pinned_versions_install_together_on_the_oldest_and_newest_python(background):
    """pip resolves the pins for Python 3.10 and 3.13 (:func:`pins_resolved`, begun when the session starts): every
    pin has a build for each, they agree, and pip would install each at its pinned version. Needs the package index,
    as ``.ci/run`` does; where this machine lacks one of the two, the other is checked and the test then skipped,
    naming the missing one."""
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    outcomes = background.result(pins_resolved)
    raised = [o for o in outcomes.values() if isinstance(o, BaseException)]
    failed = [o for o in raised if not isinstance(o, pytest.skip.Exception)]
    if failed:  # a pin that fails on either Python fails the test, before a skip of the other (the index unreachable)
        raise failed[0]
    for version, report in outcomes.items():
        if isinstance(report, dict):  # ``==`` as pip reads it: 2.13.0+cpu is 2.13.0
            resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
            installs = {name: resolved.get(canonicalize_name(name)) for name in _pins()}
            wrong = {name: version for name, version in installs.items()
                     if version is None or not SpecifierSet(f"=={_pins()[name]}").contains(version)}
            assert not wrong, f"Python {version} would install {wrong}, not the pins"
    if raised:
        raise raised[0]
    missing = [version for version, report in outcomes.items() if report is None]
    if missing:
        pytest.skip(f"no python{' or python'.join(missing)} on this machine: resolved for the others only")


def test_the_command_line_lists_the_problems_and_exits_1(bundle, monkeypatch):
    from tests.helpers import common_command_exit

    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    monkeypatch.chdir(REPO)
    message = common_command_exit(monkeypatch, "check_zoo", str(bundle))  # a string: printed, exit status 1
    assert f"{bundle} fails 1 Model Zoo check(s):\n- {bundle / 'configs/metadata.json'}: version '9.9.9' has no entry" in message

"""The MONAI Label app (``integrations/monailabel``): the real MONAI Label server on 127.0.0.1 serving the trained
test models, a label volume posted to ``/infer``, and the synthetic image that comes back.

The server runs in a virtual environment made here on top of the one running the suite (its torch, MONAI and this
project; ``tests.environments``), with monailabel installed as ``docs/deployment.md`` says (without its declared
dependencies, which would replace the CPU torch, then ``integrations/monailabel/requirements.txt``). Like
``.ci/run``'s own install, this needs the package index; without it the tests are skipped and say so.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles.bundle_runs import REPO
from tests.bundles.med_ddpm_runs import SIZE, head_labels, save_labels
from tests.bundles.med_ddpm_runs import drawn_on_another_grid
from tests.environments import made_in_the_background, make_environment, pip_install

APP = REPO / "integrations" / "monailabel"
MONAILABEL = "monailabel==0.8.5"
START_SECONDS = 300  # generous: the server imports torch and MONAI and loads both models on a loaded machine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@made_in_the_background(needed_by="monailabel_python")
def monailabel_environment(folder: Path) -> str:
    """A virtual environment with monailabel installed as docs/deployment.md says, on top of this one; its python."""
    python = make_environment(folder / "venv", on_top_of_this_one=True)
    pip_install(python, "-q", "--no-deps", MONAILABEL)
    pip_install(python, "-q", "-r", str(APP / "requirements.txt"))
    return python


@pytest.fixture(scope="module")
def monailabel_python(background) -> str:
    python = background.result(monailabel_environment)
    probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    assert probe.stdout.strip() == torch.__version__, probe.stderr[-2000:]  # the install kept this environment's torch
    return python


@contextlib.contextmanager
def running_server(python: str, root, bundles: str, *arguments: str):
    """``run_server.py start_server`` on a free loopback port, serving ``bundles`` with 10 sampling steps; yields the
    URL, the log and the server's temporary folder, and stops it (SIGINT) at the end."""
    app = root / "app"  # the server writes logs/, model/ and the like into the app folder
    app.mkdir(parents=True)
    shutil.copy2(APP / "main.py", app / "main.py")
    (root / "studies").mkdir()
    (root / "tmp").mkdir()
    quiet = {f"MONAI_LABEL_{key}": "false" for key in (
        "TASKS_TRAIN", "TASKS_STRATEGY", "TASKS_SCORING", "TASKS_BATCH_INFER", "SESSIONS", "AUTO_UPDATE_SCORING",
        "DATASTORE_AUTO_RELOAD", "TRACKING_ENABLED")}
    environment = {**os.environ, **quiet, "TMPDIR": str(root / "tmp"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    port = _free_port()
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            [python, str(APP / "run_server.py"), "start_server", "--app", str(app), "--studies", str(root / "studies"),
             "--host", "127.0.0.1", "--port", str(port), "--conf", "bundles", bundles, "--conf", "num_inference_steps",
             "10", "--conf", "device", "cpu", *arguments],
            cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_SECONDS
            while True:
                try:
                    urllib.request.urlopen(f"{base}/info/", timeout=5).read()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        pytest.fail("the MONAI Label server did not start:\n" + (root / "server.log").read_text()[-4000:])
                    time.sleep(0.5)
            yield {"url": base, "log": root / "server.log", "tmp": root / "tmp"}
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(monailabel_python, semantic_package, brain_package, conditional_brain_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel")
    ventricles = root / "brain_mri_ventricles"  # the class-conditional package, served under its own name
    shutil.copytree(conditional_brain_package, ventricles)
    bundles = f"{semantic_package},{brain_package.parent / 'brain_mri'},{ventricles}"
    with running_server(monailabel_python, root, bundles) as running:
        yield running


def _client():
    """``integrations/monailabel/client.py``, the client the docs give (also for 3D Slicer's console)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("monailabel_client", APP / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_server_lists_one_task_per_bundle(server):
    info = json.load(urllib.request.urlopen(f"{server['url']}/info/", timeout=30))
    models = info["models"]
    assert set(models) == {"brain_tumor_semantic", "brain_mri", "brain_mri_ventricles"}
    assert models["brain_tumor_semantic"]["description"].endswith("a synthetic image that follows the posted label volume (10 sampling steps)")
    assert models["brain_mri"]["config"] == {"seed": 0}
    assert models["brain_tumor_semantic"]["config"] == {"seed": 0, "fit_to_model": True}
    assert models["brain_mri"]["description"] == "brain_mri: an unconditional synthetic volume (10 sampling steps)"
    assert models["brain_mri_ventricles"]["config"] == {"seed": 0, "labels": None, "guidance_scale": 1.0}
    assert models["brain_mri_ventricles"]["description"] == (
        "brain_mri_ventricles: a synthetic volume of the classes asked for in params labels (ventricles: normal | "
        "enlarged; none: unconditional) (10 sampling steps)")


def test_a_posted_label_comes_back_as_an_image_that_follows_it(server, tmp_path):
    labels = head_labels((5, 8, 8))
    upload = tmp_path / "drawn_label.nii.gz"
    affine = save_labels(upload, labels, origin=(-8, 4, 2))
    client = _client()
    image = nib.load(str(client.synthesize(server["url"], "brain_tumor_semantic", upload, tmp_path / "synthetic.nii.gz", seed=2)))
    voxels = np.asanyarray(image.dataobj)
    assert image.shape == (SIZE,) * 3 and voxels.dtype == np.float32 and np.isfinite(voxels).all()
    assert np.allclose(image.affine, affine)  # on the label's grid: a viewer lays it over the label
    assert voxels[labels == 2].mean() > voxels[labels == 1].mean() > voxels[labels == 0].mean()
    again = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(
        client.infer(server["url"], "brain_tumor_semantic", upload, {"seed": 2}))).dataobj)
    assert np.array_equal(again, voxels)  # the seed decides the sample
    record = json.loads(client.infer(server["url"], "brain_tumor_semantic", upload, {"seed": 3}, answer="json"))
    assert record == {"seed": 3, "shape": [SIZE] * 3, "bundle": "brain_tumor_semantic"}


def test_an_unconditional_sample_of_the_latent_bundle(server, tmp_path):
    upload = tmp_path / "unused.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(upload))
    image = nib.load(str(_client().synthesize(server["url"], "brain_mri", upload, tmp_path / "sample.nii.gz", seed=1)))
    assert image.shape == (32, 32, 32) and np.isfinite(np.asanyarray(image.dataobj)).all()


def test_a_class_conditional_bundle_samples_the_classes_asked_for(server, conditional_brain_package, tmp_path):
    from common.deploy import BundleSynthesizer

    upload = tmp_path / "unused.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(upload))
    client = _client()
    in_process = BundleSynthesizer(conditional_brain_package, device="cpu", num_inference_steps=10)
    volumes = {}
    for asked in ({"ventricles": "enlarged"}, {"ventricles": "normal"}, None):
        path = client.synthesize(server["url"], "brain_mri_ventricles", upload, tmp_path / f"{asked}.nii.gz", seed=1,
                                 labels=asked, guidance_scale=2.0 if asked else None)
        image = nib.load(str(path))
        assert image.header["descrip"].item().decode() == (f"ventricles={asked['ventricles']}" if asked else "no label")
        volumes[str(asked)] = np.asanyarray(image.dataobj)
        # the server passed the classes on: the sample is the one the synthesizer makes when asked for them (that
        # the denoiser is given them is tested in tests/deploy/test_class_conditional_serving.py)
        expected = in_process(seed=1, labels=asked, guidance_scale=2.0 if asked else None).image
        assert np.allclose(volumes[str(asked)], expected, atol=1e-5)
    assert not np.array_equal(volumes[str({"ventricles": "enlarged"})], volumes[str({"ventricles": "normal"})])
    record = json.loads(client.infer(server["url"], "brain_mri_ventricles", upload, {"seed": 2, "labels": {"ventricles": "normal"}}, answer="json"))
    assert record == {"seed": 2, "shape": [32, 32, 32], "bundle": "brain_mri_ventricles", "labels": {"ventricles": "normal"}}
    for params, reason in (
        ({"labels": {"ventricles": "large"}}, "brain_mri_ventricles: labels, sample 0: 'ventricles' is 'large', not one of its classes"),
        ({"labels": "/etc/passwd"}, "labels must be a JSON object of {variable: class}, got '/etc/passwd'"),  # no server files
        ({"labels": {"ventricles": "normal"}, "guidance_scale": "strong"}, "guidance_scale must be a number >= 0, got 'strong'"),
    ):
        with pytest.raises(RuntimeError, match="HTTP 422") as refused:
            client.infer(server["url"], "brain_mri_ventricles", upload, params)
        assert reason in str(refused.value)
    with pytest.raises(RuntimeError, match=r"HTTP 422\): .*brain_mri does not take \['labels'\]; its parameters are \['seed'\]"):
        client.infer(server["url"], "brain_mri", upload, {"labels": {"ventricles": "normal"}})


def test_a_label_drawn_on_another_scan_comes_back_on_its_grid(server, tmp_path):
    labels, affine = drawn_on_another_grid(tmp_path / "drawn.nii.gz")
    image = nib.load(str(_client().synthesize(server["url"], "brain_tumor_semantic", tmp_path / "drawn.nii.gz", tmp_path / "out.nii.gz")))
    voxels = np.asanyarray(image.dataobj)
    assert image.shape == labels.shape and np.allclose(image.affine, affine)  # fit_to_model is the app's default
    assert voxels[labels == 2].mean() > voxels[labels == 1].mean() > voxels[labels == 0].mean()


def test_a_label_the_model_cannot_use_is_refused_with_the_reason(server, tmp_path):
    client = _client()
    upload = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(upload))
    with pytest.raises(RuntimeError, match=r"HTTP 422\): .*the posted label: mask of shape \(8, 8, 8\), but the model makes images of \(16, 16, 16\)"):
        client.infer(server["url"], "brain_tumor_semantic", upload, {"fit_to_model": False})
    odd = head_labels((5, 8, 8))
    odd[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(odd, np.eye(4)), str(tmp_path / "odd.nii.gz"))
    with pytest.raises(RuntimeError, match=r"HTTP 422\): .*label values \[7.0\] are not in the expected label set"):
        client.synthesize(server["url"], "brain_tumor_semantic", tmp_path / "odd.nii.gz", tmp_path / "not_written.nii.gz")
    assert not (tmp_path / "not_written.nii.gz").exists()
    with pytest.raises(RuntimeError, match=r"HTTP 422\): .*fit_to_model must be true or false, got 'yes'"):
        client.infer(server["url"], "brain_tumor_semantic", upload, {"fit_to_model": "yes"})
    for seed in ("not a number", 2.9, True, 2**64):
        with pytest.raises(RuntimeError, match=r"HTTP 422\): .*seed must be an integer in \[0, 2\*\*63\)"):
            client.infer(server["url"], "brain_mri", upload, {"seed": seed})


def test_the_client_can_be_run_in_3d_slicers_console(monkeypatch):
    """docs/deployment.md has Slicer's console ``exec`` the client: that defines ``synthesize`` and runs nothing."""
    monkeypatch.setattr("sys.argv", ["/opt/Slicer/bin/SlicerApp-real"])
    namespace = {"__name__": "__main__"}
    exec((APP / "client.py").read_text(), namespace)
    assert callable(namespace["synthesize"])


def _post(server, model: str, params: str, upload: bytes = b"any file") -> tuple[int, str, dict]:
    """A raw multipart POST to /infer/<model>: (status, body, headers), whatever the status."""
    import uuid

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{params}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.nii.gz"\r\n\r\n').encode()
    body += upload + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server['url']}/infer/{model}?output=json", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(), {k.lower(): v for k, v in error.headers.items()}


def test_bad_requests_are_refused_with_the_reason_and_leave_no_upload_behind(server):
    kept = set(server["tmp"].iterdir())  # what the server keeps there itself
    cases = [
        ("brain_mri", "{seed: 1", "params is not JSON (Expecting property name enclosed in double quotes"),
        ("brain_mri", "[1, 2]", "params must be a JSON object of named settings, got a list"),
        ("no_such_model", "{}", "no model 'no_such_model' on this server; it serves ['brain_mri', 'brain_mri_ventricles', 'brain_tumor_semantic']"),
        ("brain_mri", '{"num_inference_steps": 5}', "brain_mri does not take ['num_inference_steps']; its parameters are ['seed']"),
        ("brain_mri", '{"seed": -1}', "seed must be an integer in [0, 2**63)"),  # refused by the task, after the upload
    ]
    for model, params, reason in cases:
        status, body, _ = _post(server, model, params)
        assert status == 422 and reason in json.loads(body)["detail"], (params, status, body)
    assert set(server["tmp"].iterdir()) == kept  # no upload of a refused request is left


def test_the_server_answers_while_it_samples_and_refuses_beyond_its_queue(server):
    import concurrent.futures

    finished: dict[str, float] = {}

    def sample(seed: int) -> int:
        status = _post(server, "brain_mri", json.dumps({"seed": seed}))[0]
        finished[f"sample {seed}"] = time.monotonic()
        return status

    seeds = range(6)  # a queue that takes several samples' time (a 10-step sample of the small model takes a fraction
    # of a second): with two, both could end before /info/ was asked, and the order below would say nothing
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        samples = [pool.submit(sample, seed) for seed in seeds]
        time.sleep(0.3)  # the requests are at the server: one samples, the others wait
        json.load(urllib.request.urlopen(f"{server['url']}/info/", timeout=120))
        finished["info"] = time.monotonic()
        assert [s.result() for s in samples] == [200] * len(seeds)
    # MONAI Label's own /infer sampled on the event loop: /info/ waited for every sample
    assert finished["info"] < max(finished[f"sample {seed}"] for seed in seeds)

    burst = 16  # more than the 8 requests (--conf max_queued) a server holds computing or waiting
    with concurrent.futures.ThreadPoolExecutor(burst) as pool:
        answers = list(pool.map(lambda seed: _post(server, "brain_mri", json.dumps({"seed": seed})), range(burst)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 8 and set(statuses) <= {200, 503} and 503 in statuses, statuses
    refused = next(answer for answer in answers if answer[0] == 503)
    assert "the limit (--conf max_queued 8); try again later" in json.loads(refused[1])["detail"]
    assert refused[2]["retry-after"] == "10"


def test_workers_serve_the_app_each_with_its_own_process(monailabel_python, brain_package, tmp_path):
    bundle = str(brain_package.parent / "brain_mri")
    with running_server(monailabel_python, tmp_path, bundle, "--workers", "2") as running:
        assert json.load(urllib.request.urlopen(f"{running['url']}/info/", timeout=120))["models"].keys() == {"brain_mri"}
        # one worker may answer while the other still loads its models (a loaded machine): wait for the second start
        deadline = time.monotonic() + START_SECONDS
        while running["log"].read_text().count("Started server process") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [_post(running, "brain_mri", json.dumps({"seed": seed}))[0] for seed in (0, 1)] == [200, 200]
        assert running["log"].read_text().count("Started server process") == 2  # MONAI Label's own app crash-looped


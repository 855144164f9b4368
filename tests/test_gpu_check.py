"""benchmarks/gpu_check.py, the one-command GPU check, at its tiny sizes on the CPU: every case of a
latent bundle and of Med-DDPM must run with the bundle's own configs, so that the one short GPU run finds no bug
that a CPU could have found."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.bundles.bundle_runs import in_repository, isolated_state

REPO = Path(__file__).resolve().parents[1]
# the latent bundle group runs in its own process, as the command runs every group; the Med-DDPM and codebook groups
# in this one (a process of its own costs about 4 s of imports), with the process's state given back after them.
# Generous, for a loaded machine:
TIMEOUT = 600.0


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failures(results: list[dict]) -> list[str]:
    return [f"{r['case']}: {r.get('error')}\n{r.get('trace')}" for r in results if not r["ok"]]


def test_latent_bundle_cases_run_and_report(gpu_check) -> None:
    results = gpu_check.run_group_process("brain_mri", "cpu", True, TIMEOUT)
    assert not failures(results), failures(results)
    by_case = {r["case"]: r for r in results}
    assert {"train_autoencoder_float32", "train_autoencoder_bfloat16", "train_denoiser_float32", "train_denoiser_bfloat16"} <= set(by_case)
    for name in ("train_autoencoder_float32", "train_denoiser_bfloat16"):
        assert by_case[name]["batch"] == 2 and by_case[name]["step_s"] > 0
    assert by_case["sample_ddim5"]["steps"] == 5
    assert by_case["sample_ddpm_all_steps"]["steps"] == 10  # every training step of the tiny schedule
    assert by_case["sample_throughput_ddim5"]["volumes_per_s"] > 0
    assert by_case["torchscript_on_device"]["matches"] is True
    text = gpu_check.report({"device": "CPU"}, results, True, "python benchmarks/gpu_check.py --device cpu --tiny")
    assert "| brain_mri | denoiser | bfloat16 | 2 (2) |" in text
    assert "## Failures (0)" in text


def test_mask_conditioned_bundle_and_codebook_cases_run(gpu_check) -> None:
    with in_repository(), isolated_state():
        results = gpu_check.run_group("brain_tumor_semantic", "cpu", tiny=True) + gpu_check.run_group("codebook", "cpu", tiny=True)
    assert not failures(results), failures(results)
    by_case = {r["case"]: r for r in results}
    assert by_case["train_mask_conditioned_float32"]["step_s"] > 0
    assert by_case["torchscript_on_device"]["matches"] is True
    assert by_case["nearest_code_search"]["same_codes_fraction"] == 1.0


def test_a_failing_case_is_recorded_and_the_rest_still_run(gpu_check, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(gpu_check, "nearest_code_check", broken)  # in this process: run the group here
    results = gpu_check.run_group("codebook", "cpu", tiny=True)
    assert results[0]["ok"] is False and "out of memory" in results[0]["error"]
    text = gpu_check.report({}, results, True, "command")
    assert "## Failures (1)" in text and "codebook, nearest_code_search: RuntimeError: CUDA out of memory" in text


def test_asking_for_cuda_without_a_gpu_says_what_to_do(gpu_check, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cuda"])
    with pytest.raises(SystemExit, match="--device cpu --tiny"):
        gpu_check.main()


def test_a_spent_budget_records_the_groups_not_run_and_writes_the_report(gpu_check, monkeypatch, tmp_path) -> None:
    ran, clock = [], [0.0]

    def run_group_process(group, *args):  # each group takes 30 s of the check's 35, on a clock of its own
        ran.append(group)
        clock[0] += 30.0
        return []

    monkeypatch.setattr(gpu_check, "run_group_process", run_group_process)
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: clock[0])
    out = tmp_path / "gpu.md"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--tiny", "--groups", "codebook", "multi_gpu",
                                      "--budget", "35", "--out", str(out)])
    gpu_check.main()
    assert ran == ["codebook"]
    assert "- multi_gpu, (process): not run: the --budget of 35 s was spent" in out.read_text()
    assert out.with_suffix(".json").is_file()


def test_a_group_gets_at_most_the_budget_left(gpu_check, monkeypatch, tmp_path) -> None:
    timeouts = []
    monkeypatch.setattr(gpu_check, "run_group_process", lambda group, device, tiny, timeout: timeouts.append(timeout) or [])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--tiny", "--groups", "codebook", "--timeout", "240",
                                      "--budget", "100", "--out", str(tmp_path / "gpu.md")])
    gpu_check.main()
    assert len(timeouts) == 1 and 90 < timeouts[0] <= 100


def test_sampling_throughput_stays_within_its_budget(gpu_check, monkeypatch) -> None:
    import types

    import torch

    clock, tried = [0.0], []

    def draw(n: int) -> None:  # one second a volume, on a clock of its own
        tried.append(n)
        clock[0] += n

    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(gpu_check, "sampler_of", lambda bundle, steps: (None, types.SimpleNamespace(verbose=True)))
    monkeypatch.setattr(gpu_check, "_draw", lambda bundle, parser, sampler: draw)
    bundle = types.SimpleNamespace(tiny=False, device=torch.device("cpu"))
    found = gpu_check.sample_throughput(bundle, 50, 10.0)
    # 1 + 2 + 4 = 7 s; a batch of 8 would take the run to 15 s of a 10 s budget
    assert tried == [1, 2, 4] and found["stopped_by"] == "time budget" and found["volumes_per_s"] == 1.0

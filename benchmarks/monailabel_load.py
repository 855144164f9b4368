"""The MONAI Label app under load: bursts of sample requests on the loopback address, malformed ones mixed in.

Starts ``integrations/monailabel/run_server.py`` (with the Python given, which has monailabel installed as
``docs/deployment.md`` says) on the bundle folders given, then for each burst size sends that many valid requests at
once (seeds 0, 1, ...) plus two malformed ones (``params`` that is not JSON, an unknown parameter), and meanwhile
asks ``/info/`` once a second. Runs MONAI Label's own application (its ``/infer``, the baseline) and then this app's, and records per burst: the statuses, the latency of the first and the last answer, the
longest ``/info/`` wait, whether one seed gave the same voxels as in the first burst, and the server's memory
(resident set, with its children, from /proc: Linux) before, at the peak and after. Writes ``monailabel_load.md`` and ``.json``.

    python benchmarks/monailabel_load.py --python VENV/bin/python --bundle PACKAGE_DIR [--steps 50] [--bursts 4,8,16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "integrations" / "monailabel"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, params: str, upload: bytes, timeout: float) -> tuple[int, bytes, float]:
    """POST a multipart request as the MONAI Label clients do; (status, body, seconds)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{params}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.nii.gz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + upload + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - start
    except urllib.error.HTTPError as error:
        return error.code, error.read(), time.monotonic() - start
    except OSError:  # the client's own timeout
        return 0, b"", time.monotonic() - start


def memory_mib(pid: int) -> float:
    """Resident memory (MiB) of a process and its children, from /proc (Linux)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


# MONAI Label's own application (its /infer on the event loop), loaded as synthesis_server loads it: the baseline
MONAILABEL_OWN = (
    "import sys; sys.path.insert(0, {app!r}); import synthesis_server; from monailabel.main import Main; "
    "sys.argv = ['monailabel', *sys.argv[1:], '--uvicorn_app', 'monailabel.app:app']; Main().run()"
)


def start_server(python: str, bundles: list[str], steps: int, root: Path, max_queued: int, own: bool) -> tuple[subprocess.Popen, str]:
    (root / "studies").mkdir(parents=True)
    (root / "app").mkdir()
    (root / "tmp").mkdir()
    (root / "app" / "main.py").write_bytes((APP / "main.py").read_bytes())
    port = _free_port()
    quiet = {f"MONAI_LABEL_{key}": "false" for key in ("TASKS_TRAIN", "TASKS_STRATEGY", "TASKS_SCORING", "TASKS_BATCH_INFER",
                                                       "SESSIONS", "AUTO_UPDATE_SCORING", "DATASTORE_AUTO_RELOAD", "TRACKING_ENABLED")}
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(
        [python, *(["-c", MONAILABEL_OWN.format(app=str(APP))] if own else [str(APP / "run_server.py")]), "start_server", "--app", str(root / "app"), "--studies", str(root / "studies"),
         "--host", "127.0.0.1", "--port", str(port), "--conf", "bundles", ",".join(bundles),
         "--conf", "num_inference_steps", str(steps), "--conf", "device", "cpu", "--conf", "max_queued", str(max_queued)],
        cwd=root, env={**os.environ, **quiet, "TMPDIR": str(root / "tmp"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"{url}/info/", timeout=5).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit("the server did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(0.5)


def burst(url: str, model: str, size: int, upload: bytes, timeout: float, server: int) -> dict:
    requests = [("valid", json.dumps({"seed": seed})) for seed in range(size)]
    requests += [("params not JSON", "{seed: 1"), ("unknown parameter", json.dumps({"num_inference_steps": 5}))]
    info_waits, peak, done = [], [memory_mib(server)], threading.Event()

    def watch() -> None:
        while not done.is_set():
            start = time.monotonic()
            try:
                urllib.request.urlopen(f"{url}/info/", timeout=timeout).read()
            except OSError:
                pass
            info_waits.append(time.monotonic() - start)
            peak.append(memory_mib(server))
            done.wait(1.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: (r[0], *post(f"{url}/infer/{model}?output=image", r[1], upload, timeout)), requests))
    done.set()
    watcher.join()
    valid = [a for a in answers if a[0] == "valid"]
    ok = sorted(a[3] for a in valid if a[1] == 200)
    statuses: dict[str, int] = {}
    for kind, status, _, _ in answers:
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
    return {
        "requests": len(requests), "statuses": statuses,
        "first_answer_s": round(ok[0], 2) if ok else None, "last_answer_s": round(ok[-1], 2) if ok else None,
        "refused_in_s": round(max((a[3] for a in answers if a[1] not in (0, 200)), default=0.0), 2),
        "longest_info_wait_s": round(max(info_waits, default=0.0), 2),
        "seed0_sha256": hashlib.sha256(valid[0][2]).hexdigest()[:16] if valid[0][1] == 200 else None,
        "memory_peak_mib": round(max(peak), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="a Python with monailabel installed (docs/deployment.md)")
    parser.add_argument("--bundle", required=True, help="a latent bundle folder (a package, unpacked) to serve")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--bursts", default="4,8,16")
    parser.add_argument("--max_queued", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="each client's timeout in seconds")
    parser.add_argument("--out", default=str(Path(__file__).with_name("monailabel_load.md")))
    args = parser.parse_args()
    bundle = Path(args.bundle).resolve()
    results = {name: measure(args, bundle, own=(name == "MONAI Label's /infer")) for name in ("MONAI Label's /infer", "this app's /infer")}
    write(results, args, bundle)


def measure(args: argparse.Namespace, bundle: Path, own: bool) -> dict:
    """Start a server (MONAI Label's own application with ``own``), send the bursts, stop it."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        process, url = start_server(args.python, [str(bundle)], args.steps, root, args.max_queued, own)
        server = process.pid
        before = {p.name for p in (root / "tmp").iterdir()}  # what the server keeps there itself
        try:
            upload = b"any small file: a latent bundle's sample does not use it"
            one = post(f"{url}/infer/{bundle.name}?output=image", json.dumps({"seed": 0}), upload, args.timeout)
            time.sleep(1.0)
            results = {"one_request_s": round(one[2], 2), "idle_mib": round(memory_mib(server), 1), "bursts": {}}
            for size in (int(s) for s in args.bursts.split(",")):
                results["bursts"][size] = burst(url, bundle.name, size, upload, args.timeout, server)
                results["bursts"][size]["same_voxels_as_alone"] = results["bursts"][size]["seed0_sha256"] == hashlib.sha256(one[1]).hexdigest()[:16]
            time.sleep(1.0)
            results["after_mib"] = round(memory_mib(server), 1)
            results["uploads_left"] = sorted(p.name for p in (root / "tmp").iterdir() if p.name not in before)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return results


def write(results: dict, args: argparse.Namespace, bundle: Path) -> None:
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    rows, servers = [], []
    for name, measured in results.items():
        servers.append(f"{name}: one request alone {measured['one_request_s']} s; memory {measured['idle_mib']} MiB idle, "
                       f"{measured['after_mib']} MiB after the bursts; files the requests left in the temporary folder: "
                       f"{len(measured['uploads_left'])}")
        for size, r in measured["bursts"].items():
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
            rows.append(f"| {name} | {size} + 2 malformed | {statuses} | {r['first_answer_s']} | {r['last_answer_s']} | "
                        f"{r['refused_in_s']} | {r['longest_info_wait_s']} | {'yes' if r['same_voxels_as_alone'] else 'no'} | {r['memory_peak_mib']} |")
    out.write_text(
        f"# The MONAI Label app under load\n\nCommand: `python benchmarks/monailabel_load.py --python P --bundle {bundle.name} "
        f"--steps {args.steps} --bursts {args.bursts} --max_queued {args.max_queued}` (the suite's 32^3 brain_mri package). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, device cpu. Each burst sends its valid requests (seeds 0 on) "
        "and two malformed ones (params not JSON; an unknown parameter) at once, and asks /info/ once a second meanwhile; "
        "MONAI Label's own application and this app's are run one after the other on the same bundle.\n\n"
        + "".join(f"- {line}.\n" for line in servers) +
        "\n| server | burst | statuses | first answer (s) | last answer (s) | refusals (4xx, 5xx) within (s) | longest /info/ wait (s) | "
        "seed 0 as alone | peak MiB |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(out.read_text())


if __name__ == "__main__":
    main()

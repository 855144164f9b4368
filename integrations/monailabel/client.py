"""Ask a running MONAI Label server of this app for a synthetic volume: ``synthesize(server, model, label)``.

Standard library only, so it also runs inside 3D Slicer's Python console (see docs/deployment.md). From a shell:
``python integrations/monailabel/client.py http://127.0.0.1:8000 brain_tumor_semantic label.nii.gz out.nii.gz``.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def infer(server: str, model: str, upload: str | Path, params: dict, answer: str = "image", timeout: float = 600) -> bytes:
    """POST ``upload`` as the ``file`` part with ``params`` to ``<server>/infer/<model>?output=<answer>`` (``image``,
    ``json`` or ``all``), as the
    MONAI Label clients do; the response's body. ``RuntimeError`` with the server's reason if it refuses."""
    boundary = uuid.uuid4().hex
    upload = Path(upload)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{upload.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + upload.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{server.rstrip('/')}/infer/{model}?output={answer}", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{server} refused {upload} for {model} (HTTP {error.code}): {error.read().decode()[:2000]}") from None


def synthesize(
    server: str, model: str, upload: str | Path, output: str | Path, seed: int = 0, labels: dict | None = None,
    guidance_scale: float | None = None,
) -> Path:
    """A synthetic volume written to ``output`` (NIfTI): for a mask-conditioned bundle following the label volume
    ``upload``; for a latent bundle ``upload`` is any small file (not used), and a class-conditional one samples the
    classes ``labels`` asks for ({variable: class}) with ``guidance_scale`` (None: the server's default)."""
    params: dict = {"seed": seed}
    if labels is not None:
        params["labels"] = labels
    if guidance_scale is not None:
        params["guidance_scale"] = guidance_scale
    output = Path(output)
    output.write_bytes(infer(server, model, upload, params))
    return output


if __name__ == "__main__" and sys.argv[0].endswith("client.py"):  # not when exec'd in 3D Slicer's console
    if len(sys.argv) not in (5, 6, 7):
        sys.exit("usage: client.py SERVER MODEL UPLOAD OUTPUT [SEED [LABELS as JSON, e.g. '{\"ventricles\": \"enlarged\"}']]")
    print(synthesize(*sys.argv[1:5], seed=int(sys.argv[5]) if len(sys.argv) > 5 else 0,
                     labels=json.loads(sys.argv[6]) if len(sys.argv) > 6 else None))

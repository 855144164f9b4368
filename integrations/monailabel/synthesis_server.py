"""The MONAI Label server's web application for this app: MONAI Label 0.8.5's, with ``/infer/{model}`` answered by
``synthesize`` below (matched first; MONAI Label's application is mounted under it for everything else).
``run_server.py`` starts uvicorn on ``synthesis_server:app``, so every worker process
(``--workers N``) imports this module and gets the same application.

Why the endpoint is replaced. MONAI Label's own ``/infer/{model}`` is an ``async`` function that runs the whole
inference on the server's event loop: while one volume is sampled (seconds to minutes) nothing else is served,
``/info/`` included, finished answers wait for the whole burst, and requests whose client gave up are still
computed. It also answers malformed ``params`` with a bare 500 and leaves the uploads of every refused request in
the temporary folder. ``synthesize`` instead:

- checks the request first and answers every bad one with 422 and the reason: ``params`` that is not a JSON object,
  an unknown model, a parameter the model does not take, an ``output`` this app does not make;
- samples in a worker thread, one volume at a time per process (the model is not shared between threads), so the
  event loop answers ``/info/`` and returns each volume as soon as it is done;
- holds at most ``max_queued`` requests (``--conf max_queued``, default 8) computing or waiting; beyond that it
  answers 503 with ``Retry-After``, at once, instead of queueing without bound;
- does not compute a request whose client has gone while it waited;
- removes the uploaded files when the request ends, however it ends.

Importing MONAI Label's application needs ``itk``, ``SimpleITK`` and ``pydicom_seg``, which this app never uses
(they serve DICOM-SEG output, ``.bin`` label uploads and MONAI Label's ITK writer; pydicom-seg cannot be installed
beside pydicom 3). Only while it loads, and only for the modules that are not installed, stand-ins are registered
that raise a clear ``ModuleNotFoundError`` if anything does use them; they are removed afterwards.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import monai.data  # noqa: F401  (MONAI first: its optional imports must not meet the stand-ins)

logger = logging.getLogger(__name__)

OPTIONAL_AT_IMPORT = ("itk", "SimpleITK", "pydicom_seg")
DEFAULT_MAX_QUEUED = 8
OUTPUTS = (None, "image", "json", "all")


class _NotInstalled(types.ModuleType):
    """A stand-in for a module that is not installed: any use names it."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise ModuleNotFoundError(f"{self.__name__} is not installed (this MONAI Label app does not need it).")


def _load_monailabel_app():
    stand_ins = {name: _NotInstalled(name) for name in OPTIONAL_AT_IMPORT if importlib.util.find_spec(name) is None}
    sys.modules.update(stand_ins)
    try:
        import monailabel.app
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return monailabel.app


_monailabel_app = _load_monailabel_app()

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Response, UploadFile  # noqa: E402
from fastapi.background import BackgroundTasks  # noqa: E402
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.endpoints.infer import send_response  # noqa: E402
from monailabel.endpoints.user.auth import RBAC, User  # noqa: E402
from monailabel.interfaces.utils.app import app_instance  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

__all__ = ["app", "parse_params", "synthesize"]


class _Queue:
    """Requests computing or waiting in this process, and the one-at-a-time turn of the model."""

    def __init__(self) -> None:
        self.held = 0
        self._turn: asyncio.Semaphore | None = None

    @property
    def turn(self) -> asyncio.Semaphore:
        if self._turn is None:  # made on the server's event loop, at the first request
            self._turn = asyncio.Semaphore(1)
        return self._turn


_QUEUE = _Queue()


def parse_params(params: str | None, model: str, allowed: dict[str, Any]) -> dict[str, Any]:
    """The request's ``params`` form field as a dict of the parameters ``model`` takes (``allowed``: its config);
    ``HTTPException`` 422 with the reason otherwise."""
    try:
        parsed = json.loads(params) if params else {}
    except json.JSONDecodeError as error:
        raise HTTPException(status_code=422, detail=f"params is not JSON ({error.msg} at character {error.pos}): {params[:200]!r}.") from None
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=422, detail=f"params must be a JSON object of named settings, got a {type(parsed).__name__}.")
    unknown = sorted(set(parsed) - set(allowed))
    if unknown:
        raise HTTPException(
            status_code=422,
            detail=f"{model} does not take {unknown}; its parameters are {sorted(allowed)} (the number of sampling "
                   "steps and the device are the server's --conf num_inference_steps and --conf device).",
        )
    return parsed


def _save_upload(upload: UploadFile, uploads: list[str]) -> str:
    suffix = "".join(Path(upload.filename).suffixes) if upload.filename else ".nii.gz"
    handle, path = tempfile.mkstemp(suffix=suffix)
    uploads.append(path)
    with os.fdopen(handle, "wb") as saved:
        shutil.copyfileobj(upload.file, saved)
    return path


async def synthesize(
    request: Request,
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: str | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """``/infer/{model}``: a synthetic volume, sampled off the event loop (see the module's docstring)."""
    instance = app_instance()
    uploads: list[str] = []
    try:
        models = instance.parameters()
        if model not in models:
            raise HTTPException(status_code=422, detail=f"no model {model!r} on this server; it serves {sorted(models)}.")
        settings_given = parse_params(params, model, models[model])
        if output not in OUTPUTS:
            raise HTTPException(status_code=422, detail=f"output must be one of image, json or all, got {output!r}.")
        if not file and not image:
            raise HTTPException(status_code=422, detail="post a file (the label volume for a mask-conditioned model, any small file otherwise) or name a studies image.")
        limit = int(getattr(instance, "max_queued", DEFAULT_MAX_QUEUED))
        if _QUEUE.held >= limit:
            raise HTTPException(
                status_code=503, headers={"Retry-After": "10"},
                detail=f"{_QUEUE.held} requests are computing or waiting here, the limit (--conf max_queued {limit}); try again later.",
            )
        _QUEUE.held += 1
        try:
            infer_request = {"model": model, "image": image, **settings_given}
            if file:
                infer_request["image"] = _save_upload(file, uploads)
            if label:
                infer_request["label"] = _save_upload(label, uploads)
            async with _QUEUE.turn:
                if await request.is_disconnected():
                    logger.info("%s: the client left while the request waited; not computed.", model)
                    return Response(status_code=499)
                result = await run_in_threadpool(instance.infer, infer_request)
        finally:
            _QUEUE.held -= 1
        return send_response(instance.datastore(), result, output, background_tasks)
    finally:
        for path in uploads:
            Path(path).unlink(missing_ok=True)


def _application():
    """This app's ``/infer/{model}``, with MONAI Label's application (its lifespan, which starts the app, and every
    other route) mounted under it: the route is matched first, whatever the router internals of FastAPI are."""
    application = FastAPI(title=settings.MONAI_LABEL_PROJECT_NAME, lifespan=_monailabel_app.lifespan,
                          docs_url=None, redoc_url=None, openapi_url=None)
    application.add_middleware(CORSMiddleware, allow_origins=_monailabel_app.origins, allow_credentials=True,
                               allow_methods=["*"], allow_headers=["*"])
    application.add_api_route(f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}", synthesize, methods=["POST"],
                              summary="Synthesize a volume")
    application.mount("/", _monailabel_app.app)
    return application


app = _application()

"""A MONAI Label app that makes synthetic volumes with the bundles of the Medical Diffusion collection.

Each bundle folder (a package from ``python -m common package``, unpacked) becomes an infer task named after it:

- a mask-conditioned bundle (Med-DDPM, ``brain_tumor_semantic``): the label volume posted to ``/infer/<name>`` (as
  ``file``, or as ``label`` beside a studies image) gives a synthetic image that follows it, on the label's grid
  (its affine), so a viewer lays the two over each other;
- a latent bundle (Medical Diffusion, ``brain_mri`` and the others): a sample (post any small file, or name a
  studies image; the input is not used): unconditional, or, from a class-conditional bundle, of the classes
  ``params`` asks for in ``labels`` (``{"labels": {"ventricles": "enlarged"}, "guidance_scale": 3}``; every labelled
  variable, or none for the unconditional model); the NIfTI header's description names them.

The result is a float32 NIfTI image in [-1, 1]. ``params`` may hold ``seed`` (default 0) and, for a mask-conditioned
bundle, ``fit_to_model`` (default true: a label drawn on any image is fitted to the model's grid, see
``BundleSynthesizer.fit_label``, and the image comes back on the label's own grid; false: the label must be at the
model's size and spacing already). A request the model cannot answer (a bad seed, unknown classes, a labelled
region larger than the model's field of view; with ``fit_to_model`` false, another size or spacing) is answered
with HTTP 422 and the reason. App settings (``--conf``):
``bundles`` (comma-separated folders; default: every bundle folder under ``<app>/model/``),
``num_inference_steps`` (default 50 DDIM steps), ``device`` (default: a GPU if there is one) and ``max_queued``
(default 8: requests computing or waiting per server process; beyond it a request is answered 503 at once). Serve it
with ``run_server.py``, whose ``/infer`` samples off the server's event loop (``synthesis_server.py``).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package that is not this project's (another top-level `common`)
        return False


def bundle_folders(app_dir: str, setting: str | None) -> list[Path]:
    """The bundles to serve: ``setting`` (comma-separated folders) or every bundle folder under ``<app>/model/``."""
    if setting:
        folders = [Path(p.strip()).expanduser() for p in setting.split(",") if p.strip()]
    else:
        models = Path(app_dir) / "model"
        folders = sorted(p for p in models.iterdir() if (p / "configs" / "inference.json").is_file()) if models.is_dir() else []
    missing = [str(f) for f in folders if not (f / "configs" / "inference.json").is_file()]
    if missing or not folders:
        where = ", ".join(missing) if missing else f"none under {Path(app_dir) / 'model'}"
        raise FileNotFoundError(
            f"no bundle to serve: {where} (a bundle folder has configs/inference.json; give them with "
            "--conf bundles PATH[,PATH])."
        )
    if not _importable("common.deploy.synthesis"):  # without this project installed, a package's copy serves
        packaged = [folder for folder in folders if (folder / "common" / "__init__.py").is_file()]
        if not packaged:
            raise ImportError("no `common` to run the bundles with: install this project (pip install -e .) or "
                              "serve packages (python -m common package), which carry it.")
        sys.path.append(str(packaged[0]))
    return folders


class SynthesisTask(InferTask):
    """One bundle's sampler behind ``/infer``: a volume per request, written as NIfTI."""

    def __init__(self, bundle: Path, num_inference_steps: int, device: str | None) -> None:
        from common.deploy import BundleSynthesizer

        self.synthesizer = BundleSynthesizer(bundle, device=device, num_inference_steps=num_inference_steps)
        classes = self.synthesizer.class_labels
        if self.synthesizer.conditional:
            what, own = "a synthetic image that follows the posted label volume", {"fit_to_model": True}
        elif classes is not None:
            asked = ", ".join(f"{name}: {' | '.join(values)}" for name, values in classes.items())
            what = f"a synthetic volume of the classes asked for in params labels ({asked}; none: unconditional)"
            own = {"labels": None, "guidance_scale": self.synthesizer.sampler.guidance_scale}
        else:
            what, own = "an unconditional synthetic volume", {}
        what += f" ({num_inference_steps} sampling steps)"
        super().__init__(
            type=InferType.OTHERS, labels=None, dimension=3, description=f"{bundle.name}: {what}",
            config={"seed": 0, **own},
        )

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from common.data import DatasetError
        from common.deploy import SynthesisError, write_volume

        settings = {"fit_to_model": False, **copy.deepcopy(self._config), **request}
        seed = settings["seed"]
        if isinstance(seed, str) and seed.isdigit():
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise HTTPException(status_code=422, detail=f"seed must be an integer in [0, 2**63), got {settings['seed']!r}.")
        if not isinstance(settings["fit_to_model"], bool):
            raise HTTPException(status_code=422, detail=f"fit_to_model must be true or false, got {settings['fit_to_model']!r}.")
        asked = settings.get("labels")
        if asked is not None and not isinstance(asked, dict):  # a mapping only: never a file on the server
            raise HTTPException(status_code=422, detail=f"labels must be a JSON object of {{variable: class}}, got {asked!r}.")
        label = (request.get("label") or request.get("image")) if self.synthesizer.conditional else None
        try:
            volume = self.synthesizer(label, seed=seed, fit_to_model=settings["fit_to_model"], labels=asked,
                                      guidance_scale=settings.get("guidance_scale"))
        except (DatasetError, SynthesisError) as error:  # the request's fault: say why to the client
            reason = str(error).replace(str(label), "the posted label") if label else str(error)  # not a temp name
            raise HTTPException(status_code=422, detail=reason) from error
        handle, path = tempfile.mkstemp(suffix=".nii.gz")  # the server sends it and then deletes it
        os.close(handle)
        write_volume(volume, path)
        logger.info("%s: seed %d -> %s", self.synthesizer.bundle_dir.name, seed, path)
        labelled = {} if self.synthesizer.class_labels is None else {"labels": volume.labels}
        return path, {"seed": seed, "shape": list(volume.image.shape), "bundle": self.synthesizer.bundle_dir.name, **labelled}


class SynthesisApp(MONAILabelApp):
    """The app: one ``SynthesisTask`` per bundle, no training, no active-learning strategies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = bundle_folders(app_dir, conf.get("bundles"))
        self.num_inference_steps = int(conf.get("num_inference_steps", "50"))
        self.device = conf.get("device") or None
        self.max_queued = int(conf.get("max_queued", "8"))  # read by synthesis_server's /infer
        if self.max_queued < 1:
            raise ValueError(f"--conf max_queued must be 1 or more, got {self.max_queued}.")
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="medical-diffusion-synthesis",
            description="Synthetic 3D volumes from Medical Diffusion and Med-DDPM bundles", version="0.2.2",
        )

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Each served model's request parameters with their defaults: what ``synthesis_server``'s ``/infer``
        accepts in ``params`` (without ``info()``, which also scans the studies)."""
        return {name: dict(task.config()) for name, task in self._infers.items()}  # MONAILabelApp keeps them there

    def init_infers(self) -> dict[str, InferTask]:
        return {folder.name: SynthesisTask(folder, self.num_inference_steps, self.device) for folder in self.bundles}

    def init_strategies(self) -> dict:
        return {}

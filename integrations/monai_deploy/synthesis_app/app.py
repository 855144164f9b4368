"""A MONAI Deploy application that makes synthetic volumes with a bundle of this collection.

Mask-conditioned bundle (Med-DDPM, ``brain_tumor_semantic``): every NIfTI label under the input folder gives a
synthetic image that follows it, written to the output folder with the label's affine. Latent bundle (Medical
Diffusion: ``brain_mri``, ``chest_ct``, ...): ``num_samples`` volumes, unconditional, or, from a class-conditional
bundle, of the classes ``labels`` asks for (the labels in each file's NIfTI description). The model folder is a packaged
bundle (``python -m common package``), or a folder holding one; its own copy of ``common`` is imported, so the
application needs only the SDK, MONAI and the bundle's requirements.

Run: ``python synthesis_app -i LABELS -o OUTPUT -m BUNDLE`` (or set HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH,
HOLOSCAN_MODEL_PATH); the ``synthesis`` section of ``app.yaml`` (``HOLOSCAN_CONFIG_PATH``) sets ``num_samples``,
``seed``, ``num_inference_steps``, ``device`` and ``fit_to_model`` (labels on any grid are fitted to the model's,
and each image is returned on its label's grid); for a class-conditional latent bundle ``labels`` (one
``{variable: class}`` mapping for every volume, or a CSV/JSON file of them, one row per volume, as ``inference.json``
reads it; a relative path is taken in the input folder) and ``guidance_scale``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the operators module next to this file, however the app is started

from operators import NiftiWriterOperator, SynthesisOperator  # noqa: E402


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package that is not this project's (another top-level `common`)
        return False


def checked_settings(settings: dict) -> dict:
    """The ``synthesis`` section of app.yaml, each value of the type it must have (``ValueError`` naming it)."""
    types: dict[str, tuple[type, ...]] = {
        "num_samples": (int,), "seed": (int,), "num_inference_steps": (int,), "device": (str,), "fit_to_model": (bool,),
        "labels": (dict, str), "guidance_scale": (int, float),
    }
    unknown = sorted(set(settings) - set(types))
    if unknown:
        raise ValueError(f"app.yaml synthesis: unknown settings {unknown} (known: {', '.join(types)}).")
    for key, value in settings.items():
        if value is not None and (not isinstance(value, types[key]) or (bool not in types[key] and isinstance(value, bool))):
            kinds = {"labels": "mapping or file path", "guidance_scale": "number"}.get(key, types[key][0].__name__)
            raise ValueError(f"app.yaml synthesis: {key} must be a {kinds}, got {value!r}.")
    return {key: value for key, value in settings.items() if value is not None}


def labels_setting(labels: dict | str | None, input_dir: Path | None) -> dict | str | None:
    """app.yaml's ``labels``: a mapping as it is; a file path (``~`` expanded), relative to the input folder unless
    absolute (to the working folder when the application has no input folder)."""
    if not isinstance(labels, str):
        return labels
    path = Path(labels).expanduser()
    return str(input_dir / path if input_dir is not None and not path.is_absolute() else path)


def bundle_folder(model_path: str | os.PathLike) -> Path:
    """The bundle under the model path (the folder itself, or its one sub-folder holding a bundle); without this
    project installed (as in a MONAI Application Package), that package's own copy of ``common`` is imported."""
    folder = Path(model_path)
    if not _importable("common.deploy.synthesis"):
        inside = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        bundles = [p for p in [folder, *inside] if (p / "configs" / "inference.json").is_file()]
        if len(bundles) == 1 and (bundles[0] / "common" / "__init__.py").is_file():
            sys.path.append(str(bundles[0]))
    try:
        # also a check that this `common` has the serving functions (an older package's copy has not)
        from common.deploy.synthesis import find_bundle_folder, plan_requests, write_volume  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{error}: no `common` that this application can use under {folder}: serve a package made with this "
            "release (python -m common package), which carries it, or install this project beside the SDK."
        ) from error
    return find_bundle_folder(folder)


class SynthesisApp(Application):
    """Labels in, synthetic images out (mask-conditioned bundle), or samples of a latent bundle (of the classes
    asked for, if it is class-conditional)."""

    name = "medical_diffusion_synthesis"
    description = "Synthetic 3D volumes from a Medical Diffusion or Med-DDPM bundle"
    version = "0.2.2"

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        bundle = bundle_folder(context.model_path)
        settings = checked_settings(dict(self.kwargs("synthesis")))  # {} without a synthesis section
        # a mask-conditioned bundle reads its labels there (a missing folder is named); a latent one ignores it
        input_dir = Path(context.input_path) if context.input_path else None
        logging.info("bundle %s, input %s, output %s, settings %s", bundle, input_dir, context.output_path, settings)
        from common.deploy.synthesis import BundleSynthesizer, plan_requests

        labels = labels_setting(settings.get("labels"), input_dir)
        synthesizer = BundleSynthesizer(bundle, device=settings.get("device"), num_inference_steps=settings.get("num_inference_steps"))
        requests = plan_requests(synthesizer, input_dir, settings.get("num_samples", 1), settings.get("seed", 0),
                                 settings.get("fit_to_model", False), labels,
                                 settings.get("guidance_scale"))  # every label checked before sampling
        synthesis = SynthesisOperator(self, CountCondition(self, len(requests)), synthesizer=synthesizer,
                                      requests=requests, name="synthesis")
        writer = NiftiWriterOperator(self, output_dir=Path(context.output_path), name="nifti_writer")
        self.add_flow(synthesis, writer, {("volume", "volume")})


def main(argv: list[str] | None = None) -> None:
    """Run the application with ``app.yaml`` (``HOLOSCAN_CONFIG_PATH`` in a MONAI Application Package)."""
    app = SynthesisApp(argv) if argv is not None else SynthesisApp()
    app.config(os.environ.get("HOLOSCAN_CONFIG_PATH", str(HERE / "app.yaml")))
    app.run()


if __name__ == "__main__":
    main()

"""MONAI Deploy operators around ``common.deploy.synthesis``: the logic lives there (tested on a CPU without the
SDK); these classes only connect it to the SDK's ports. Importing this module needs monai-deploy-app-sdk."""

from __future__ import annotations

from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

# objects pass between operators unchanged (a dict of arrays would otherwise become a Holoscan TensorMap)
PYTHON_OBJECT = "PyObject"


class SynthesisOperator(Operator):
    """Source operator: samples every volume of the request (one per label in the input folder for a
    mask-conditioned bundle, ``num_samples`` otherwise) and emits ``[(file name, SyntheticVolume), ...]``."""

    def __init__(self, fragment: Fragment, *args, bundle_dir: Path, input_dir: Path | None, settings: dict, **kwargs) -> None:
        self.bundle_dir, self.input_dir, self.settings = Path(bundle_dir), input_dir, dict(settings)
        super().__init__(fragment, *args, **kwargs)  # the SDK calls setup() from here: attributes first

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("volumes")

    def compute(self, op_input, op_output, context) -> None:
        from common.deploy.synthesis import BundleSynthesizer, requested_volumes

        synthesizer = BundleSynthesizer(
            self.bundle_dir, device=self.settings.get("device"), num_inference_steps=self.settings.get("num_inference_steps")
        )
        volumes = requested_volumes(
            synthesizer, self.input_dir, int(self.settings.get("num_samples", 1)), int(self.settings.get("seed", 0)),
            bool(self.settings.get("fit_to_model", False)),
        )
        op_output.emit(volumes, "volumes", PYTHON_OBJECT)


class NiftiWriterOperator(Operator):
    """Writes each received volume as ``<output folder>/<file name>`` (NIfTI with its affine)."""

    def __init__(self, fragment: Fragment, *args, output_dir: Path, **kwargs) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("volumes")

    def compute(self, op_input, op_output, context) -> None:
        from common.deploy.synthesis import write_volume

        for name, volume in op_input.receive("volumes"):
            write_volume(volume, self.output_dir / name)

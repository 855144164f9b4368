"""MONAI Deploy operators around ``common.deploy.synthesis``: the logic lives there (tested on a CPU without the
SDK); these classes only connect it to the SDK's ports. Importing this module needs monai-deploy-app-sdk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

# objects pass between operators unchanged (a dict of arrays would otherwise become a Holoscan TensorMap)
PYTHON_OBJECT = "PyObject"


class SynthesisOperator(Operator):
    """Source operator: makes the volumes of the planned requests (``common.deploy.plan_requests``), one per run of
    the operator, and emits ``(file name, SyntheticVolume)``; the application runs it once per request."""

    def __init__(self, fragment: Fragment, *args, synthesizer: Any, requests: list, **kwargs) -> None:
        self.synthesizer, self.requests, self.done = synthesizer, list(requests), 0
        super().__init__(fragment, *args, **kwargs)  # the SDK calls setup() from here: attributes first

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("volume")

    def compute(self, op_input, op_output, context) -> None:
        request = self.requests[self.done]
        self.done += 1
        volume = request.answer(self.synthesizer)
        op_output.emit((request.name, volume), "volume", PYTHON_OBJECT)


class NiftiWriterOperator(Operator):
    """Writes each received volume as ``<output folder>/<file name>`` (NIfTI with its affine)."""

    def __init__(self, fragment: Fragment, *args, output_dir: Path, **kwargs) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("volume")

    def compute(self, op_input, op_output, context) -> None:
        from common.deploy.synthesis import write_volume

        name, volume = op_input.receive("volume")
        write_volume(volume, self.output_dir / name)

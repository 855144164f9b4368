"""Start the MONAI Label server for this app without itk, SimpleITK or pydicom-seg installed.

``monailabel`` 0.8.5 imports those three when its web application loads, but uses them only for DICOM-SEG
output, ``.bin`` label uploads and its default ITK writer, none of which this app reaches (it writes NIfTI
itself). pydicom-seg also cannot be installed beside pydicom 3, which this project needs. So, only while the
server's modules load and only for the modules that are not installed, stand-ins are registered that raise a
clear ``ModuleNotFoundError`` if anything does use them; they are removed afterwards, so MONAI's own optional
imports still see the modules as absent. With the three installed, nothing is replaced.

Usage, with the arguments of ``monailabel``:
    python integrations/monailabel/run_server.py start_server --app integrations/monailabel --studies STUDIES \
        --host 127.0.0.1 --port 8000 [--conf bundles PATH[,PATH]] [--conf num_inference_steps 50]
"""

from __future__ import annotations

import importlib.util
import sys
import types

import monai.data  # noqa: F401  (MONAI first: its optional imports must not meet the stand-ins)

OPTIONAL_AT_IMPORT = ("itk", "SimpleITK", "pydicom_seg")


class _NotInstalled(types.ModuleType):
    """A stand-in for a module that is not installed: any use names it."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise ModuleNotFoundError(f"{self.__name__} is not installed (this MONAI Label app does not need it).")


def main() -> None:
    stand_ins = {name: _NotInstalled(name) for name in OPTIONAL_AT_IMPORT if importlib.util.find_spec(name) is None}
    sys.modules.update(stand_ins)
    try:
        import monailabel.app  # noqa: F401  (loaded once; the server reuses the loaded module)
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    from monailabel.main import Main

    sys.argv[0] = "monailabel"
    Main().run()


if __name__ == "__main__":
    main()

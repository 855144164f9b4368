"""Start the MONAI Label server for this app: MONAI Label's command line, serving ``synthesis_server:app``.

``synthesis_server`` is MONAI Label's web application with this app's ``/infer/{model}`` (sampling off the event
loop, a bounded queue, every bad request a 422 with its reason, no upload left behind), and it loads without itk,
SimpleITK or pydicom-seg installed (see its docstring). Every uvicorn worker imports it, so ``--workers N`` serves
with N processes, each holding its own copy of the models.

Usage, with the arguments of ``monailabel``:
    python integrations/monailabel/run_server.py start_server --app integrations/monailabel --studies STUDIES \
        --host 127.0.0.1 --port 8000 [--conf bundles PATH[,PATH]] [--conf num_inference_steps 50] \
        [--conf max_queued 8] [--workers N]
"""

from __future__ import annotations

import sys
from pathlib import Path

SERVER_APP = "synthesis_server:app"


def main() -> None:
    if any(argument == "--uvicorn_app" or argument.startswith("--uvicorn_app=") for argument in sys.argv[1:]):
        sys.exit(f"run_server.py serves {SERVER_APP} (this app's /infer); leave out --uvicorn_app.")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers inherit it, and import synthesis_server
    import synthesis_server  # noqa: F401  (MONAI Label's application loaded first, with its stand-ins)
    from monailabel.main import Main

    sys.argv = ["monailabel", *sys.argv[1:], *(["--uvicorn_app", SERVER_APP] if "start_server" in sys.argv else [])]
    Main().run()


if __name__ == "__main__":
    main()

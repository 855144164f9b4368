"""``python synthesis_app ...`` (how a MONAI Application Package starts the application)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import main  # noqa: E402

if __name__ == "__main__":
    main()

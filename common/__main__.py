"""``python -m common <command>``: see ``common.cli`` (demo, pipeline) and ``common.packaging`` (unpack)."""

import fire

from common.cli import demo, pipeline
from common.packaging import unpack_bundle

if __name__ == "__main__":
    fire.Fire({"demo": demo, "pipeline": pipeline, "unpack": unpack_bundle})

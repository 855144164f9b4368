"""``python -m common <command>``: see ``common.cli`` (demo, pipeline) and ``common.packaging`` (package, unpack)."""

import fire

from common.cli import demo, pipeline
from common.packaging import package_bundle, unpack_bundle

if __name__ == "__main__":
    fire.Fire({"demo": demo, "pipeline": pipeline, "package": package_bundle, "unpack": unpack_bundle})

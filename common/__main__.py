"""``python -m common <command>``: see ``common.cli``."""

import fire

from common.cli import demo, pipeline

if __name__ == "__main__":
    fire.Fire({"demo": demo, "pipeline": pipeline})

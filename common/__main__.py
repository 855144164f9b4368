"""``python -m common <command>``: see ``common.cli``."""

from common.cli import main

if __name__ == "__main__":
    main()

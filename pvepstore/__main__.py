"""``python -m pvepstore`` and the ``pvepstore`` console script."""

import sys

from .cli import main


def run() -> None:
    sys.exit(int(main()))


if __name__ == "__main__":
    run()

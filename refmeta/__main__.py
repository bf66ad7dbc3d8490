"""``python -m refmeta``: the same as the ``refmeta`` console script."""

import sys

from refmeta.cli import main

if __name__ == "__main__":
    sys.exit(main())

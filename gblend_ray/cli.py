"""``python -m gblend_ray.cli``: the ``gblend`` command line (``interfaces/cli.py``)."""

import sys

from .interfaces.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m mmdguidance ...``: the same command line as ``mmdguidance`` (see :mod:`mmdguidance.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

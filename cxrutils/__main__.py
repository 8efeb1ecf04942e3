"""``python -m cxrutils <verb>`` (and ``torchrun -m cxrutils train ...``): the same command line as ``cxrutils <verb>``."""

import sys

from cxrutils.cli import main

if __name__ == "__main__":
    sys.exit(main())

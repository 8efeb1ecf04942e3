"""``python -m cxrutils.train`` (and ``torchrun -m cxrutils.train``): train DenseNet121, see ``cxrutils.engine.train``."""

import sys

from cxrutils.engine.train import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m cxrutils.rehearsal``: the full-size rehearsal, see ``cxrutils.report.rehearsal``."""

import sys

from cxrutils.report.rehearsal import main

if __name__ == "__main__":
    sys.exit(main())

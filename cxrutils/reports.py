"""``python -m cxrutils.reports``: run the notebooks and publish HTML reports, see ``cxrutils.report.runner``."""

import sys

from cxrutils.report.runner import main

if __name__ == "__main__":
    sys.exit(main())

"""torchrun entry point for tests/test_train.py: records which rank writes run-folder files.

Every run-folder write goes through ``cxrutils.files.atomic_write``; this wraps it
to append ``<rank> <path>`` to $CXRUTILS_WRITE_LOG, then runs the real command line.
"""

from __future__ import annotations

import os
import sys

from cxrutils import files
from cxrutils.engine.train import main

LOG = os.environ["CXRUTILS_WRITE_LOG"]
RANK = os.environ.get("RANK", "?")
_real_atomic_write = files.atomic_write


def _record(line: str) -> None:
    with open(LOG, "a", encoding="utf-8") as handle:  # O_APPEND: lines from two processes do not interleave
        handle.write(f"{RANK} {line}\n")


def _recording_atomic_write(path, write, durable=False):
    _record(str(path))
    return _real_atomic_write(path, write, durable)


if __name__ == "__main__":
    files.atomic_write = _recording_atomic_write
    _record("start")
    sys.exit(main(sys.argv[1:]))

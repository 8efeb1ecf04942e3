"""torchrun entry point for tests/engine/test_train.py: records which rank writes which file, and can slow the cache build.

Every file write goes through ``cxrutils.files.atomic_write``; this wraps it to append
``<rank> <path>`` to $CXRUTILS_WRITE_LOG. With $CXRUTILS_SLOW_CACHE_SECONDS, building the
image cache (not reusing it) first sleeps that long, as decoding 112k films would. Then it
runs the real command line.
"""

from __future__ import annotations

import os
import sys
import time

from cxrutils import files
from cxrutils.cli import main
from cxrutils.data import cache

LOG = os.environ["CXRUTILS_WRITE_LOG"]
RANK = os.environ.get("RANK", "?")
SLOW_SECONDS = float(os.environ.get("CXRUTILS_SLOW_CACHE_SECONDS", "0"))
_real_atomic_write = files.atomic_write
_real_build = cache._build_cache


def _record(line: str) -> None:
    with open(LOG, "a", encoding="utf-8") as handle:  # O_APPEND: lines from two processes do not interleave
        handle.write(f"{RANK} {line}\n")


def _recording_atomic_write(path, write, durable=False):
    _record(str(path))
    return _real_atomic_write(path, write, durable)


def _slow_build(paths, folder, *args, **kwargs):
    manifest = cache._read_manifest(folder)
    if manifest is None or manifest.get("state") != "complete":
        _record(f"building the cache for {SLOW_SECONDS:g} s")
        time.sleep(SLOW_SECONDS)
    return _real_build(paths, folder, *args, **kwargs)


if __name__ == "__main__":
    files.atomic_write = _recording_atomic_write
    if SLOW_SECONDS:
        cache._build_cache = _slow_build
    _record("start")
    sys.exit(main(["train", *sys.argv[1:]]))

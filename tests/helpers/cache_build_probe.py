"""Entry point for tests/data/test_cache.py: build an image cache with 2 decoder processes, slowly, to be killed.

    python cache_build_probe.py PATHS_JSON FOLDER SIZE

Each decode sleeps 10 ms (PNGs of 24 px decode in microseconds, a 1024 px film in tens
of milliseconds), and finished rows are committed every 50 ms instead of every 5 s, so a
kill at any moment of a two-second build finds committed and uncommitted rows both.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from cxrutils.data import cache, images
from cxrutils.data.images import read_image


def _slow_read(path, max_pixels=None):
    time.sleep(0.01)
    return read_image(path, max_pixels)


# At import, not under __main__: the spawned decoder processes import this module too, and must decode slowly.
images.read_image = _slow_read  # what cxrutils.data.preparation.prepare_film decodes with

if __name__ == "__main__":
    cache._CHECKPOINT_SECONDS = 0.05
    paths = pd.Series(json.loads(Path(sys.argv[1]).read_text()))
    cache.build_cache(paths, sys.argv[2], size=int(sys.argv[3]), workers=2)

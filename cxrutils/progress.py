"""Progress bars that read well both in a terminal and in an executed notebook."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
# Each refresh of a bar inside a notebook becomes its own saved output line in the
# HTML report, so away from a terminal the bar refreshes rarely.
_NOTEBOOK_REFRESH_SECONDS = 15.0


def progress_bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """Plain ``tqdm`` (``tqdm.auto`` stalls in headless papermill runs)."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", _NOTEBOOK_REFRESH_SECONDS)
    return tqdm(iterable, **kwargs)

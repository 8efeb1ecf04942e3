"""The summary a notebook leaves for its report: the one file the notebooks (display) and the publisher share.

A notebook calls ``write_summary(output_dir, headline=..., ...)`` at its end; the reports
runner (``cxrutils.publish.runner``) reads it back to fill the index. Neither side imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrutils import files
from cxrutils.paths import resolve

SUMMARY_NAME = "report_summary.json"


def write_summary(output_dir: str | os.PathLike[str], *, status: str = "ok", **facts: Any) -> Path:
    """Called by a notebook at its end: what the index shows for it.

    ``status`` is ``ok``, or ``skipped`` with a ``status_reason`` (e.g. no weights).
    """
    if status not in ("ok", "skipped"):
        raise ValueError(f"a notebook reports 'ok' or 'skipped', got {status!r}")
    folder = resolve(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY_NAME
    files.write_json(path, {"status": status, **facts})
    return path


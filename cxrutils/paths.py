"""Project paths, owned in one place so notebooks never build them by hand."""

from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJ_ROOT / "configs"
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
REPORTS_DIR = PROJ_ROOT / "reports"
DATA_DIR = PROJ_ROOT / "data"
RUNS_DIR = PROJ_ROOT / "runs"


def resolve(path: str | os.PathLike[str]) -> Path:
    """Resolve a user-given path; relative paths are taken from the project root.

    Notebooks run with their own folder as working directory in JupyterLab and
    with the project root under papermill, so both must mean the same folder.
    """
    expanded = Path(os.path.expandvars(os.fspath(path))).expanduser()
    return expanded if expanded.is_absolute() else (PROJ_ROOT / expanded).resolve()

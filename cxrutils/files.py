"""Writing files so that a reader never sees half of one, JSON that is always strict JSON, CSV a spreadsheet can open.

Every file the pipeline writes for later steps (run folders, caches, reports) goes
through ``atomic_write``: a temporary file in the same folder, then ``os.replace``.
``plain`` turns numpy, pandas and path values into JSON values (NaN and NA become
null, so the files load in any JSON reader; text as ``cxrutils.text.printable``, so a
file name that is not UTF-8 cannot stop the write); ``write_json`` does both.
``write_csv`` writes a table for people and spreadsheets: atomically, in UTF-8, every
text cell through ``cxrutils.text.spreadsheet_safe`` (no cell runs as a formula);
``read_csv_text`` reads such a file back as it was given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.text import from_spreadsheet, printable, spreadsheet_safe


def atomic_same_file(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Make ``path`` hold what ``source`` holds, at once: a hard link where the file system has them, else a copy.

    The name is switched by a rename, like ``atomic_write``: a reader sees the old file or
    the new one. Every later ``atomic_write`` of either name makes a new file, so the two
    part again without one changing the other.
    """
    path = Path(path)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}"
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here (some network and FAT file systems), or another device: copy it
        return atomic_write(path, lambda target: shutil.copyfile(source, target))
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], durable: bool = False) -> Path:
    """Call ``write(temporary_path)``, then move the file to ``path``; never leave half a file behind.

    ``durable`` also fsyncs the file before the rename, for files whose loss after a
    power cut would corrupt what they describe (the image cache's manifest).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created like any file (0666 less the umask), not mkstemp's 0600: reports and records are shared and served.
    temporary = str(path.parent / f".{path.name}.{secrets.token_hex(6)}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temporary)
        if durable:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks (checkpoints and exports are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = False) -> Path:
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), durable)


def plain(value: Any) -> Any:
    """A JSON value: NaN, infinities, None and pandas' NA become null; numpy scalars and arrays, Python ones."""
    if isinstance(value, Mapping):
        return {printable(key): plain(item) for key, item in value.items()}
    if isinstance(value, pd.DataFrame):
        return [plain(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {printable(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return [plain(item) for item in value.tolist()]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, PurePath):
        return printable(str(value))
    if isinstance(value, str):
        return printable(value)
    return value


def write_json(path: str | os.PathLike[str], payload: Any, durable: bool = False) -> Path:
    """``payload`` as strict, indented JSON (``plain`` first), written atomically."""
    return atomic_write_text(path, json.dumps(plain(payload), indent=2, allow_nan=False, default=str) + "\n", durable)


def write_csv(path: str | os.PathLike[str], table: pd.DataFrame, durable: bool = False, **to_csv: Any) -> Path:
    """``table`` as a UTF-8 CSV, written atomically, with no cell a spreadsheet would run (module docstring).

    ``to_csv`` goes to ``DataFrame.to_csv`` (``index=False`` unless given).
    """
    safe = spreadsheet_safe(table)
    to_csv.setdefault("index", False)
    return atomic_write(path, lambda temporary: safe.to_csv(temporary, encoding="utf-8", **to_csv), durable)


def read_csv_text(path: str | os.PathLike[str], **read_csv: Any) -> pd.DataFrame:
    """A CSV written by ``write_csv``, every column as text and each cell as it was given (``read_csv`` to pandas)."""
    read_csv.setdefault("dtype", str)
    read_csv.setdefault("keep_default_na", False)
    return from_spreadsheet(pd.read_csv(path, **read_csv))

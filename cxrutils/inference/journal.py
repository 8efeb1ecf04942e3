"""What an inference run has finished, on disk as it goes: a crash at film N keeps films 1..N-1, a re-run continues.

``infer_films(journal=InferenceJournal(out_dir))`` appends one JSON line per film as
its batch finishes (its 14 probabilities at full precision and its calls, or why it
could not be decoded) to ``inference.journal.jsonl`` in the output folder. A later
run into the same folder with the same model, thresholds and sizes takes every film
whose file has not changed (same path, byte size and modification time) from the
journal instead of scoring it again; with another model the journal starts anew.
Once the results are written (``inference.csv``, ``inference.json``), the journal
is removed: it only ever holds a run that did not finish.

Paths are kept exactly (Python's JSON escapes the undecodable bytes of a file name,
``\\udcff``, and reads them back as they were), so a film is matched by its real path.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cxrutils.files import plain

JOURNAL_NAME = "inference.journal.jsonl"


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        facts = os.stat(path)
    except OSError:
        return None
    return facts.st_size, facts.st_mtime_ns


class InferenceJournal:
    """The journal of one output folder (module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self._handle: TextIO | None = None

    def start(self, identity: dict[str, Any]) -> int:
        """Open for a run with this model ``identity``; the number of films taken over from an unfinished run."""
        identity = json.loads(json.dumps(plain(identity), default=str))  # as it reads back: NaN as null, tuples as lists
        self.entries = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
            if lines and _loads(lines[0]) == {"identity": identity}:
                for line in lines[1:]:
                    entry = _loads(line)  # the last line of a killed run may be cut short: skipped
                    if entry and "path" in entry:
                        self.entries[entry["path"]] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w", encoding="utf-8")
        self._write({"identity": identity})
        for entry in self.entries.values():
            self._write(entry)
        return len(self.entries)

    def prior(self, path: Path) -> dict[str, Any] | None:
        """The journal's entry for this file, if the file is unchanged since it was written."""
        entry = self.entries.get(str(path))
        key = _file_key(path)
        if entry is None or key is None or [entry.get("size"), entry.get("mtime_ns")] != list(key):
            return None
        return entry

    def add(self, path: Path, probabilities: np.ndarray | None = None, calls: np.ndarray | None = None,
            refusal: str | None = None) -> None:
        """Record a scored film (its probabilities and calls) or one that could not be decoded (``refusal``)."""
        key = _file_key(path) or (None, None)
        entry: dict[str, Any] = {"path": str(path), "size": key[0], "mtime_ns": key[1]}
        if refusal is not None:
            entry["refusal"] = refusal
        else:
            entry["probabilities"] = [float(value) for value in np.asarray(probabilities)]
            entry["calls"] = [None if math.isnan(value) else float(value) for value in np.asarray(calls, dtype=float)]
        self.entries[entry["path"]] = entry
        self._write(entry)

    def _write(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None, "start() the journal first"
        # ensure_ascii: undecodable file-name bytes are written as \udcNN escapes and read back exactly.
        self._handle.write(json.dumps(entry, ensure_ascii=True, allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """The results are written: the journal is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def restored_arrays(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, calls) of a journal entry, as ``ScoredFilm`` holds them."""
    calls = np.array([np.nan if value is None else value for value in entry["calls"]], dtype=float)
    return np.asarray(entry["probabilities"], dtype=float), calls

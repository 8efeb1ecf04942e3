"""Wall time and peak memory of the pipeline's stages, for the rehearsal and for anyone who asks.

Long steps of the pipeline (indexing, the integrity check, the cache build, each
epoch, prediction, bootstraps, Grad-CAM, ...) run inside ``stage("name")``. That
costs nothing unless a stage log is set (``CXRUTILS_STAGE_LOG=/path/stages.jsonl``,
which the rehearsal runner sets for the notebooks it runs): then each stage appends
one JSON line with its wall time and peak memory.

Peak memory is the peak resident set size of this process and its children (the
cache build's decoder processes, DataLoader workers) while the stage ran: this
process's own peak from the kernel's high-water mark (``VmHWM``, reset at each
stage boundary through ``/proc/self/clear_refs``, so even a short spike counts),
plus the children's summed RSS sampled every 0.2 s (an upper bound when the two
peak at different moments; a child's spike shorter than 0.2 s can be missed). The
sampling thread does little, so it hardly slows what it measures.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

STAGE_LOG_VARIABLE = "CXRUTILS_STAGE_LOG"
# The notebook (or other context) the stages belong to, set by whoever runs them.
STAGE_CONTEXT_VARIABLE = "CXRUTILS_STAGE_CONTEXT"
_SAMPLE_SECONDS = 0.2
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _own_high_water_mark() -> int | None:
    """This process's peak RSS in bytes since the last reset, or None where /proc does not say."""
    try:
        match = _HWM.search(Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_high_water_mark() -> bool:
    """Set the peak RSS back to the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants right now (processes that vanish count 0)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakSampler:
    """Samples the RSS of a process tree in a background thread; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int | None = None, interval: float = _SAMPLE_SECONDS, descendants_only: bool = False):
        """``descendants_only``: leave the process itself out (its own peak is known otherwise)."""
        self.process = psutil.Process(pid)
        self.interval = interval
        self.descendants_only = descendants_only
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> int:
        if not self.descendants_only:
            return tree_rss(self.process)
        return sum(tree_rss(child) for child in self.process.children())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._sample())
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


@dataclass
class _OpenStage:
    name: str
    started: float
    own_peak: int = 0
    sampler: PeakSampler | None = None
    details: dict[str, Any] = field(default_factory=dict)


class _StageLog:
    """The stages open in this process, innermost last; each boundary folds the high-water mark into all of them."""

    def __init__(self) -> None:
        self.open: list[_OpenStage] = []
        self.lock = threading.Lock()

    def fold_high_water_mark(self) -> None:
        mark = _own_high_water_mark()
        if mark is None:
            return
        for entry in self.open:
            entry.own_peak = max(entry.own_peak, mark)
        _reset_high_water_mark()


_log = _StageLog()


def stage_log_path() -> Path | None:
    """Where stages are recorded (``CXRUTILS_STAGE_LOG``), or None: then ``stage`` records nothing."""
    value = os.environ.get(STAGE_LOG_VARIABLE)
    return Path(value) if value else None


@contextmanager
def stage(name: str, **details: Any) -> Iterator[dict[str, Any]]:
    """Time a stage and record its peak memory when a stage log is set; otherwise do nothing.

    ``details`` (and whatever the block adds to the yielded dict, e.g. ``images=...``)
    are recorded with it.
    """
    path = stage_log_path()
    if path is None:
        yield details
        return
    with _log.lock:
        _log.fold_high_water_mark()
        entry = _OpenStage(name=name, started=time.perf_counter(), own_peak=_own_high_water_mark() or 0,
                           details=details)
        _log.open.append(entry)
    # This process's own peak comes from the high-water mark where /proc gives one; sample only the children then.
    entry.sampler = PeakSampler(descendants_only=_own_high_water_mark() is not None)
    entry.sampler.__enter__()
    try:
        yield entry.details
    finally:
        entry.sampler.__exit__(None, None, None)
        seconds = time.perf_counter() - entry.started
        with _log.lock:
            _log.fold_high_water_mark()
            _log.open.remove(entry)
        # Own peak plus the children's: an upper bound when they peak at different moments.
        peak = entry.own_peak + entry.sampler.peak if entry.sampler.descendants_only else entry.sampler.peak
        record = {
            "context": os.environ.get(STAGE_CONTEXT_VARIABLE, ""),
            "stage": name,
            "seconds": round(seconds, 3),
            "peak_rss_bytes": int(peak),
            "depth": len(_log.open),
            **{key: value for key, value in entry.details.items() if isinstance(value, (str, int, float, bool))},
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


_marked: set[str] = set()


def mark_once(name: str) -> None:
    """Record, once per process, that ``name`` happened and how long after the process started.

    E.g. "first training batch": in a notebook's kernel, the seconds since the kernel
    started are the seconds a user waits from opening the notebook to training.
    """
    path = stage_log_path()
    if path is None or name in _marked:
        return
    _marked.add(name)
    record = {
        "context": os.environ.get(STAGE_CONTEXT_VARIABLE, ""),
        "event": name,
        "after_start_seconds": round(time.time() - psutil.Process().create_time(), 3),
    }
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


@contextmanager
def stage_context(name: str) -> Iterator[None]:
    """Stages recorded inside the block (and by processes started in it, which inherit it) belong to ``name``."""
    previous = os.environ.get(STAGE_CONTEXT_VARIABLE)
    os.environ[STAGE_CONTEXT_VARIABLE] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STAGE_CONTEXT_VARIABLE, None)
        else:
            os.environ[STAGE_CONTEXT_VARIABLE] = previous


def read_stage_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a stage log, in the order the stages ended (stages have ``stage``, marks ``event``)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

"""Wall time, CPU time and peak memory of the pipeline's stages, for the rehearsal and for anyone who asks.

Long steps of the pipeline (indexing, the integrity check, the cache build, each
epoch, prediction, bootstraps, Grad-CAM, ...) run inside ``stage("name")``. That
costs nothing unless a stage log is set (``CXRUTILS_STAGE_LOG=/path/stages.jsonl``,
which the rehearsal runner sets for the notebooks it runs): then each stage appends
one JSON line with its wall time, CPU time and peak memory.

CPU time (``cpu_seconds``) is the user + system time of this process (all its threads)
and its descendants while the stage ran: the work the stage did. Unlike wall time it
does not count the time the stage waited for a core or a disk, which is why the
rehearsal judges growth on it. Descendants count however they end: a child reaped
during the stage through this process's children's totals (``os.times``, which include
the grandchildren each child reaped), one still alive (a pool or DataLoader worker)
through its own figures, sampled at both ends of the stage, so a worker started before
the stage counts only for what it did during it. A grandchild orphaned before it ends
is lost; live processes' figures tick in 1/100 s.

CPU time is not proof against a busy machine, though: a process whose threads meet
at a barrier (PyTorch's OpenMP pool) spins while the other program holds a core, and
a 2-thread convolution loop measured 2.1 to 2.5 times its idle CPU time beside one
busy process on 2 cores. So each stage also records ``others_cpu_seconds``, the CPU
time the rest of the machine used on the cores this process may run on meanwhile
(every process's, the kernel's own and the time a hypervisor stole; ``/proc/stat``,
which ticks), and ``cores``: what share of the machine was not the stage's to use.

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


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) this process and all its descendants have used so far (module docstring).

    A stage's CPU time is the difference of two readings; each process counts once in
    a reading: alive, through its own figures and those of the children it reaped, or
    reaped, through this process's children's totals.
    """
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # ended between the listing and the reading: counted below once reaped
            continue
        live += times.user + times.system + times.children_user + times.children_system
    reaped = os.times()
    return time.process_time() + reaped.children_user + reaped.children_system + live


def machine_cpu_seconds() -> tuple[float, int]:
    """CPU seconds every process (and the kernel) has used so far on the cores this process may run on, and how many.

    Time stolen by a hypervisor counts as used: the cores were not ours then either.
    """
    per_core = psutil.cpu_times(percpu=True)
    try:
        allowed = [core for core in sorted(os.sched_getaffinity(0)) if core < len(per_core)]
    except AttributeError:  # not on Linux
        allowed = list(range(len(per_core)))
    busy = sum(getattr(per_core[core], name, 0.0) for core in allowed
               for name in ("user", "nice", "system", "irq", "softirq", "steal"))  # guest time is within user
    return busy, len(allowed)


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
    cpu_started: float = 0.0
    machine_started: float = 0.0
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
    """Time a stage (wall and CPU) and record its peak memory when a stage log is set; otherwise do nothing.

    ``details`` (and whatever the block adds to the yielded dict, e.g. ``images=...``)
    are recorded with it.
    """
    path = stage_log_path()
    if path is None:
        yield details
        return
    with _log.lock:
        _log.fold_high_water_mark()
        entry = _OpenStage(name=name, started=time.perf_counter(), cpu_started=tree_cpu_seconds(),
                           machine_started=machine_cpu_seconds()[0], own_peak=_own_high_water_mark() or 0,
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
        cpu_seconds = max(0.0, tree_cpu_seconds() - entry.cpu_started)
        machine_seconds, cores = machine_cpu_seconds()
        others_cpu_seconds = max(0.0, machine_seconds - entry.machine_started - cpu_seconds)
        with _log.lock:
            _log.fold_high_water_mark()
            _log.open.remove(entry)
        # Own peak plus the children's: an upper bound when they peak at different moments.
        peak = entry.own_peak + entry.sampler.peak if entry.sampler.descendants_only else entry.sampler.peak
        record = {
            "context": os.environ.get(STAGE_CONTEXT_VARIABLE, ""),
            "stage": name,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "others_cpu_seconds": round(others_cpu_seconds, 3),
            "cores": cores,
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

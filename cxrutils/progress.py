"""Progress of long steps, where someone watches it and nowhere else.

A long step (integrity check, cache build, training epoch, validation, prediction,
Grad-CAM) shows a plain ``tqdm`` bar. Where that bar goes depends on who runs it:

- **a terminal** (``cxrutils train``): a live bar on stderr;
- **JupyterLab**: a live bar in the cell;
- **the reports runner** (``cxrutils reports``), which sets
  ``CXRUTILS_PROGRESS=terminal`` for the kernels it starts: the live bar goes to the
  kernel's own stderr, which is the terminal running the reports (the kernel
  inherits it; the runner turns ipykernel's copying of that file descriptor into the
  cell off), and the cell, and so the HTML report, keeps one line when the step ends
  ("cached 1,899 films at 64 px in 12 s").

``announce`` does the same for a line of text: the training's per-epoch line reaches
the cell and the terminal, with its time left only where someone watches it live.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
PROGRESS_VARIABLE = "CXRUTILS_PROGRESS"
TERMINAL = "terminal"  # the value the reports runner sets: live progress to the kernel's own stderr
# A bar written to a file (a CI log, `make demo > log`) leaves a line per refresh: there it refreshes rarely.
_FILE_REFRESH_SECONDS = 15.0


def to_terminal() -> bool:
    """Whether this process runs under the reports runner, whose terminal shows the live progress."""
    return os.environ.get(PROGRESS_VARIABLE) == TERMINAL


@contextmanager
def progress_to_terminal() -> Iterator[None]:
    """Within the block, kernels started from this process send their live progress to its terminal."""
    before = os.environ.get(PROGRESS_VARIABLE)
    os.environ[PROGRESS_VARIABLE] = TERMINAL
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_VARIABLE, None)
        else:
            os.environ[PROGRESS_VARIABLE] = before


def terminal_stream() -> TextIO:
    """The process's own stderr (in a kernel: the terminal that started it, not the cell)."""
    return sys.__stderr__ if sys.__stderr__ is not None else sys.stderr


def _in_jupyter_cell(stream: Any) -> bool:
    """Whether ``stream`` is a Jupyter kernel's cell output (ipykernel's OutStream), which draws a bar live."""
    return type(stream).__module__.startswith("ipykernel.")


def duration_text(seconds: float) -> str:
    """``12 s``, ``3 min 05 s``, ``2 h 07 min``: a duration as people say it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _StepBar(tqdm):
    """A tqdm bar that, under the reports runner, leaves one summary line in the cell when it closes."""

    def __init__(self, *args: Any, summary: str | None = None, **kwargs: Any) -> None:
        self._summary = summary
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        summarise = self._summary is not None and not getattr(self, "disable", True)
        elapsed = self._time() - self.start_t if summarise else 0.0
        super().close()
        if summarise:
            text = self._summary.format(n=self.n, total=self.total if self.total is not None else self.n)
            print(f"{text} in {duration_text(elapsed)}", file=sys.stdout, flush=True)


def progress_bar(iterable: Iterable[T] | None = None, *, done: str | bool = True, **kwargs: Any) -> tqdm:
    """A plain ``tqdm`` bar (``tqdm.auto`` stalls in headless papermill runs) that goes where someone watches.

    ``done`` is the line the HTML report keeps under the reports runner when the step ends:
    a phrase with ``{n}`` (and ``{total}``), e.g. ``"cached {n:,} films"``, to which " in 12 s"
    is added; ``True`` for "<desc>: <n> <unit>"; ``False`` for none (the caller writes its own
    line, as training does once per epoch). Elsewhere the bar itself stays, as tqdm leaves it.
    """
    summary: str | None = None
    if to_terminal():
        stream = terminal_stream()
        kwargs.setdefault("file", stream)
        if done is True:
            summary = f"{kwargs.get('desc') or 'done'}: {{n:,}} {kwargs.get('unit', 'it')}"
        elif done:
            summary = str(done)
    else:
        stream = kwargs.get("file") or sys.stderr
    if not (_in_jupyter_cell(stream) or _isatty(stream)):
        kwargs.setdefault("mininterval", _FILE_REFRESH_SECONDS)
    return _StepBar(iterable, summary=summary, **kwargs)


def announce(line: str, live: str = "") -> None:
    """Print ``line`` for the record (the cell, or the terminal), and under the reports runner also to its terminal.

    ``live`` (e.g. "; 3 min 10 s left") is added only where someone watches as it happens:
    the terminal, or a notebook run by hand, never the published report.
    """
    if to_terminal():
        print(line, flush=True)
        tqdm.write(line + live, file=terminal_stream())
        terminal_stream().flush()
    else:
        print(line + live, flush=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False

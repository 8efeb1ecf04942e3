"""Another process holding a folder's lock, for the lock tests (tests/base/test_locks.py) and training's (tests/engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[2]  # the repository: the holder imports cxrutils from there

# mode "flock": the normal lock; "no-flock": as on a system without fcntl; "fork": the holder forks a child that
# outlives it (a DataLoader worker); "until-told": releases (normally) once a line arrives on its stdin.
HOLDER_SCRIPT = """
import os, sys, time
import cxrutils.locks as locks
folder, mode = sys.argv[1], sys.argv[2]
if mode == "no-flock":
    locks.fcntl = None
with locks.folder_lock(folder, purpose="a test holder"):
    child = None
    if mode == "fork":
        ready, running = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(running, b"1")  # past the fork's hooks
            time.sleep(120)
            os._exit(0)
        os.read(ready, 1)
    print("held", child or "", flush=True)
    if mode == "until-told":
        sys.stdin.readline()
    else:
        time.sleep(120)
"""


@dataclass
class Holder:
    process: subprocess.Popen
    child: int | None  # the pid of the child it forked ("fork" mode)

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """("until-told") Let it leave its block normally, and wait until it has."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.wait(timeout=60) == 0

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as with the out-of-memory killer."""
        self.process.kill()
        self.process.wait()


@contextmanager
def held_elsewhere(folder: Path, mode: str = "flock") -> Iterator[Holder]:
    """Another process that holds ``folder``'s lock for the block (it is SIGKILLed at the end, if still alive)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(folder), mode], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    holder = None
    try:
        assert process.stdout is not None
        words = process.stdout.readline().split()
        assert words[:1] == ["held"], f"the holder did not take the lock: {words}"
        holder = Holder(process, int(words[1]) if len(words) > 1 else None)
        yield holder
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()
        if holder is not None and holder.child is not None and psutil.pid_exists(holder.child):
            os.kill(holder.child, signal.SIGKILL)

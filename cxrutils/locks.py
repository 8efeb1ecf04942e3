"""One writer per folder: a run folder while it trains, an inference output folder while it is written.

Each file the pipeline writes is atomic, but a run is many files: two trainings with
one name would leave the thresholds of one model beside the checkpoint of the other.
``with folder_lock(folder, purpose="training run demo"):`` holds an exclusive lock on
``folder`` for the block. A second writer does not wait: it stops at once with
``FolderLocked``, whose message names the holder (host, process id, when it took the
lock, what it is doing, its command line) and what to do.

How it holds:

- The lock is ``fcntl.flock`` on ``folder/.lock`` (``LOCK_NAME``). The kernel releases
  it when the holder ends however it ends (SIGKILL, the out-of-memory killer), so a lock
  left by a killed process never blocks: the next writer takes it over and says on
  stderr whose it was. The holder's identity is written into the file as JSON, for the
  message; a holder that ends normally (or by an exception) deletes the file, and the
  folder too when the lock created it and nothing else was written there. So the file
  exists only while a writer works or after one was killed, and readers that list a
  folder must skip ``LOCK_NAME`` (``is_lock_file``).
- A process forked by the holder (a DataLoader worker) does not keep the lock: its copy
  of the lock's descriptor is closed in the child, so a killed holder's lock is free at
  once even while its workers wind down.
- The lock is not re-entrant: taking a folder this process holds raises ``FolderLocked``
  at once (rather than waiting on itself).
- On NFS, Linux maps ``flock`` onto the server's locks (NFSv4, or NFSv3 with lockd),
  which hold across machines. A mount with ``nolock`` locks on each machine only, which
  cannot be detected from here. Where the file system refuses to lock (ENOLCK,
  EOPNOTSUPP: some FUSE and old NFS mounts), and on systems without ``fcntl``
  (Windows), the file's existence is the lock instead (created with ``O_EXCL``), and a
  holder's liveness is checked from its record: on this host by its process id and that
  process's start time (so a reused process id is not mistaken for it); a holder on
  another host cannot be checked, and the message says to delete the file once it
  has ended. A warning on stderr says when this fallback is used. It is best effort:
  two writers that find a dead holder's file at the same instant may both proceed.
- Deleting the folder (or the lock file) while a writer works defeats the lock: the
  next writer creates a new one.

Tested on Linux (tests/base/test_locks.py), the fallback there too by making ``flock``
fail; not run on macOS (which has ``flock``) or Windows.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL fallback (module docstring)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# Errors of a file system that cannot lock at all (not "someone else holds it").
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# A takeover (of a killed holder's file) races with other takers: each loses at most once per winner.
_ATTEMPTS = 10
# A process's start time as psutil reads it twice may differ by rounding.
_START_TIME_TOLERANCE_SECONDS = 1.0

# The lock descriptors this process holds, by folder: for re-entry and for forked children.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class FolderLocked(RuntimeError):
    """Another writer (or this process already) holds the folder's lock; ``holder`` is its record (may be empty)."""

    def __init__(self, folder: Path, holder: dict[str, Any], advice: str = "") -> None:
        self.folder = folder
        self.holder = holder
        advice = advice or (
            "Wait for it to finish (or stop it), or write elsewhere: another run name (--set name=...), another "
            "--out. A lock whose holder was killed is taken over by the next writer by itself; this one's is alive."
        )
        super().__init__(f"{folder} is being written by {describe_holder(holder)}. {advice}")


def describe_holder(holder: dict[str, Any]) -> str:
    """'process 123 on host-a since 2026-12-05T15:07:00+01:00 (training run demo: cxrutils train ...)'."""
    if not holder.get("pid"):
        return "another process (it has not written its name yet)"
    doing = "; ".join(str(holder[key]) for key in ("purpose", "command") if holder.get(key))
    return (f"process {holder['pid']} on {holder.get('host', '?')} since {holder.get('started', '?')}"
            + (f" ({doing})" if doing else ""))


def is_lock_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder's lock file: not a run's content, skip it when listing a folder."""
    return Path(path).name == LOCK_NAME


@contextmanager
def folder_lock(folder: str | os.PathLike[str], purpose: str) -> Iterator[dict[str, Any]]:
    """Hold ``folder``'s lock for the block; ``FolderLocked`` at once if another process (or this one) holds it.

    ``purpose`` says what the holder does ("training run demo", "inference into out/"),
    for the message another writer gets. The folder (and its parents) are created.
    Yields the holder record written into the lock file.
    """
    folder = Path(folder).absolute()
    key = Path(os.path.realpath(folder))
    with _held_guard:
        if key in _held:
            raise FolderLocked(folder, _read_record(folder / LOCK_NAME),
                               "This process holds that lock already (the lock is not re-entrant): take it once, "
                               "around everything that writes the folder.")
        _held[key] = -1  # reserved: another thread of this process is refused too
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, locked, holder = _acquire(folder, purpose)
    except BaseException:
        with _held_guard:
            del _held[key]
        _remove_if_empty(folder, created)
        raise
    with _held_guard:
        _held[key] = descriptor
    owner = os.getpid()
    try:
        yield holder
    finally:
        if os.getpid() == owner:  # a forked child that unwinds this block must not release its parent's lock
            with _held_guard:
                _held.pop(key, None)
            if locked:
                try:
                    # Deleted while still locked: a taker that opened the old file sees it is gone and opens anew.
                    (folder / LOCK_NAME).unlink(missing_ok=True)
                    _remove_if_empty(folder, created)
                finally:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
                    os.close(descriptor)
            else:  # closed first: Windows deletes no open file
                os.close(descriptor)
                (folder / LOCK_NAME).unlink(missing_ok=True)
                _remove_if_empty(folder, created)


def _acquire(folder: Path, purpose: str) -> tuple[int, bool, dict[str, Any]]:
    """The lock file's descriptor, whether ``flock`` holds it (else the file's existence does), the holder record."""
    path = folder / LOCK_NAME
    for _ in range(_ATTEMPTS):
        folder.mkdir(parents=True, exist_ok=True)  # a holder that just ended may have removed the folder
        try:
            descriptor, created = _open(path)
        except FileNotFoundError:  # deleted between our two tries to open it
            continue
        try:
            locked = _flock(descriptor, path, folder)
            if locked and not _still_at(descriptor, path):
                os.close(descriptor)  # we locked a file its holder deleted as it ended: lock the new one
                continue
            previous = _read_descriptor(descriptor)
            if not locked and not created:  # no flock here: the file's existence is the lock
                if _alive(previous) is not False:
                    raise FolderLocked(folder, previous, _unverifiable_advice(path, previous))
                stale = _still_at(descriptor, path)  # not a file another taker has put there since
                os.close(descriptor)
                if stale:
                    _say_taken_over(folder, previous, "it is no longer running")
                    path.unlink(missing_ok=True)
                continue
            if locked and previous:  # a holder that ended without cleaning up: killed
                _say_taken_over(folder, previous, "it ended without releasing it (killed?)")
            holder = _record(purpose)
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.write(descriptor, json.dumps(holder).encode())
            return descriptor, locked, holder
        except BaseException:
            os.close(descriptor)
            raise
    raise RuntimeError(f"could not take the lock {path}: other processes kept taking and releasing it "
                       f"({_ATTEMPTS} tries); try again")


def _open(path: Path) -> tuple[int, bool]:
    """A descriptor on the lock file (not inherited by started programs), and whether this call created it."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags), False


def _flock(descriptor: int, path: Path, folder: Path) -> bool:
    """True once locked; FolderLocked if another holds it; False where locking is impossible (module docstring)."""
    if fcntl is None:
        print(f"warning: {folder}: this system has no flock; a writer is detected by the file {LOCK_NAME} and its "
              "record instead", file=sys.stderr, flush=True)
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_descriptor(descriptor)
        raise FolderLocked(folder, holder, _held_advice(holder)) from None
    except OSError as error:
        if error.errno not in _CANNOT_LOCK:
            raise
        print(f"warning: {folder}: the file system cannot lock files ({error.strerror}); a writer is detected by "
              f"the file {LOCK_NAME} and its record instead", file=sys.stderr, flush=True)
        return False
    return True


def _still_at(descriptor: int, path: Path) -> bool:
    """Whether ``descriptor`` is still the file at ``path`` (the holder deletes it as it releases)."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(descriptor)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _record(purpose: str) -> dict[str, Any]:
    """Who holds the lock: what the message of a refused writer shows, and what the fallback checks."""
    return {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "process_started": psutil.Process().create_time(), "purpose": purpose,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:500],
    }


def _read_descriptor(descriptor: int) -> dict[str, Any]:
    os.lseek(descriptor, 0, os.SEEK_SET)
    return _parse(os.read(descriptor, 1 << 16))


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_bytes()[: 1 << 16])
    except OSError:
        return {}


def _parse(text: bytes) -> dict[str, Any]:
    """The holder record; empty when there is none yet (a holder between creating and writing it) or it is garbled."""
    try:
        record = json.loads(text.decode("utf-8", errors="replace") or "{}")
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _alive(holder: dict[str, Any]) -> bool | None:
    """Whether the recorded holder still runs: None when that cannot be known (another host, no record)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        started = psutil.Process(holder["pid"]).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    recorded = holder.get("process_started")
    # Another process with a reused id started after the holder did.
    return not isinstance(recorded, (int, float)) or abs(started - recorded) <= _START_TIME_TOLERANCE_SECONDS


def _held_advice(holder: dict[str, Any]) -> str:
    """What to do about a held flock: usually wait; if its recorded holder is gone, a process it started holds it."""
    if _alive(holder) is False:
        return (f"Process {holder['pid']} has ended, but a process it started still holds the lock (it ends by itself "
                "within seconds, or end it); then try again, or write elsewhere (another run name, another --out).")
    return ""


def _unverifiable_advice(path: Path, holder: dict[str, Any]) -> str:
    if _alive(holder):
        return ""
    return (f"This file system cannot lock files, so whether that writer still runs cannot be checked from "
            f"{socket.gethostname()}. Wait for it, or write elsewhere (another run name, another --out); if it "
            f"has ended (killed), delete {path} and start again.")


def _say_taken_over(folder: Path, previous: dict[str, Any], why: str) -> None:
    print(f"taking over the lock of {folder} from {describe_holder(previous)}: {why}", file=sys.stderr, flush=True)


def _remove_if_empty(folder: Path, created: bool) -> None:
    """A folder the lock created and nothing else wrote into goes with it: a refused start leaves no trace."""
    if created:
        try:
            folder.rmdir()
        except OSError:  # not empty (the block wrote there) or already gone
            pass


def _close_in_child() -> None:
    """After a fork: the child lets go of its copies of the lock descriptors (the parent keeps the locks).

    Pointed at /dev/null rather than closed, so that nothing the child closes later closes a reused number.
    """
    global _held_guard
    _held_guard = threading.Lock()  # another thread of the parent may have held it at the fork
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for descriptor in _held.values():
            if descriptor >= 0:
                os.dup2(null, descriptor)
    finally:
        os.close(null)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)

"""One writer per folder (issue 19): a second writer stops at once naming the first; a killed holder's lock is taken."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading

import psutil
import pytest
from lock_holders import HOLDER_SCRIPT, PROJECT, held_elsewhere

import cxrutils.locks as locks
from cxrutils.locks import LOCK_NAME, FolderLocked, folder_lock

ISO_LOCAL_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def test_a_second_writer_is_refused_at_once_with_the_holders_host_pid_and_start_time(tmp_path):
    folder = tmp_path / "run"
    with held_elsewhere(folder) as holder:
        # The holder keeps the lock for two minutes: had the second writer waited, it would not be refused.
        with pytest.raises(FolderLocked) as refused:
            with folder_lock(folder, purpose="second"):
                pass
        record = json.loads((folder / LOCK_NAME).read_text())
    message = str(refused.value)
    assert isinstance(refused.value, RuntimeError) and refused.value.folder == folder
    assert re.search(rf"{re.escape(str(folder))} is being written by process {holder.pid} on "
                     rf"{re.escape(socket.gethostname())} since {ISO_LOCAL_TIME} \(a test holder; ", message), message
    assert record["started"] in message and record["pid"] == holder.pid
    assert "another run name" in message and "--out" in message and "taken over" in message


def test_a_lock_left_by_a_sigkilled_holder_is_taken_over_and_said_so(tmp_path, capfd):
    folder = tmp_path / "run"
    with held_elsewhere(folder) as holder:
        holder.kill()
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # no cleanup ran
        with folder_lock(folder, purpose="after") as record:
            assert record["pid"] == os.getpid()
            assert json.loads((folder / LOCK_NAME).read_text())["purpose"] == "after"
    assert f"taking over the lock of {folder} from process {holder.pid}" in capfd.readouterr().err


def test_a_child_the_holder_forked_does_not_keep_the_lock_once_the_holder_is_killed(tmp_path):
    """A DataLoader worker forked by a training that is then killed must not hold the run folder for the next one."""
    folder = tmp_path / "run"
    with held_elsewhere(folder, mode="fork") as holder:
        with pytest.raises(FolderLocked):  # the holder alive: held
            with folder_lock(folder, purpose="too early"):
                pass
        holder.kill()
        assert psutil.pid_exists(holder.child)  # its child is still running
        with folder_lock(folder, purpose="next"):
            pass


def test_the_lock_is_released_on_exit_and_on_an_exception_and_leaves_no_file(tmp_path):
    folder = tmp_path / "out"
    with folder_lock(folder, purpose="first"):
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # created by the lock, nothing else written: removed with it
    with pytest.raises(ZeroDivisionError):
        with folder_lock(folder, purpose="failing"):
            (folder / "result.csv").write_text("x\n")
            1 / 0
    assert sorted(p.name for p in folder.iterdir()) == ["result.csv"]  # what the block wrote stays
    with held_elsewhere(folder) as holder:  # another process can take it now
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid


def test_taking_a_lock_this_process_holds_fails_at_once_rather_than_waiting_on_itself(tmp_path):
    folder = tmp_path / "run"
    alias = tmp_path / "alias"
    alias.symlink_to(folder, target_is_directory=True)
    with folder_lock(folder, purpose="outer"):
        with pytest.raises(FolderLocked, match="This process holds that lock already"):
            with folder_lock(alias, purpose="inner"):  # the same folder by another name
                pass
        refused = []

        def from_another_thread() -> None:
            try:
                with folder_lock(folder, purpose="thread"):
                    pass
            except FolderLocked as error:
                refused.append(error)

        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join()
        assert len(refused) == 1 and f"process {os.getpid()}" in str(refused[0])
    with folder_lock(folder, purpose="again"):  # the refusals did not release or break the outer lock's record
        pass


def test_a_taker_that_opened_the_lock_file_just_before_its_holder_deleted_it_locks_the_new_one(tmp_path,
                                                                                             monkeypatch):
    """A releasing holder deletes the file: whoever had opened it must not hold the lock on a file no longer there,
    or a third writer would create a new file and hold that one at the same time."""
    folder = tmp_path / "run"
    folder.mkdir()
    real_open = locks._open
    with held_elsewhere(folder, mode="until-told") as holder:
        def open_then_holder_releases(path):
            opened = real_open(path)
            if holder.process.poll() is None:
                holder.release()  # between our open and our flock: the file we opened is deleted
            return opened

        monkeypatch.setattr(locks, "_open", open_then_holder_releases)
        with folder_lock(folder, purpose="taker") as record:
            assert json.loads((folder / LOCK_NAME).read_text()) == record  # the file there is ours
            third = subprocess.run([sys.executable, "-c", HOLDER_SCRIPT, str(folder), "flock"], cwd=PROJECT,
                                   capture_output=True, text=True, timeout=60)
            assert third.returncode != 0 and f"FolderLocked: {folder} is being written by process {os.getpid()}" \
                in third.stderr, third.stderr[-2000:]  # and a third writer is refused
    assert holder.process.returncode == 0


_CONTEND = """
import os, sys
from cxrutils.locks import FolderLocked, folder_lock
folder, rounds = sys.argv[1], int(sys.argv[2])
held = 0
for _ in range(rounds):
    try:
        with folder_lock(folder, purpose="contender"):
            inside = os.open(os.path.join(folder, "inside"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # two holders: error
            os.close(inside)
            os.unlink(os.path.join(folder, "inside"))
            held += 1
    except FolderLocked:
        pass
print(held)
"""


def test_processes_that_take_and_release_one_lock_in_a_tight_loop_never_hold_it_together(tmp_path):
    """End to end, with the lock file deleted and created anew at every release: never two holders at once."""
    folder = tmp_path / "busy"
    folder.mkdir()
    contenders = [subprocess.Popen([sys.executable, "-c", _CONTEND, str(folder), "300"], cwd=PROJECT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [process.communicate(timeout=120) for process in contenders]
    assert all(process.returncode == 0 for process in contenders), [err[-2000:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0


@pytest.fixture
def no_flock(monkeypatch):
    """As on a file system that cannot lock: flock answers ENOLCK."""
    import errno

    class NoLocking:
        LOCK_EX, LOCK_NB, LOCK_UN = 2, 4, 8

        @staticmethod
        def flock(descriptor, operation):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks, "fcntl", NoLocking)


def test_without_flock_a_live_holder_on_this_host_is_refused_and_a_dead_one_taken_over(tmp_path, no_flock, capfd):
    folder = tmp_path / "run"
    with held_elsewhere(folder, mode="no-flock") as holder:
        with pytest.raises(FolderLocked, match=f"process {holder.pid} on {re.escape(socket.gethostname())}"):
            with folder_lock(folder, purpose="second"):
                pass
        holder.kill()
        with folder_lock(folder, purpose="after") as record:
            assert json.loads((folder / LOCK_NAME).read_text()) == record
    errors = capfd.readouterr().err
    assert "cannot lock files (No locks available)" in errors
    assert f"taking over the lock of {folder} from process {holder.pid}" in errors
    assert not (folder / LOCK_NAME).exists()


def test_without_flock_a_reused_pid_is_not_the_holder_and_another_hosts_holder_is_refused(tmp_path, no_flock):
    folder = tmp_path / "run"
    folder.mkdir()
    # The pid of a running process (this one), but the record's holder started an hour before it: a reused pid.
    reused = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
              "process_started": psutil.Process().create_time() - 3600, "purpose": "long gone"}
    (folder / LOCK_NAME).write_text(json.dumps(reused))
    with folder_lock(folder, purpose="after a reboot"):
        pass
    elsewhere = {**reused, "host": "another-machine", "purpose": "training on another machine"}
    (folder / LOCK_NAME).write_text(json.dumps(elsewhere))
    with pytest.raises(FolderLocked, match=rf"cannot be checked from .*delete {re.escape(str(folder / LOCK_NAME))}"):
        with folder_lock(folder, purpose="here"):
            pass
    assert json.loads((folder / LOCK_NAME).read_text()) == elsewhere  # refused: left as it was


def test_the_module_imports_without_fcntl():
    """Windows has no fcntl: importing the module must not fail there (the lock falls back to the file's record)."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import cxrutils.locks as locks\n"
            "assert locks.fcntl is None\n")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True)

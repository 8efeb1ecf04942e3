"""``make test``: the suite in two pytest processes at once, one for the tests that start Jupyter kernels.

    python tests/lanes.py            # what make test runs (two lanes)
    python tests/lanes.py -k cache   # with arguments: one pytest process, as before

Why two lanes and not pytest-xdist: an xdist run (``-n 2 --dist loadgroup``) hung once in a
kernel test. xdist talks to its workers over their standard input and output, which every
kernel and torchrun the tests start inherits; two plain pytest processes share nothing but
the machine. Why the kernel tests stay together, in one lane: jupyter_client picks a kernel's
ports by binding to port 0 and letting go, so two kernels started at the same moment by two
processes can be handed the same ports (``tests/conftest.py``).

- lane ``kernels``: ``-m notebook`` (conftest marks every test that reads the rendered reports
  as ``notebook`` too); its output goes to a log, printed when it ends;
- lane ``the rest``: ``-m "not notebook"``, on this terminal.

Both lanes build the session fixtures they share (the tiny phantom root, the tiny run) once,
under a lock, in one folder (``CXRUTILS_TEST_SHARED_ROOT``, read by ``conftest.built_once``),
and each runs torch with one thread (two processes of two threads each on two cores spin at
their barriers). The folder is removed when both lanes pass, and kept, with its path printed,
when one fails. The exit status is the first failing lane's, else 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_ROOT_VARIABLE = "CXRUTILS_TEST_SHARED_ROOT"
KERNEL_MARK = "notebook"
NO_TESTS_COLLECTED = 5  # pytest's exit status when a lane's selection is empty (e.g. a run without kernel tests)


def run_lanes(extra: list[str]) -> int:
    project = Path(__file__).resolve().parent.parent
    shared = Path(tempfile.mkdtemp(prefix="cxrutils-tests-"))
    environment = {**os.environ, SHARED_ROOT_VARIABLE: str(shared),
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    pytest = [sys.executable, "-m", "pytest", *extra]
    started = time.monotonic()
    kernels_log = shared / "kernels.log"
    with open(kernels_log, "w") as log:
        kernels = subprocess.Popen([*pytest, "-m", KERNEL_MARK, "--basetemp", str(shared / "kernels")],
                                   cwd=project, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            rest = subprocess.run([*pytest, "-m", f"not {KERNEL_MARK}", "--basetemp", str(shared / "rest")],
                                  cwd=project, env=environment).returncode
            print(f"\n== lane 'the rest' ended ({rest}) after {time.monotonic() - started:.0f} s; "
                  "waiting for lane 'kernels'", flush=True)
            kernel_status = kernels.wait()
        except BaseException:
            kernels.kill()
            raise
    print(f"\n== lane 'kernels' ({KERNEL_MARK}-marked tests), its log:\n", flush=True)
    sys.stdout.write(kernels_log.read_text(errors="replace"))
    statuses = {"the rest": rest, "kernels": kernel_status}
    failed = {lane: status for lane, status in statuses.items() if status not in (0, NO_TESTS_COLLECTED)}
    print(f"\n== two lanes in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{lane} exit {status}" for lane, status in statuses.items()), flush=True)
    if failed:
        print(f"== kept for reading: {shared} (each lane's temporary folders; delete it when done)", flush=True)
        return next(iter(failed.values()))
    shutil.rmtree(shared, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    if argv:  # a chosen selection is small: one process, exactly as given
        return subprocess.run([sys.executable, "-m", "pytest", *argv],
                              cwd=Path(__file__).resolve().parent.parent).returncode
    return run_lanes([])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

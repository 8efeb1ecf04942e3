"""A GPU box measured in one call of at most 5 minutes, into reports/gpu_check.json.

On a lent GPU (one H100/H200 on a 15-minute lease, where starting the machine costs
minutes), make ONE call:

    timeout 300 .venv/bin/python benchmarks/gpu_check.py --preset gpu

(``make gpu-check`` runs ``.venv/bin/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)``, with no install step;
on a machine whose own ``python3`` holds torch and the project is not installed:
``PYTHONPATH=. timeout 300 python3 benchmarks/gpu_check.py --preset gpu``.)
The steps share a budget of 260 s (the gpu preset's ``budget_s``, ``GPU_BUDGET_S``; ``--budget-s``
overrides it); the outer ``timeout`` (``OUTER_TIMEOUT_S``) adds 40 s for what lies outside it:
starting Python, stopping the step that is running when the budget ends and writing the last
JSON take a few seconds together, the rest is slack. Then fetch the JSON (``--out``; default
reports/gpu_check.json). ``--preset cpu`` runs the same steps, small, on a CPU in under about a
minute (tests/project/test_gpu_check.py runs it).

What makes it fit a short lease:

- the JSON is rewritten (temporary file, then rename) after every step and whenever a step
  reports a figure, so a kill at any moment leaves a readable file holding every finished
  figure; the machine's facts are written first;
- every step runs in a child process under its own timeout, capped by what is left of
  ``--budget-s``; a timeout or an error is recorded in the step's entry (``status``,
  ``seconds``, ``error``) and the check goes on to the next step; a step the budget cannot
  start is recorded as ``skipped: budget``. Children die with the check (Linux: SIGKILL on
  the parent's death), so a killed check leaves no process behind;
- it measures on a 256 px image cache written straight into the cache's on-disk format
  (``cxrutils.data.cache``: manifest, index, pixels, progress; ``ImageCache.open`` opens it
  like any built cache) from phantom films, not on a root of PNGs that would take minutes of
  CPU to decode and measure nothing of the GPU;
- the figures the compile decision needs come first (eager, then compiled, at the profile's
  batch: the compilation is the slowest and least predictable step, so it must not wait behind
  others), then the epoch's tail, DDP and the scaling, inference, and last what a short budget
  may cut: training compiled around DDP, and compiled at the larger batch.

Every timing is synchronised (``torch.cuda.synchronize()`` around each timed region) and at
steady state: warm-up steps are run and discarded (they hold the cuDNN algorithm search,
``torch.backends.cudnn.benchmark = True``, and the compilation), then the median of several
timed windows of steps is taken. Training runs the project's own step (``prepare_batch``
with the profile's augmentation on the device, then ``cxrutils.engine.train.training_step``:
AdamW, bf16 autocast) with the ``nih`` profile's settings (224 px input from the 256 px cache,
batch 96) and a randomly initialised DenseNet121 (speed does not depend on the weights).

The steps, in order, and their figures (``steps.<name>.figures``):

1. ``machine`` (top-level ``machine``): GPU name and count, memory, compute capability,
   driver, torch, CUDA, cuDNN, NCCL and Triton versions, CPU count, the code's commit.
2. ``cache``: 4,096 phantom films at 256 px written into ``<work>/cache_256``; seconds, MB.
3. ``train_eager``: for batch 96 and 192, each in ``channels_last`` and NCHW: ``img_per_s``
   (training images a second on batches already on the GPU: the compute bound),
   ``window_img_per_s`` (each timed window), ``step_ms``, ``peak_gib``
   (``torch.cuda.max_memory_allocated``), ``warmup_excess_seconds`` (what the warm-up steps
   took beyond steady steps: cuDNN's search). At batch 96 and 192 in channels_last also
   ``data_fed``: the same step fed by the real DataLoader over the cache (``make_loader``, 8
   workers or one less than the cores), and ``data_fed_over_in_memory`` (1.0: the loader keeps
   up; below: the GPU waits for data).
4. ``train_compiled``: batch 96, channels_last, ``torch.compile(dynamic=False)`` with a cold
   inductor cache (what a first run on a fresh box pays): ``img_per_s``, ``data_fed``,
   ``peak_gib``, ``compile_seconds`` (what the warm-up steps took beyond steady steps: the
   compilation, plus the cuDNN search eager pays too), ``graphs`` (dynamo's unique graphs),
   ``recompiles_in_warmup`` and ``recompiles_in_timed_steps`` (graphs compiled after the
   first step: 0 expected), ``graph_breaks``.
5. ``tail``: ``validation_seconds_per_film`` (the project's ``validate`` over 1,024 films,
   the median of the calls after the first, whose loader workers start), ``checkpoint_save_seconds``
   (``TrainingState.to_checkpoint`` and ``run_folder.save_checkpoint``, AdamW's moments
   included), ``checkpoint_mb``, ``checkpoint_load_seconds`` and ``restored_identical``
   (the model and optimizer come back bit for bit on the GPU).
6. ``torchrun``: ``torchrun --standalone --nproc_per_node=N`` for N = 1, 2, 4, ... up to every
   GPU (a single-GPU box runs only N = 1, and says so), each rank running 10 warm-up then
   3 x 10 timed steps at batch 96 through ``training_network`` (DDP over NCCL; N = 1 is one
   process without DDP, as training runs it): ``img_per_s`` (all ranks together) on batches on
   the GPU (``in_memory``) and fed by the loader (``data_fed``: DistributedSampler, the cores
   shared among the ranks). N = 1 is then measured again inside DDP over a process group of
   one (``n1.through_ddp``, ``training_network(force_ddp=True)``): DDP and NCCL run on a box
   with one GPU too, and ``*_over_without_ddp`` is DDP's own cost.
7. ``inference``: films/s of ``cxrutils.inference.scoring.infer_films`` (the path ``cxrutils
   infer`` takes; scoring only, no Grad-CAM) on 128 phantom PNGs of 1024 px (NIH's size), with
   0 loader workers and with infer's default (``scoring.default_workers`` for these films:
   ``default_workers``); PNG decoding on the CPU is most of it.
8. ``torchrun_compiled``: step 6's ranks, on every GPU (one GPU: one process forced through
   DDP), with the network compiled around DDP as ``training_network`` compiles it (a cold
   inductor cache): ``in_memory``, ``data_fed`` and ``compile`` (``compile_seconds``,
   ``graphs``: DDP's optimizer splits the graph at its buckets, ``graph_breaks``).
9. ``train_compiled_large``: step 4 at batch 192 (a fresh process and compilation).

``summary`` is recomputed from what is there after every step:

- ``nih_epoch``: an NIH epoch extrapolated from the data-fed img/s at batch 96
  (channels_last): ``train_seconds`` = 78,000 training films / img/s, ``validation_seconds`` =
  8,600 films x seconds per film, ``checkpoint_seconds`` (one save: training writes the epoch's
  checkpoint once), ``epoch_seconds`` and ``tail_share`` = (validation + checkpoint) / epoch,
  eager and compiled, on one process;
- ``data_fed_over_in_memory``, eager and compiled, at batch 96;
- ``torchrun_scaling``: per N, img/s and the scaling efficiency img/s(N) / (N x img/s(1)),
  on the GPU and fed by the loader; fed by the loader also the NIH epoch on N processes and its
  ``tail_share`` (``tail_share_rule``: (validation_seconds / N + checkpoint_seconds) /
  (78,000 / img/s(N) + validation_seconds / N + checkpoint_seconds), as each rank validates
  1/N of the films and rank 0 saves while the others wait); ``one_process_through_ddp``;
- ``compiled_ddp``: the compiled DDP img/s against the eager DDP run of as many processes;
- ``compile_decision``, the figure that decides whether ``compile`` becomes the GPU default
  in configs/train/nih.yaml: yes when, at steady state and fed by the loader (what an epoch
  runs), compiled img/s >= 1.1 x eager img/s (``compiled_over_eager``) AND the compilation is
  paid back within one NIH epoch (``compile_seconds`` <= ``epoch_seconds_saved``, the eager
  epoch's training time minus the compiled one's). ``verdict`` says which, or what is missing;
  a compiled step stopped mid-compilation still decides when ``compile_seconds_at_least``
  (how long it had compiled) exceeds an eager epoch's training time: then keep eager.

The old check's 2-epoch training and kill-and-resume run are not here: each costs a whole
``cxrutils train`` start (index, run record, validation, checkpoints) twice over, a minute or
more together, which the 260 s budget cannot hold beside the compilation; the CPU test suite
covers resume (tests/engine/test_train.py kills a 2-process torchrun and resumes it). The
``tail`` step still checks that a checkpoint saved from the GPU restores the model and the
optimizer exactly.

``--preset cpu`` runs the steps on the CPU, tiny (32 px input from a 64 px cache, batches of
4 and 8, 1 warm-up and 2 x 1 timed steps, one torch thread a process) to check the check: its
figures mean nothing about a GPU. Its torchrun steps run what a box with one GPU runs: N = 1
without DDP, then through gloo DDP (so no scaling efficiency), and compiled through DDP; its
compiled steps compile a tiny stand-in network with the
``eager`` backend (dynamo traces DenseNet121 for tens of seconds on 2 cores), there is no
``compile_decision``, and ``train_compiled_large`` (the same code at batch 8) is recorded as
not applicable. Options for tests and reruns: ``--only STEP,...``, ``--timeout
STEP=SECONDS``, ``--work DIR`` (default data/gpu_check), ``--out PATH``.

The JSON's keys, in order: ``check``, ``preset``, ``command``, ``started``, ``machine``,
``budget_s``, ``settings``, ``steps`` (per step, in the order run: ``status`` -- ``ok``,
``running``, ``timeout``, ``error``, ``interrupted``, ``skipped: budget`` or ``not applicable: ...``
-- ``seconds``, ``timeout_s``, ``figures``, ``error``), ``summary``, ``seconds``, ``finished``
(true once every step has had its turn). Each step's child writes its log to
``<work>/logs/<step>.log``. The command prints a line per step and the summary, and exits 1 when
a step failed or timed out, 2 when the gpu preset finds no usable GPU (the JSON then says why),
124 when stopped by SIGTERM (the step in flight is recorded as ``interrupted``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrutils.files import write_json
from cxrutils.paths import DATA_DIR, PROJ_ROOT, REPORTS_DIR

SCRIPT = Path(__file__).resolve()
NIH_TRAIN_FILMS = 78_000
NIH_VAL_FILMS = 8_600
COMPILE_SPEEDUP_NEEDED = 1.1  # compiled img/s over eager img/s, at steady state, fed by the loader
# The recommended call on a lent GPU: ``timeout OUTER_TIMEOUT_S ... --preset gpu``, whose steps get GPU_BUDGET_S (the
# gpu preset's budget_s). The difference covers what is outside the budget: starting Python and importing the check
# before its clock starts (about a second), stopping the step in flight when the budget ends (a SIGKILL, a second)
# and the last JSON and summary (under a second); the rest is slack, for a slow file system or a loaded CPU.
GPU_BUDGET_S = 260
OUTER_TIMEOUT_S = 300
# The order is what a short lease keeps: what the compile decision needs first (the eager and compiled rates at
# the profile's batch), then the epoch's tail, DDP and the scaling, inference, and last the extras the budget may cut.
STEPS = ("cache", "train_eager", "train_compiled", "tail", "torchrun", "inference", "torchrun_compiled",
         "train_compiled_large")
OK, TIMEOUT, ERROR, RUNNING, INTERRUPTED = "ok", "timeout", "error", "running", "interrupted"
SKIPPED_BUDGET, NOT_APPLICABLE = "skipped: budget", "not applicable"


def default_workers() -> int:
    """Loader workers: the nih profile's 8, or one less than the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {
        "device": "cuda", "budget_s": GPU_BUDGET_S, "torch_threads": None,
        "films": 4096, "val_films": 1024, "cache_size": 256, "input_size": 224, "amp": True,
        "batch_sizes": [96, 192], "layouts": ["channels_last", "nchw"],
        "warmup_steps": 10, "windows": 3, "steps_per_window": 10,
        "compile": {"backend": "inductor", "network": "densenet121"},
        "validation_repeats": 3, "checkpoint_repeats": 3,
        "inference": {"films": 128, "film_size": 1024, "batch_size": 32, "warmup": True},
        "torchrun_processes": "1, 2, 4, ... up to every GPU",
        "torchrun_compiled_processes": "every GPU (one GPU: one process, forced through DDP)",
        # Seconds: a step's own limit, and the least budget left for it to start.
        "timeouts": {"cache": 60, "train_eager": 120, "train_compiled": 150, "tail": 60, "torchrun": 150,
                     "inference": 60, "torchrun_compiled": 150, "train_compiled_large": 120},
        "min_s": {"cache": 5, "train_eager": 20, "train_compiled": 60, "tail": 10, "torchrun": 20, "inference": 15,
                  "torchrun_compiled": 60, "train_compiled_large": 60},
    },
    "cpu": {
        "device": "cpu", "budget_s": 600,
        # One thread a process: on a small shared CPU, OpenMP threads that spin while a core is busy elsewhere make
        # steps ten times slower at random; the cpu preset checks the check, its speed means nothing.
        "torch_threads": 1,
        "films": 256, "val_films": 64, "cache_size": 64, "input_size": 32, "amp": False,
        "batch_sizes": [4, 8], "layouts": ["channels_last", "nchw"],
        # A step of DenseNet121 with AdamW takes a third of a second on one core: every code path runs at 3 a measure.
        "warmup_steps": 1, "windows": 2, "steps_per_window": 1,
        "compile": {"backend": "eager", "network": "tiny"},
        "validation_repeats": 2, "checkpoint_repeats": 1,
        "inference": {"films": 8, "film_size": 64, "batch_size": 4, "warmup": False},
        # What a box with one GPU runs: one process without DDP, then through DDP (gloo), and compiled through DDP.
        # A torchrun of N processes costs N + 1 starts of Python and torch, seconds each; tests/engine/test_train.py
        # runs 2 ranks.
        "torchrun_processes": [1],
        "torchrun_compiled_processes": 1,
        "not_applicable": {"train_compiled_large": "the cpu preset runs train_compiled's code once; a second batch "
                                                   "size tells a CPU check nothing more"},
        "timeouts": {"cache": 60, "train_eager": 120, "train_compiled": 120, "tail": 120, "torchrun": 180,
                     "inference": 120, "torchrun_compiled": 180, "train_compiled_large": 120},
        "min_s": {step: 1 for step in STEPS},
    },
}


# --------------------------------------------------------------------------- processes


class StepTimeout(Exception):
    """A step's child ran past the step's limit and was killed."""


class Interrupted(Exception):
    """The check itself was told to stop (SIGTERM: an outer ``timeout``)."""


PARENT_VARIABLE = "GPU_CHECK_PARENT_PID"  # the pid that started this process, as that process said it


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies, so a killed check leaves nothing behind.

    The starter names itself in $GPU_CHECK_PARENT_PID: a parent that died before the
    signal was armed (this process then has another parent already) is seen, not missed.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_VARIABLE, str(os.getppid())):
        os._exit(1)  # the parent died before the signal was armed


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a child, its process group and every descendant (torchrun's workers start sessions of their own)."""
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(process.pid).children(recursive=True)
    except Exception:  # psutil missing or the child already gone: the process group is still killed
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for descendant in descendants:
        try:
            descendant.kill()
        except Exception:  # gone already
            pass
    process.wait()


def log_tail(path: Path, characters: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- the check (parent)


class Check:
    """The report being written, the budget, and the step in flight."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.preset = PRESETS[args.preset]
        self.out: Path = args.out
        self.work: Path = args.work
        self.started = time.monotonic()
        self.budget_s = float(args.budget_s if args.budget_s is not None else self.preset["budget_s"])
        self.timeouts = {**self.preset["timeouts"], **args.timeout}
        self.steps = [step for step in STEPS if not args.only or step in args.only]
        self.cache_dir = self.work / f"cache_{self.preset['cache_size']}"
        self.report: dict[str, Any] = {
            "check": "benchmarks/gpu_check.py", "preset": args.preset,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": {},
            "budget_s": self.budget_s, "settings": {**self.preset, "timeouts": self.timeouts, "work": str(self.work),
                                                    "loader_workers": default_workers()},
            "steps": {}, "summary": {}, "seconds": 0.0, "finished": False,
        }
        self.entry: dict[str, Any] | None = None
        self.step_deadline = float("inf")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def budget_left(self) -> float:
        return self.budget_s - self.elapsed()

    def save(self) -> None:
        self.report["seconds"] = round(self.elapsed(), 1)
        self.report["summary"] = summarise(self.report)
        write_json(self.out, self.report)

    def partial(self, figures: dict[str, Any]) -> None:
        """A running step's figures so far: on disk at once, in case the check is killed."""
        assert self.entry is not None
        self.entry["figures"] = figures
        self.save()

    def run_step(self, name: str, function: Callable[[Check], dict[str, Any]]) -> None:
        if name in self.preset.get("not_applicable", {}):
            status = f"{NOT_APPLICABLE}: {self.preset['not_applicable'][name]}"
            self.report["steps"][name] = {"status": status, "seconds": 0.0}
            self.save()
            print(f"[{self.elapsed():6.1f} s] {name}: {status}", flush=True)
            return
        left = self.budget_left()
        if left < self.preset["min_s"][name]:
            self.report["steps"][name] = {"status": SKIPPED_BUDGET, "seconds": 0.0,
                                          "error": f"{left:.0f} s of the {self.budget_s:.0f} s budget left"}
            self.save()
            print(f"[{self.elapsed():6.1f} s] {name}: {SKIPPED_BUDGET}", flush=True)
            return
        timeout = min(float(self.timeouts[name]), max(left, 0.0))
        self.entry = {"status": RUNNING, "seconds": 0.0, "timeout_s": round(timeout, 1), "figures": {}}
        if timeout < self.timeouts[name]:
            self.entry["timeout_by"] = "budget"
        self.report["steps"][name] = self.entry
        self.save()
        started = time.monotonic()
        self.step_deadline = started + timeout
        try:
            figures = function(self)
            self.entry["figures"] = figures
            errors = figures.get("errors") if isinstance(figures, dict) else None
            self.entry["status"] = ERROR if errors else OK
            if errors:
                self.entry["error"] = "; ".join(errors)[-3000:]
        except StepTimeout as timed_out:
            self.entry.update(status=TIMEOUT, error=str(timed_out), ended_unix=time.time())
        except Interrupted as interrupted:
            self.entry.update(status=INTERRUPTED, error=str(interrupted), seconds=round(time.monotonic() - started, 1))
            raise
        except Exception as error:  # recorded, never raised: the next step still runs
            self.entry.update(status=ERROR, error=f"{type(error).__name__}: {error}\n"
                              f"{traceback.format_exc()[-2000:]}")
        self.entry["seconds"] = round(time.monotonic() - started, 1)
        self.save()
        print(f"[{self.elapsed():6.1f} s] {name}: {self.entry['status']} in {self.entry['seconds']:.1f} s"
              f"{describe_figures(self.entry.get('figures', {}))}", flush=True)
        if self.entry["status"] != OK and self.entry.get("error"):
            print("    " + self.entry["error"].strip().splitlines()[0][:300], flush=True)

    def child(self, kind: str, payload: dict[str, Any], label: str, processes: int | None = None,
              on_figures: Callable[[dict[str, Any]], None] | None = None,
              environment: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``kind`` in a child process (under torchrun with ``processes``) until it ends or the step's time is up.

        The child writes its figures to a JSON file as it goes; each new version is passed
        to ``on_figures`` (default: the step's entry), so figures survive a timeout or a kill.
        """
        results, logs = self.work / "results", self.work / "logs"
        results.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        result, log = results / f"{label}.json", logs / f"{label}.log"
        result.unlink(missing_ok=True)
        worker = [str(SCRIPT), "--child", kind, "--payload", json.dumps(payload), "--result", str(result)]
        if processes:
            command = [sys.executable, str(SCRIPT), "--torchrun", "--standalone", f"--nproc_per_node={processes}",
                       *worker]
        else:
            command = [sys.executable, *worker]
        on_figures = on_figures or self.partial
        seen_mtime = 0.0
        figures: dict[str, Any] = {}

        def read_new() -> None:
            nonlocal seen_mtime, figures
            try:
                mtime = result.stat().st_mtime
            except FileNotFoundError:
                return
            if mtime != seen_mtime:
                seen_mtime = mtime
                figures = json.loads(result.read_text())
                on_figures(figures)

        with open(log, "wb") as log_file:
            process = subprocess.Popen(command, cwd=PROJ_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {}),
                                            PARENT_VARIABLE: str(os.getpid())})
            try:
                while True:
                    try:
                        code = process.wait(timeout=0.25)
                        break
                    except subprocess.TimeoutExpired:
                        read_new()
                        if time.monotonic() > self.step_deadline:
                            kill_tree(process)
                            read_new()
                            limit = ("what was left of the budget" if self.entry.get("timeout_by") == "budget"
                                     else "the step's limit")
                            raise StepTimeout(f"stopped after {self.entry['timeout_s']:.0f} s, {limit} ({label}); "
                                              f"log {log}:\n{log_tail(log, 1500)}") from None
            except BaseException:  # a timeout, or the check told to stop: the child goes first
                if process.poll() is None:
                    kill_tree(process)
                raise
        read_new()
        if code != 0:
            raise RuntimeError(f"{label} exited with {code}; log {log}:\n{log_tail(log)}")
        return figures


def describe_figures(figures: dict[str, Any]) -> str:
    """A few of a step's figures for its line on the terminal."""
    if not isinstance(figures, dict):
        return ""
    parts = []
    for key, value in figures.items():
        if isinstance(value, dict) and "img_per_s" in value:
            fed = value.get("data_fed", {}).get("img_per_s") if isinstance(value.get("data_fed"), dict) else None
            parts.append(f"{key} {value['img_per_s']:.0f} img/s" + (f" (fed {fed:.0f})" if fed else ""))
        elif isinstance(value, dict) and "films_per_s" in value:
            parts.append(f"{key} {value['films_per_s']:.1f} films/s")
    for key in ("validation_seconds_per_film", "checkpoint_save_seconds", "compile_seconds", "seconds"):
        if isinstance(figures.get(key), (int, float)):
            parts.append(f"{key} {figures[key]:.4g}")
    return (": " + "; ".join(parts)) if parts else ""


def print_summary(summary: dict[str, Any]) -> None:
    def number(value: Any, digits: int = 0, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.{digits}f}{unit}"

    epoch = summary["nih_epoch"]
    for mode in ("eager", "compiled"):
        figures = epoch[mode]
        share = figures["tail_share"]
        print(f"NIH epoch, {mode}: {number(figures['data_fed_img_per_s'])} img/s fed by the loader; "
              f"train {number(figures['train_seconds'], unit=' s')} + validation "
              f"{number(epoch['validation_seconds'], unit=' s')} + checkpoint "
              f"{number(epoch['checkpoint_seconds'], 1, ' s')} = {number(figures['epoch_seconds'], unit=' s')}; "
              f"tail {number(share and 100 * share, 1, '%')}; data-fed / in-memory "
              f"{number(summary['data_fed_over_in_memory'][mode], 2)}", flush=True)
    scaling = summary["torchrun_scaling"]
    for feed in ("in_memory", "data_fed"):
        for processes, figures in scaling.get(feed, {}).items():
            tail = (f", NIH epoch {number(figures['epoch_seconds'], unit=' s')}, tail "
                    f"{number(figures['tail_share'] and 100 * figures['tail_share'], 1, '%')}"
                    if "tail_share" in figures else "")
            print(f"torchrun N={processes}, {feed}: {number(figures['img_per_s'])} img/s, efficiency "
                  f"{number(figures['efficiency'], 2)}{tail}", flush=True)
    through = scaling.get("one_process_through_ddp")
    if through:
        print(f"one process through DDP ({through['backend']}): {number(through['data_fed_img_per_s'])} img/s fed, "
              f"{number(through['data_fed_over_without_ddp'], 3)} x without DDP", flush=True)
    if scaling.get("note"):
        print(f"torchrun: {scaling['note']}", flush=True)
    compiled_ddp = summary["compiled_ddp"]
    if compiled_ddp:
        fed = compiled_ddp["data_fed"]
        print(f"compiled DDP, N={compiled_ddp['processes']}: {number(fed['compiled_img_per_s'])} img/s fed, "
              f"{number(fed['compiled_over_eager'], 2)} x eager DDP", flush=True)
    decision = summary["compile_decision"]
    print(f"compile decision: {decision['verdict']}", flush=True)
    if "compiled_over_eager" in decision:
        print(f"    compiled / eager {number(decision['compiled_over_eager'], 2)} (needs {COMPILE_SPEEDUP_NEEDED}); "
              f"compile {number(decision['compile_seconds'], 1, ' s')} against "
              f"{number(decision['epoch_seconds_saved'], 1, ' s')} saved an epoch", flush=True)
    if summary.get("note"):
        print(f"note: {summary['note']}", flush=True)


def machine() -> dict[str, Any]:
    """The machine's facts, without starting anything on the GPU beyond torch's device queries."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from cxrutils.engine.runtime import code_version, nvidia_driver

    found = nvidia_driver()
    facts: dict[str, Any] = {
        "gpu": found[1] if found else None, "gpus": torch.cuda.device_count(), "driver": found[0] if found else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_usable": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                     compute_capability=f"{properties.major}.{properties.minor}",
                     multiprocessors=properties.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        try:
            nccl = torch.cuda.nccl.version()
            facts["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as error:  # a build without NCCL
            facts["nccl"] = f"unavailable: {error}"
    try:
        facts["triton"] = version("triton")
    except PackageNotFoundError:
        facts["triton"] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    facts.update(cpus=os.cpu_count(), cpus_usable=usable, python=platform.python_version(),
                 platform=platform.platform(), date=dt.date.today().isoformat(), code=code_version())
    return facts


# --------------------------------------------------------------------------- the steps (parent side)


def _common(check: Check) -> dict[str, Any]:
    preset = check.preset
    return {"device": preset["device"], "cache": str(check.cache_dir), "films": preset["films"],
            "val_films": preset["val_films"], "cache_size": preset["cache_size"], "input_size": preset["input_size"],
            "amp": preset["amp"], "warmup_steps": preset["warmup_steps"], "windows": preset["windows"],
            "steps_per_window": preset["steps_per_window"], "workers": default_workers(),
            "torch_threads": preset["torch_threads"]}


def step_cache(check: Check) -> dict[str, Any]:
    return check.child("cache", _common(check), "cache")


def step_train_eager(check: Check) -> dict[str, Any]:
    configs = [{"name": f"b{batch}_{layout}", "batch_size": batch, "layout": layout,
                "data_fed": layout == "channels_last"}
               for layout in check.preset["layouts"] for batch in check.preset["batch_sizes"]]
    return check.child("train", {**_common(check), "configs": configs, "compile": None}, "train_eager")


def _cold_compile(check: Check, label: str, run: Callable[[dict[str, str]], dict[str, Any]]) -> dict[str, Any]:
    """``run(environment)`` with an empty inductor cache of its own: what the first compiled run on a fresh box pays."""
    inductor_cache = check.work / "inductor" / f"{label}_{os.getpid()}_{int(time.time())}"
    try:
        return run({"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)})
    finally:
        shutil.rmtree(inductor_cache, ignore_errors=True)


def _compiled(check: Check, batch: int, label: str) -> dict[str, Any]:
    config = {"name": f"b{batch}_channels_last", "batch_size": batch, "layout": "channels_last", "data_fed": True}
    payload = {**_common(check), "configs": [config], "compile": check.preset["compile"]}
    return _cold_compile(check, label, lambda environment: check.child("train", payload, label,
                                                                        environment=environment))


def step_train_compiled(check: Check) -> dict[str, Any]:
    return _compiled(check, check.preset["batch_sizes"][0], "train_compiled")


def step_train_compiled_large(check: Check) -> dict[str, Any]:
    return _compiled(check, check.preset["batch_sizes"][-1], "train_compiled_large")


def step_tail(check: Check) -> dict[str, Any]:
    payload = {**_common(check), "batch_size": check.preset["batch_sizes"][0],
               "validation_repeats": check.preset["validation_repeats"],
               "checkpoint_repeats": check.preset["checkpoint_repeats"], "folder": str(check.work / "tail")}
    return check.child("tail", payload, "tail")


def step_inference(check: Check) -> dict[str, Any]:
    payload = {**_common(check), **check.preset["inference"], "folder": str(check.work / "inference")}
    return check.child("inference", payload, "inference")


def torchrun_processes(check: Check) -> list[int]:
    """1, 2, 4, ... up to every GPU (and every GPU itself); the cpu preset's own list."""
    listed = check.preset["torchrun_processes"]
    if isinstance(listed, list):
        return listed
    import torch

    gpus = torch.cuda.device_count()
    counts = [n for n in (2**k for k in range(8)) if n <= gpus]
    return counts + ([gpus] if gpus and gpus not in counts else [])


def _per_rank(check: Check, processes: int) -> dict[str, Any]:
    """A rank's payload: the profile's batch, and the cores shared among the ranks' loader workers."""
    return {**_common(check), "batch_size": check.preset["batch_sizes"][0],
            "workers": max(1, min(default_workers(), (os.cpu_count() or 1) // processes - 1))}


def step_torchrun(check: Check) -> dict[str, Any]:
    counts = torchrun_processes(check)
    figures: dict[str, Any] = {"process_counts": counts}
    if counts == [1]:
        figures["note"] = ("one process only (one GPU): N = 1 ran without DDP, as training runs it, and forced through "
                           "DDP; the scaling efficiency needs 2 or more")
    elif 1 not in counts:
        figures["note"] = f"N = {', '.join(map(str, counts))} only: no efficiency without N = 1"
    for processes in counts:
        # N = 1 also runs forced through DDP, over a process group of one: DDP's own cost, and NCCL on any box.
        per_rank = {**_per_rank(check, processes), "force_ddp_after": processes == 1, "compile": None}

        def record(found: dict[str, Any], processes: int = processes) -> None:
            figures[f"n{processes}"] = found
            check.partial(figures)

        try:
            check.child("ddp", per_rank, f"torchrun_n{processes}", processes=processes, on_figures=record)
        except RuntimeError as error:  # N processes failing (NCCL, say) leaves the other counts to run
            figures.setdefault(f"n{processes}", {})["error"] = str(error)[:3000]
            figures.setdefault("errors", []).append(f"N={processes}: {str(error).splitlines()[0]}")
            check.partial(figures)
    return figures


def torchrun_compiled_processes(check: Check) -> int:
    """Every GPU (one GPU: one process, forced through DDP); the cpu preset's own count."""
    listed = check.preset["torchrun_compiled_processes"]
    if isinstance(listed, int):
        return listed
    import torch

    return max(1, torch.cuda.device_count())


def step_torchrun_compiled(check: Check) -> dict[str, Any]:
    """Training compiled around DDP, as ``training_network`` compiles it, with a cold inductor cache."""
    processes = torchrun_compiled_processes(check)
    payload = {**_per_rank(check, processes), "force_ddp": processes == 1, "compile": check.preset["compile"]}
    label = f"torchrun_compiled_n{processes}"
    return _cold_compile(check, label, lambda environment: check.child("ddp", payload, label, processes=processes,
                                                                        environment=environment))


STEP_FUNCTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "cache": step_cache, "train_eager": step_train_eager, "train_compiled": step_train_compiled, "tail": step_tail,
    "torchrun": step_torchrun, "inference": step_inference, "torchrun_compiled": step_torchrun_compiled,
    "train_compiled_large": step_train_compiled_large,
}


# --------------------------------------------------------------------------- the summary


def _figure(report: dict[str, Any], step: str, *keys: str) -> Any:
    entry = report["steps"].get(step, {})
    value: Any = entry.get("figures", {})
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The derived figures (module docstring), from whatever steps have finished; None where a figure is missing."""
    preset = PRESETS[report["preset"]]
    batch = preset["batch_sizes"][0]
    config = f"b{batch}_channels_last"
    per_film = _figure(report, "tail", "validation_seconds_per_film")
    checkpoint = _figure(report, "tail", "checkpoint_save_seconds")
    validation = per_film * NIH_VAL_FILMS if per_film is not None else None
    epoch: dict[str, Any] = {"train_films": NIH_TRAIN_FILMS, "val_films": NIH_VAL_FILMS, "batch_size": batch,
                             "validation_seconds": validation, "checkpoint_seconds": checkpoint}
    ratios: dict[str, Any] = {}
    for mode, step in (("eager", "train_eager"), ("compiled", "train_compiled")):
        fed = _figure(report, step, config, "data_fed", "img_per_s")
        ratios[mode] = _figure(report, step, config, "data_fed_over_in_memory")
        train_seconds = NIH_TRAIN_FILMS / fed if fed else None
        total = (train_seconds + validation + checkpoint
                 if None not in (train_seconds, validation, checkpoint) else None)
        epoch[mode] = {"data_fed_img_per_s": fed, "train_seconds": train_seconds, "epoch_seconds": total,
                       "tail_share": (validation + checkpoint) / total if total else None}
    summary = {"nih_epoch": epoch, "data_fed_over_in_memory": ratios,
               "torchrun_scaling": _scaling(report, validation, checkpoint), "compiled_ddp": _compiled_ddp(report),
               "compile_decision": _compile_decision(report, epoch, config)}
    if report["preset"] != "gpu":
        summary["note"] = ("the cpu preset checks the check: its figures say nothing of a GPU, and its compiled "
                           "figures are a tiny stand-in network's")
    return summary


def _compile_seconds_at_least(report: dict[str, Any], config: str) -> float | None:
    """A compiled step that did not finish: how long its compilation took at least (None when unknown).

    The first warm-up step holds the compilation; if it never ended, the compilation ran
    from its start until the step was stopped.
    """
    progress = _figure(report, "train_compiled", config)
    if not isinstance(progress, dict):
        return None
    if progress.get("warmup_seconds_so_far"):
        return progress["warmup_seconds_so_far"][0]
    ended = report["steps"]["train_compiled"].get("ended_unix")
    started = progress.get("first_step_started_unix")
    return ended - started if ended and started else None


TAIL_SHARE_RULE = ("tail_share(N) = (validation_seconds / N + checkpoint_seconds) / (78,000 / data-fed img/s(N) + "
                   "validation_seconds / N + checkpoint_seconds): an NIH epoch on N processes, each validating its "
                   "1/N of the 8,600 films, rank 0 saving the one checkpoint while the others wait")


def _scaling(report: dict[str, Any], validation: float | None, checkpoint: float | None) -> dict[str, Any]:
    """Per N: img/s (all ranks), efficiency img/s(N) / (N x img/s(1)), and fed by the loader the NIH epoch's tail."""
    figures = report["steps"].get("torchrun", {}).get("figures", {})
    scaling: dict[str, Any] = {}
    for feed in ("in_memory", "data_fed"):
        one = _figure(report, "torchrun", "n1", feed, "img_per_s")
        per_count = {}
        for key, value in figures.items():
            if key.startswith("n") and key[1:].isdigit() and isinstance(value, dict):
                rate = value.get(feed, {}).get("img_per_s")
                processes = int(key[1:])
                row = {"img_per_s": rate, "efficiency": rate / (processes * one) if rate and one else None}
                if feed == "data_fed":
                    row.update(_epoch_on(processes, rate, validation, checkpoint))
                per_count[str(processes)] = row
        scaling[feed] = per_count
    scaling["tail_share_rule"] = TAIL_SHARE_RULE
    through = _figure(report, "torchrun", "n1", "through_ddp")
    if isinstance(through, dict):
        scaling["one_process_through_ddp"] = {
            "backend": through.get("backend"),
            **{f"{feed}_img_per_s": through.get(feed, {}).get("img_per_s") for feed in ("in_memory", "data_fed")},
            **{f"{feed}_over_without_ddp": through.get(f"{feed}_over_without_ddp")
               for feed in ("in_memory", "data_fed")}}
    if figures.get("note"):
        scaling["note"] = figures["note"]
    return scaling


def _epoch_on(processes: int, rate: float | None, validation: float | None,
              checkpoint: float | None) -> dict[str, float | None]:
    """An NIH epoch on ``processes`` ranks at ``rate`` img/s in all (``TAIL_SHARE_RULE``); None for a missing figure."""
    if not rate or validation is None or checkpoint is None:
        return {"epoch_seconds": None, "tail_share": None}
    tail = validation / processes + checkpoint
    epoch = NIH_TRAIN_FILMS / rate + tail
    return {"epoch_seconds": epoch, "tail_share": tail / epoch}


def _compiled_ddp(report: dict[str, Any]) -> dict[str, Any]:
    """The compiled DDP run against the eager one of as many processes (N = 1: eager through DDP too)."""
    figures = report["steps"].get("torchrun_compiled", {}).get("figures", {})
    if not figures.get("processes"):
        return {}
    processes = figures["processes"]
    summary: dict[str, Any] = {"processes": processes, "forced_ddp": figures.get("forced_ddp"),
                               "compile": figures.get("compile")}
    eager = _figure(report, "torchrun", f"n{processes}", *(("through_ddp",) if processes == 1 else ()))
    for feed in ("in_memory", "data_fed"):
        compiled_rate = figures.get(feed, {}).get("img_per_s")
        eager_rate = eager.get(feed, {}).get("img_per_s") if isinstance(eager, dict) else None
        summary[feed] = {"compiled_img_per_s": compiled_rate, "eager_img_per_s": eager_rate,
                         "compiled_over_eager": compiled_rate / eager_rate if compiled_rate and eager_rate else None}
    return summary


def _compile_decision(report: dict[str, Any], epoch: dict[str, Any], config: str) -> dict[str, Any]:
    rule = (f"compile becomes the GPU default when, fed by the loader at steady state, compiled img/s >= "
            f"{COMPILE_SPEEDUP_NEEDED} x eager img/s AND compile_seconds <= epoch_seconds_saved (one NIH epoch)")
    eager, compiled = epoch["eager"]["data_fed_img_per_s"], epoch["compiled"]["data_fed_img_per_s"]
    compile_seconds = _figure(report, "train_compiled", config, "compile_seconds")
    if report["preset"] != "gpu":
        return {"rule": rule, "verdict": "not applicable: the cpu preset compiles a tiny stand-in network"}
    decision: dict[str, Any] = {"rule": rule, "eager_img_per_s": eager, "compiled_img_per_s": compiled,
                                "compiled_over_eager": compiled / eager if eager and compiled else None,
                                "compile_seconds": compile_seconds, "epoch_seconds_saved": None,
                                "amortised_within_one_epoch": None}
    eager_train_seconds = epoch["eager"]["train_seconds"]
    at_least = _compile_seconds_at_least(report, config) if compile_seconds is None else None
    if at_least is not None:
        decision["compile_seconds_at_least"] = at_least
        if eager_train_seconds is not None and at_least >= eager_train_seconds:
            # Saved = eager - compiled training time < eager training time <= the compilation: never paid back.
            decision.update(amortised_within_one_epoch=False, verdict=(
                f"keep eager: the compilation took at least {at_least:.0f} s, more than an eager NIH epoch's "
                f"training ({eager_train_seconds:.0f} s), so one epoch cannot pay it back"))
            return decision
    missing = [name for name, value in (("eager data-fed img/s", eager), ("compiled data-fed img/s", compiled),
                                        ("compile seconds", compile_seconds)) if value is None]
    if missing:
        decision["verdict"] = f"undecided: no {', no '.join(missing)}"
        return decision
    saved = NIH_TRAIN_FILMS / eager - NIH_TRAIN_FILMS / compiled
    faster = compiled >= COMPILE_SPEEDUP_NEEDED * eager
    amortised = compile_seconds <= saved
    decision.update(epoch_seconds_saved=saved, amortised_within_one_epoch=amortised,
                    verdict="make compile the GPU default" if faster and amortised else "keep eager")
    return decision


# --------------------------------------------------------------------------- children: what runs in them


class Reporter:
    """A child's figures, rewritten atomically as each is found (the parent reads them as they come)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.figures: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.figures[key] = value
        write_json(self.path, self.figures)

    def replace(self, figures: dict[str, Any]) -> None:
        self.figures = figures
        write_json(self.path, self.figures)

    def error(self, text: str) -> None:
        self.set("errors", [*self.figures.get("errors", []), text])


def film_names(count: int) -> list[str]:
    return [f"{k:08d}_000.png" for k in range(count)]


def film_labels(count: int, seed: int = 0) -> Any:
    """Random findings at about NIH's prevalence, so every finding has positives and negatives in validation."""
    import numpy as np

    from cxrutils.labels import FINDINGS

    return (np.random.default_rng(seed).random((count, len(FINDINGS))) < 0.1).astype(np.float32)


def write_film_cache(folder: Path, count: int, size: int, seed: int = 0) -> dict[str, Any]:
    """``count`` phantom films of ``size`` px written straight into the image cache's on-disk format.

    The layout is ``cxrutils.data.cache``'s (manifest.json written last, as its builder
    does: the manifest says complete only once everything else is on disk), so
    ``ImageCache.open`` and the training loaders read it as any built cache. There are no
    image files, so the fingerprint is a name for these films, not a hash of files.
    """
    import hashlib

    import numpy as np
    import pandas as pd

    from cxrutils.data import cache as image_cache
    from cxrutils.demo.phantoms import render_phantom
    from cxrutils.files import atomic_write_text, write_csv

    names = film_names(count)
    fingerprint = hashlib.sha256(f"gpu_check phantom films n={count} size={size} seed={seed}".encode()).hexdigest()
    try:
        existing = image_cache.ImageCache.open(folder)
        if existing.fingerprint == fingerprint:
            return {"reused": True}
    except image_cache.CacheNotReadyError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    (folder / image_cache.MANIFEST_NAME).unlink(missing_ok=True)  # first: no stale "complete" survives a crash
    rng = np.random.default_rng(seed)
    bases = [render_phantom(["Effusion"] if k % 2 else [], rng=rng, size=size).pixels for k in range(8)]
    pixels = np.memmap(folder / image_cache.PIXELS_NAME, dtype=np.uint8, mode="w+", shape=(count, size, size))
    for k in range(count):  # shifted copies: what the films show does not change the speed
        pixels[k] = np.roll(bases[k % len(bases)], (k // len(bases)) % size, axis=1)
    pixels.flush()
    del pixels
    (folder / image_cache.PROGRESS_NAME).write_bytes(bytes([image_cache.DONE]) * count)
    index = pd.DataFrame({"row": np.arange(count), "image": names})
    atomic_write_text(folder / image_cache.INDEX_NAME, index.to_csv(index=False))
    write_csv(folder / image_cache.BAD_FILES_NAME, pd.DataFrame(columns=image_cache.BAD_FILES_COLUMNS))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(folder / image_cache.MANIFEST_NAME, {
        "format_version": image_cache.FORMAT_VERSION, "code_version": image_cache.CACHE_CODE_VERSION,
        "fingerprint": fingerprint, "size": size, "n_images": count, "dtype": "uint8", "shape": [count, size, size],
        "state": "complete", "created": now, "completed": now, "n_bad": 0,
        "written_by": "benchmarks/gpu_check.py: phantom films written directly, no image files"})
    image_cache.ImageCache.open(folder)  # fails here, naming the folder, if the layout is not the cache's
    return {"reused": False}


def child_cache(payload: dict[str, Any], reporter: Reporter) -> None:
    started = time.perf_counter()
    folder = Path(payload["cache"])
    done = write_film_cache(folder, payload["films"], payload["cache_size"])
    reporter.set("films", payload["films"])
    reporter.set("size", payload["cache_size"])
    reporter.set("megabytes", round(payload["films"] * payload["cache_size"] ** 2 / 1e6, 1))
    reporter.set("reused", done["reused"])
    reporter.set("seconds", round(time.perf_counter() - started, 2))


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(step: Callable[[int], None], images_per_step: int, payload: dict[str, Any], device: Any,
                barrier: Callable[[], None] | None = None,
                on_warmup_step: Callable[[list[float]], None] | None = None) -> dict[str, Any]:
    """Warm-up steps (timed one by one, discarded), then the median of timed windows of steps, synchronised.

    ``on_warmup_step`` gets the warm-up steps' seconds so far after each one (the first holds a compilation).
    """
    warmup, windows, per_window = payload["warmup_steps"], payload["windows"], payload["steps_per_window"]
    warmup_seconds: list[float] = []
    for i in range(warmup):
        started = time.perf_counter()
        step(i)
        synchronize(device)
        warmup_seconds.append(time.perf_counter() - started)
        if on_warmup_step is not None:
            on_warmup_step(warmup_seconds)
    window_seconds = []
    for window in range(windows):
        if barrier is not None:
            barrier()
        synchronize(device)
        started = time.perf_counter()
        for i in range(per_window):
            step(warmup + window * per_window + i)
        synchronize(device)
        window_seconds.append(time.perf_counter() - started)
    step_seconds = statistics.median(window_seconds) / per_window
    return {"img_per_s": images_per_step / step_seconds,
            "window_img_per_s": [images_per_step * per_window / seconds for seconds in window_seconds],
            "step_ms": 1000 * step_seconds, "first_step_seconds": warmup_seconds[0] if warmup_seconds else None,
            "warmup_excess_seconds": sum(warmup_seconds) - warmup * step_seconds,
            "warmup_steps": warmup, "timed_steps": windows * per_window, "images_per_step": images_per_step}


def tiny_network() -> Any:
    """The cpu preset's compiled network: DenseNet121's interface (1 channel in, 14 logits), traced in a second."""
    from torch import nn

    from cxrutils.labels import FINDINGS

    class TinyNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.classifier = nn.Linear(8, len(FINDINGS))

        def forward(self, images: Any) -> Any:
            return self.classifier(self.features(images).mean(dim=(2, 3)))

    return TinyNetwork()


def training_setup(payload: dict[str, Any], batch_size: int, channels_last: bool, network_kind: str = "densenet121",
                   ddp: Any = None) -> dict[str, Any]:
    """The nih profile's settings at this size, a fresh model on the device, its TrainingState and the cache."""
    import torch
    from torch import nn

    from cxrutils.data.cache import ImageCache
    from cxrutils.engine.model import build_model
    from cxrutils.engine.runtime import Distributed, select_device
    from cxrutils.engine.train import TrainingState
    from cxrutils.settings import load_train_config

    ddp = ddp or Distributed()
    device = select_device("auto" if payload["device"] == "cuda" else payload["device"], ddp)
    if payload["device"] == "cuda" and device.type != "cuda":
        raise RuntimeError(f"the gpu preset needs CUDA; torch {torch.__version__} picked {device}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = load_train_config("nih", {
        "data_root": str(Path(payload["cache"]).parent / "no_images"), "weights": "none", "batch_size": batch_size,
        "input_size": payload["input_size"], "cache_size": payload["cache_size"], "amp": payload["amp"],
        "channels_last": channels_last, "num_workers": payload["workers"], "device": str(device)})
    torch.manual_seed(0)
    model = (tiny_network() if network_kind == "tiny" else build_model("none")).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return {"device": device, "config": config, "model": model, "state": TrainingState.create(config, model, device),
            "criterion": nn.BCEWithLogitsLoss(), "cache": ImageCache.open(payload["cache"])}


def cached_films(cache: Any, names: list[str], labels: Any, needed: int) -> Any:
    """A dataset over ``names``, repeated until it holds ``needed`` films (rows are read again, as in later epochs)."""
    import numpy as np

    from cxrutils.engine.loader import CachedImageDataset

    repeats = max(1, -(-needed // len(names)))
    return CachedImageDataset(cache, names * repeats, np.tile(labels, (repeats, 1)))


def training_rates(payload: dict[str, Any], spec: dict[str, Any], compile_settings: dict[str, Any] | None,
                   reporter: Reporter) -> dict[str, Any]:
    """One configuration: img/s on batches on the device, then (``data_fed``) fed by the cache's DataLoader."""
    import torch

    from cxrutils.engine.loader import make_loader
    from cxrutils.engine.network_input import prepare_batch
    from cxrutils.engine.runtime import autocast_dtype
    from cxrutils.engine.train import training_step

    batch, channels_last = spec["batch_size"], spec["layout"] == "channels_last"
    setup = training_setup(payload, batch, channels_last, compile_settings["network"] if compile_settings else
                           "densenet121")
    device, config, model, state, cache = (setup["device"], setup["config"], setup["model"], setup["state"],
                                           setup["cache"])
    amp_dtype = autocast_dtype(device, config.amp)
    generator = torch.Generator(device=device).manual_seed(0)
    network = model
    counters = None
    if compile_settings:
        import torch._dynamo

        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        network = torch.compile(model, backend=compile_settings["backend"], dynamic=False)

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"]) if counters is not None else 0

    train_names = film_names(payload["films"])[payload["val_films"]:]
    labels = film_labels(payload["films"])[payload["val_films"]:]
    in_memory = []
    for k in range(4):  # a few distinct batches, cycled
        rows = cache.rows(train_names[k * batch:(k + 1) * batch] or train_names[:batch])
        in_memory.append((torch.from_numpy(cache.pixels[rows]).unsqueeze(1).to(device),
                          torch.from_numpy(labels[:len(rows)]).to(device)))

    def step(pixels: Any, targets: Any) -> None:
        images = prepare_batch(pixels, device, config.input_size, config.channels_last, config.augment, generator)
        training_step(network, images, targets.to(device, non_blocking=True), setup["criterion"], state.optimizer,
                      state.scaler, amp_dtype)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs_before = graphs()
    marks: dict[str, int] = {}

    def in_memory_step(i: int) -> None:
        if i == payload["warmup_steps"]:
            marks["after_warmup"] = graphs()
        step(*in_memory[i % len(in_memory)])
        if i == 0:
            marks["after_first_step"] = graphs()

    progress: dict[str, Any] = {}
    if compile_settings:  # on disk before the compilation starts: a timeout then still bounds its length
        progress = {"phase": "compiling (the first step)", "first_step_started_unix": time.time()}
        reporter.set(spec["name"], progress)

    def warmup_progress(seconds: list[float]) -> None:
        if compile_settings:
            reporter.set(spec["name"], {**progress, "phase": "warm-up", "warmup_seconds_so_far": list(seconds)})

    figures = steady_rate(in_memory_step, batch, payload, device, on_warmup_step=warmup_progress)
    figures["batch_size"], figures["layout"] = batch, spec["layout"]
    figures["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if compile_settings:
        after_first, after_warmup = marks["after_first_step"], marks.get("after_warmup", marks["after_first_step"])
        figures.update(
            backend=compile_settings["backend"], network=compile_settings["network"],
            compile_seconds=figures["warmup_excess_seconds"], graphs=graphs() - graphs_before,
            recompiles_in_warmup=after_warmup - after_first, recompiles_in_timed_steps=graphs() - after_warmup,
            graph_breaks=int(sum(counters["graph_break"].values())))
    reporter.set(spec["name"], figures)
    if spec.get("data_fed"):
        graphs_before_fed = graphs()
        needed = batch * (payload["warmup_steps"] + payload["windows"] * payload["steps_per_window"])
        loader = make_loader(cached_films(cache, train_names, labels, needed), batch_size=batch, shuffle=True,
                             seed=0, num_workers=payload["workers"], drop_last=True)
        batches = iter(loader)
        fed = steady_rate(lambda i: step(*next(batches)), batch, payload, device)
        fed["workers"] = payload["workers"]
        figures["data_fed"] = fed
        figures["data_fed_over_in_memory"] = fed["img_per_s"] / figures["img_per_s"]
        if compile_settings:
            figures["recompiles_data_fed"] = graphs() - graphs_before_fed
        reporter.set(spec["name"], figures)
    return figures


def child_train(payload: dict[str, Any], reporter: Reporter) -> None:
    import gc

    import torch

    for spec in payload["configs"]:
        try:
            training_rates(payload, spec, payload["compile"], reporter)
        except Exception as error:  # one configuration failing (out of memory, say) leaves the others measured
            reporter.set(spec["name"], {"error": f"{type(error).__name__}: {error}"})
            reporter.error(f"{spec['name']}: {type(error).__name__}: {str(error)[:500]}")
            traceback.print_exc()
        gc.collect()  # the last configuration's model, optimizer and loader workers, before the next one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def child_tail(payload: dict[str, Any], reporter: Reporter) -> None:
    """Validation and checkpoint seconds apart, and a checkpoint round trip from the device."""
    import torch
    from torch import nn

    from cxrutils.engine import run_folder
    from cxrutils.engine.loader import CachedImageDataset, make_loader
    from cxrutils.engine.network_input import prepare_batch
    from cxrutils.engine.runtime import Distributed, autocast_dtype, rng_state
    from cxrutils.engine.train import training_step, validate

    setup = training_setup(payload, payload["batch_size"], True)
    device, config, model, state, cache = (setup["device"], setup["config"], setup["model"], setup["state"],
                                           setup["cache"])
    names = film_names(payload["films"])
    labels = film_labels(payload["films"])
    val_names, val_labels = names[:payload["val_films"]], labels[:payload["val_films"]]
    # One training step first, so the checkpoint holds AdamW's moments as an epoch's does.
    rows = cache.rows(names[payload["val_films"]:payload["val_films"] + payload["batch_size"]])
    images = prepare_batch(torch.from_numpy(cache.pixels[rows]).unsqueeze(1), device, config.input_size,
                           config.channels_last, config.augment, torch.Generator(device=device).manual_seed(0))
    targets = torch.from_numpy(labels[:len(rows)]).to(device)
    training_step(model, images, targets, setup["criterion"], state.optimizer, state.scaler,
                  autocast_dtype(device, config.amp))
    synchronize(device)

    val_loader = make_loader(CachedImageDataset(cache, val_names, val_labels), batch_size=payload["batch_size"],
                             shuffle=False, seed=0, num_workers=payload["workers"])
    criterion = nn.BCEWithLogitsLoss()  # on the CPU, as training computes the validation loss
    seconds = []
    for _ in range(payload["validation_repeats"]):
        synchronize(device)
        started = time.perf_counter()
        validate(model, val_loader, criterion, config, device, Distributed())
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    steady = statistics.median(seconds[1:] or seconds)
    reporter.set("validation_films", len(val_names))
    reporter.set("validation_seconds", seconds)
    reporter.set("validation_seconds_per_film", steady / len(val_names))
    reporter.set("validation_workers", payload["workers"])

    folder = Path(payload["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / run_folder.LAST_CHECKPOINT
    saves = []
    for _ in range(payload["checkpoint_repeats"]):
        synchronize(device)
        started = time.perf_counter()
        checkpoint = state.to_checkpoint(config, [rng_state()], cache.fingerprint)
        run_folder.save_checkpoint(path, checkpoint)
        saves.append(time.perf_counter() - started)
    reporter.set("checkpoint_save_seconds", statistics.median(saves))
    reporter.set("checkpoint_save_seconds_each", saves)
    reporter.set("checkpoint_mb", round(path.stat().st_size / 1e6, 1))

    started = time.perf_counter()
    loaded = run_folder.load_checkpoint(path, map_location="cpu")  # as training resumes: on the CPU, then moved
    restored = training_setup(payload, payload["batch_size"], True)["state"]
    restored.load_checkpoint(loaded, Distributed())
    synchronize(device)
    reporter.set("checkpoint_load_seconds", time.perf_counter() - started)

    def same(a: Any, b: Any) -> bool:
        return torch.equal(a.cpu(), b.cpu()) if torch.is_tensor(a) and torch.is_tensor(b) else a == b

    model_states = list(zip(model.state_dict().values(), restored.model.state_dict().values()))
    saved_moments = list(state.optimizer.state_dict()["state"].values())
    restored_moments = list(restored.optimizer.state_dict()["state"].values())
    same_model = all(same(a, b) for a, b in model_states)
    same_optimizer = len(saved_moments) == len(restored_moments) > 0 and all(
        a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
        for a, b in zip(saved_moments, restored_moments))
    reporter.set("restored_identical", bool(same_model and same_optimizer))
    path.unlink(missing_ok=True)
    if not (same_model and same_optimizer):
        reporter.error("a checkpoint saved from the device did not restore the model and optimizer exactly")


def fake_run(folder: Path, payload: dict[str, Any]) -> Path:
    """A run folder of the nih profile's shape at the preset's sizes: random weights, thresholds calling Effusion."""
    from cxrutils.engine import run_folder
    from cxrutils.engine.model import ChestXrayDenseNet
    from cxrutils.labels import FINDINGS
    from cxrutils.settings import load_train_config

    config = load_train_config("nih", {"data_root": str(folder / "no_images"), "runs_dir": str(folder / "runs"),
                                       "name": "gpu_check", "weights": "none", "input_size": payload["input_size"],
                                       "cache_size": payload["cache_size"]})
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    run_folder.save_checkpoint(run_dir / run_folder.BEST_CHECKPOINT, {
        "model": ChestXrayDenseNet().state_dict(), "config": config.to_dict(), "label_order": list(FINDINGS),
        "epoch": 0})
    run_folder.write_config(run_dir, {**config.to_dict(), "synthetic": True})
    chosen = {finding: 0.0 if finding == "Effusion" else 1.5 for finding in FINDINGS}
    run_folder.write_thresholds(run_dir, {"youden": chosen, "max_f1": chosen})
    return run_dir


def child_inference(payload: dict[str, Any], reporter: Reporter) -> None:
    """films/s of the project's inference path on phantom PNGs, with 0 and the default loader workers.

    The default is ``cxrutils infer``'s own (``scoring.default_workers`` for these films and
    this batch, from the cores), not the training loader's.
    """
    import numpy as np
    import torch
    from PIL import Image

    from cxrutils.demo.phantoms import render_phantom
    from cxrutils.inference.scoring import default_workers as inference_workers
    from cxrutils.inference.scoring import infer_films, load_inference_model

    folder = Path(payload["folder"])
    run_dir = fake_run(folder, payload)
    films = folder / "films"
    films.mkdir(parents=True, exist_ok=True)
    base = render_phantom(["Effusion"], rng=np.random.default_rng(0), size=payload["film_size"]).pixels
    started = time.perf_counter()
    for k in range(payload["films"]):  # one rendering, shifted: rendering is not what is measured
        Image.fromarray(np.roll(base, 8 * k, axis=1)).save(films / f"{k:08d}_000.png")
    reporter.set("films", payload["films"])
    reporter.set("film_size", payload["film_size"])
    reporter.set("png_writing_seconds", time.perf_counter() - started)
    if payload["device"] == "cuda":
        torch.backends.cudnn.benchmark = True
    model = load_inference_model(run_dir, device="cuda" if payload["device"] == "cuda" else "cpu")
    reporter.set("device", str(model.device))
    default = inference_workers(payload["films"], payload["batch_size"])
    reporter.set("default_workers", default)
    for workers in sorted({0, default}):
        def run(workers: int = workers) -> Any:
            # The default as infer passes it (None), so infer_films itself picks the count recorded above.
            return infer_films(model, [films], batch_size=payload["batch_size"],
                               num_workers=None if workers == default else workers, with_gradcam=False,
                               keep_films=False, show_progress=False)

        if payload["warmup"]:
            run()  # warm-up: loader workers, cuDNN's search, the page cache
        result = run()  # the probabilities come back to the CPU: the GPU's work is finished
        reporter.set(f"workers_{workers}", {"workers": workers, "default": workers == default,
                                            "batch_size": payload["batch_size"],
                                            "films_per_s": result.n_scored / result.seconds["total"],
                                            "scored": result.n_scored, "seconds": result.seconds["total"]})


def start_group_of_one(device: Any) -> str:
    """A process group of this one process (torchrun's variables name it), so DDP runs: NCCL on a GPU, gloo on a CPU.

    ``runtime.start_process_group`` starts none for one process, as training needs none there.
    """
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return backend


def child_ddp(payload: dict[str, Any], reporter: Reporter) -> None:
    """One rank under torchrun: training steps on batches on the device, then fed by the loader.

    The network is ``training_network``'s: inside DDP for several processes, without it for
    one, as training runs them. With ``force_ddp_after`` one process is then measured again
    inside DDP over a process group of one (``through_ddp``: DDP's own cost, and DDP and NCCL
    run on a box with one GPU); with ``force_ddp`` it runs only that way (``forced_ddp``).
    ``compile`` compiles around DDP, as training does (``compiled_ddp``).
    """
    import torch
    import torch.distributed as dist

    from cxrutils.engine.loader import make_loader
    from cxrutils.engine.network_input import prepare_batch
    from cxrutils.engine.runtime import Distributed, autocast_dtype, select_device, start_process_group
    from cxrutils.engine.train import training_network, training_step

    ddp = Distributed.from_environment()
    device = select_device("auto" if payload["device"] == "cuda" else payload["device"], ddp)
    if device.type == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(payload.get("torch_threads") or max(1, (os.cpu_count() or 1) // ddp.world_size))
    start_process_group(ddp, device)
    batch, compile_settings = payload["batch_size"], payload.get("compile")
    forced = not ddp.enabled and payload.get("force_ddp", False)
    if forced:
        start_group_of_one(device)
    setup = training_setup(payload, batch, True, compile_settings["network"] if compile_settings else "densenet121",
                           ddp=ddp)
    config, model, state, cache = setup["config"], setup["model"], setup["state"], setup["cache"]
    amp_dtype = autocast_dtype(device, config.amp)
    generator = torch.Generator(device=device).manual_seed(ddp.rank)
    names = film_names(payload["films"])[payload["val_films"]:]
    labels = film_labels(payload["films"])[payload["val_films"]:]
    shard = names[ddp.rank::ddp.world_size]
    rows = cache.rows(shard[:batch])
    pixels = torch.from_numpy(cache.pixels[rows]).unsqueeze(1).to(device)
    targets = torch.from_numpy(labels[:len(rows)]).to(device)
    images_per_step = batch * ddp.world_size
    feeds = 2 if payload.get("force_ddp_after") and not ddp.enabled else 1
    steps = payload["warmup_steps"] + payload["windows"] * payload["steps_per_window"]
    # One loader for every data-fed measurement: its workers start once.
    loader = make_loader(cached_films(cache, names, labels, images_per_step * steps * feeds), batch_size=batch,
                         shuffle=True, seed=0, num_workers=payload["workers"], drop_last=True,
                         distributed=ddp.enabled or forced)
    batches = iter(loader)

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier()

    def measure(network: Any, record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        def step(pixels: Any, targets: Any) -> None:
            images = prepare_batch(pixels, device, config.input_size, config.channels_last, config.augment, generator)
            training_step(network, images, targets.to(device, non_blocking=True), setup["criterion"],
                          state.optimizer, state.scaler, amp_dtype)

        figures: dict[str, Any] = {}
        figures["in_memory"] = steady_rate(lambda i: step(pixels, targets), images_per_step, payload, device, barrier)
        record(figures)
        figures["data_fed"] = steady_rate(lambda i: step(*next(batches)), images_per_step, payload, device, barrier)
        record(figures)
        return figures

    def report(figures: dict[str, Any]) -> None:
        if ddp.is_main:
            reporter.replace(figures)

    figures: dict[str, Any] = {"processes": ddp.world_size, "batch_per_rank": batch,
                               "workers_per_rank": payload["workers"], "ddp": forced or ddp.enabled,
                               "forced_ddp": forced, "backend": dist.get_backend() if dist.is_initialized() else None}
    network = training_network(model, ddp, device, force_ddp=forced)
    if compile_settings:
        figures.update(compiled_ddp(network, compile_settings, measure, figures, report, payload))
    else:
        figures.update(measure(network, lambda found: report({**figures, **found})))
    report(figures)
    if payload.get("force_ddp_after") and not ddp.enabled:
        backend = start_group_of_one(device)
        inside = training_network(model, ddp, device, force_ddp=True)
        through: dict[str, Any] = {"backend": backend}
        through.update(measure(inside, lambda found: report({**figures, "through_ddp": {**through, **found}})))
        for feed in ("in_memory", "data_fed"):
            through[f"{feed}_over_without_ddp"] = through[feed]["img_per_s"] / figures[feed]["img_per_s"]
        figures["through_ddp"] = through
        report(figures)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def compiled_ddp(network: Any, compile_settings: dict[str, Any], measure: Callable[..., dict[str, Any]],
                 figures: dict[str, Any], report: Callable[[dict[str, Any]], None],
                 payload: dict[str, Any]) -> dict[str, Any]:
    """``measure`` on ``network`` compiled, with the compilation's seconds, graphs, breaks and recompiles.

    ``recompiles_data_fed``: graphs compiled for the loader's batches after those on the device (0 expected: the
    loader drops the last, short batch, so every batch has one shape).
    """
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = torch.compile(network, backend=compile_settings["backend"], dynamic=False)
    settings = {"backend": compile_settings["backend"], "network": compile_settings["network"]}
    # On disk before the compilation starts: a timeout then still says how long it compiled.
    report({**figures, "compile": {**settings, "phase": "compiling (the first step)",
                                   "first_step_started_unix": time.time()}})
    graphs_after: list[int] = []  # after the steps on the device, then after those fed by the loader

    def record(partial: dict[str, Any]) -> None:
        graphs_after.append(int(counters["stats"]["unique_graphs"]))
        report({**figures, **partial})

    found = measure(compiled, record)
    in_memory = found["in_memory"]
    return {**found, "compile": {**settings, "compile_seconds": in_memory["warmup_excess_seconds"],
                                 "first_step_seconds": in_memory["first_step_seconds"], "graphs": graphs_after[-1],
                                 "recompiles_data_fed": graphs_after[-1] - graphs_after[0],
                                 "graph_breaks": int(sum(counters["graph_break"].values())),
                                 "warmup_steps": payload["warmup_steps"]}}


CHILDREN: dict[str, Callable[[dict[str, Any], Reporter], None]] = {
    "cache": child_cache, "train": child_train, "tail": child_tail, "inference": child_inference, "ddp": child_ddp,
}


def run_child(kind: str, payload: str, result: Path) -> int:
    die_with_parent()
    settings = json.loads(payload)
    if settings.get("torch_threads"):
        import torch

        torch.set_num_threads(settings["torch_threads"])
    CHILDREN[kind](settings, Reporter(result))
    return 0


def run_torchrun(arguments: list[str]) -> int:
    """torchrun's launcher in a process that dies with the check (its workers die with it in turn)."""
    die_with_parent()
    os.environ[PARENT_VARIABLE] = str(os.getpid())  # torchrun's workers are this process's children
    from torch.distributed.run import main as torchrun

    torchrun(arguments)
    return 0


# --------------------------------------------------------------------------- the command


def _timeout_override(text: str) -> tuple[str, float]:
    step, _, seconds = text.partition("=")
    if step not in STEPS or not seconds:
        raise argparse.ArgumentTypeError(f"--timeout takes STEP=SECONDS with STEP one of {', '.join(STEPS)}; "
                                         f"got {text!r}")
    return step, float(seconds)


def _steps(text: str) -> list[str]:
    steps = [step.strip() for step in text.split(",") if step.strip()]
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    return steps


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for all the steps; steps that cannot start in it are skipped (default: the "
                             f"preset's, gpu {PRESETS['gpu']['budget_s']:g}, cpu {PRESETS['cpu']['budget_s']:g})")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "gpu_check.json", help="the JSON report")
    parser.add_argument("--work", type=Path, default=DATA_DIR / "gpu_check",
                        help="the image cache, logs and scratch files")
    parser.add_argument("--only", type=_steps, default=None, help=f"run only these steps (of {', '.join(STEPS)})")
    parser.add_argument("--timeout", type=_timeout_override, action="append", default=[], metavar="STEP=SECONDS",
                        help="override one step's time limit (repeatable)")
    args = parser.parse_args(argv)
    args.timeout = dict(args.timeout)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    return args


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted(f"stopped by signal {signum} (an outer timeout?) after the steps above")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--torchrun"]:
        return run_torchrun(argv[1:])
    if argv[:1] == ["--child"]:
        child = argparse.ArgumentParser()
        child.add_argument("--child", choices=sorted(CHILDREN))
        child.add_argument("--payload")
        child.add_argument("--result", type=Path)
        known = child.parse_args(argv)
        return run_child(known.child, known.payload, known.result)

    args = parse_arguments(argv)
    check = Check(args)
    check.work.mkdir(parents=True, exist_ok=True)
    check.report["machine"] = machine()
    check.save()
    print(f"machine: {json.dumps({k: v for k, v in check.report['machine'].items() if k != 'code'})}", flush=True)
    if args.preset == "gpu" and not check.report["machine"]["cuda_usable"]:
        from cxrutils.engine.runtime import GPUUnusableError, check_gpu_usable

        try:
            check_gpu_usable()
            why = "torch sees no CUDA device (nvidia-smi finds no GPU either)"
        except GPUUnusableError as error:
            why = str(error)
        check.report["error"] = f"no usable GPU: {why}. Run --preset cpu on a machine without one."
        check.save()
        print(check.report["error"], flush=True)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        for name in check.steps:
            check.run_step(name, STEP_FUNCTIONS[name])
    except Interrupted as interrupted:
        check.report["error"] = str(interrupted)
        check.save()
        print(interrupted, flush=True)
        return 124
    check.report["finished"] = True
    check.save()
    print_summary(check.report["summary"])
    steps = check.report["steps"]
    failed = [name for name, entry in steps.items() if entry["status"] in (ERROR, TIMEOUT)]
    skipped = [name for name, entry in steps.items() if entry["status"] == SKIPPED_BUDGET]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'ok'}"
          f"{' (' + SKIPPED_BUDGET + ': ' + ', '.join(skipped) + ')' if skipped else ''} in {check.elapsed():.0f} s "
          f"-> {check.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

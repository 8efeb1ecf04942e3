"""One-shot check of a GPU box: speed, training, kill and resume, and torchrun, into reports/gpu_check.json.

    make gpu-check                                   # = python benchmarks/gpu_check.py --preset gpu
    python benchmarks/gpu_check.py --preset cpu      # the same steps, small, on a CPU (CI-sized)

From a fresh clone with the wheels cached, in about 8 minutes on one H100/H200:

1. the machine: GPU name, driver, torch, CUDA and cuDNN versions;
2. a phantom root of 1024 px PNGs in the NIH layout (a few thousand films, built once);
3. the training benchmark (benchmarks/bench_training.py) eager and compiled: img/s of the real
   epoch loop, data-fed / in-memory, and the end-of-epoch tail;
4. a 2-epoch training run at 224 px;
5. the same run killed (SIGKILL, from outside) in epoch 2 and resumed: its history against
   the uninterrupted one, within GPU nondeterminism;
6. ``torchrun --nproc_per_node=<every GPU>`` for one epoch (2 gloo processes without a GPU).

Everything goes into ``reports/gpu_check.json``; the command prints a summary and exits 1
when a step fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_training  # noqa: E402  (the benchmark beside this script)

from cxrutils.engine import run_folder  # noqa: E402
from cxrutils.engine.runtime import nvidia_driver  # noqa: E402
from cxrutils.paths import DATA_DIR, PROJ_ROOT, REPORTS_DIR  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # CI-sized: the benchmark's cpu preset at 32 px, one repeat; 4 training batches an epoch.
    "cpu": {"bench": "cpu", "bench_overrides": {"input_size": 32, "cache_size": 64, "repeats": 1},
            "train": {"cache_size": 64, "input_size": 32, "batch_size": 16, "num_workers": 0,
                      "amp": False, "channels_last": False, "limit_train_batches": 4},
            "compile": [False], "tolerance": {"train_loss": 1e-6, "val_auroc_mean": 1e-6}},
    "gpu": {"bench": "gpu", "bench_overrides": {}, "train": {"cache_size": 256, "input_size": 224, "batch_size": 128, "num_workers": 8,
                                      "amp": True, "channels_last": True},
            "compile": [False, True], "tolerance": {"train_loss": 0.02, "val_auroc_mean": 0.02}},
}
# cuDNN's fastest convolutions are not bitwise deterministic: a resumed GPU run matches the uninterrupted one
# to these relative (loss) and absolute (AUROC) differences, not exactly. On the CPU it matches exactly.


def machine() -> dict[str, Any]:
    found = nvidia_driver()
    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpus": torch.cuda.device_count(),
        "driver": found[0] if found else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }


def train_command(settings: dict[str, Any], root: Path, name: str, runs: Path, cache: Path, epochs: int,
                  resume: bool = False, processes: int | None = None) -> list[str]:
    """The training command line; with ``processes``, under torchrun (even for one GPU: it is torchrun's path)."""
    sets = {**settings, "data_root": str(root), "name": name, "runs_dir": str(runs), "cache_dir": str(cache),
            "weights": "none", "epochs": epochs, "early_stopping_patience": epochs}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes else [sys.executable])
    command = [*launcher, "-m", "cxrutils", "train", "--config", "nih"]
    for key, value in sets.items():
        command += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return command + (["--resume"] if resume else [])


def run(command: list[str], timeout: float) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PROJ_ROOT, capture_output=True, text=True, timeout=timeout)
    return done.returncode, time.perf_counter() - started, (done.stdout + done.stderr)[-4000:]


def kill_during_epoch_2(command: list[str], run_dir: Path, timeout: float) -> str:
    """Start training, wait until epoch 1 is recorded, then SIGKILL the whole process group."""
    process = subprocess.Popen(command, cwd=PROJ_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    history = run_dir / run_folder.HISTORY_JSON
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if history.is_file() and len(json.loads(history.read_text() or "[]")) >= 1:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return "killed in epoch 2"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return "finished before it could be killed" if process.returncode == 0 else f"exited {process.returncode}"


def compare_histories(resumed: Path, whole: Path, tolerance: dict[str, float]) -> dict[str, Any]:
    a, b = run_folder.read_history(resumed), run_folder.read_history(whole)
    same_epochs = a["epoch"].tolist() == b["epoch"].tolist()
    differences = {column: float((a[column] - b[column]).abs().max()) for column in tolerance} if same_epochs else {}
    scale = {"train_loss": float(b["train_loss"].abs().max())}
    within = same_epochs and all(
        differences[column] <= limit * (scale.get(column, 1.0) if column == "train_loss" else 1.0)
        for column, limit in tolerance.items())
    return {"epochs": a["epoch"].tolist(), "same_epochs": same_epochs, "max_differences": differences,
            "tolerance": tolerance, "within_tolerance": within}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "gpu_check.json")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    report: dict[str, Any] = {"preset": args.preset, "machine": machine(), "steps": {}}
    started = time.perf_counter()
    print(f"machine: {report['machine']}", flush=True)

    bench_settings = dict(bench_training.PRESETS[preset["bench"]], **preset["bench_overrides"], device="auto",
                          compile=preset["compile"], preset=preset["bench"])
    root = bench_training.bench_root(bench_settings)
    report["steps"]["benchmark"] = bench_training.run_benchmark(bench_settings)

    work = DATA_DIR / "gpu_check"
    shutil.rmtree(work / "runs", ignore_errors=True)
    runs, cache = work / "runs", work / f"cache_{preset['train']['cache_size']}"
    train = preset["train"]
    code, seconds, tail = run(train_command(train, root, "whole", runs, cache, epochs=2), timeout=1200)
    report["steps"]["train_2_epochs"] = {"ok": code == 0, "seconds": round(seconds, 1),
                                         "history": run_folder.read_history(runs / "whole").to_dict(orient="records")
                                         if code == 0 else None, "output": tail if code else ""}
    print(f"2 epochs: {'ok' if code == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)

    how = kill_during_epoch_2(train_command(train, root, "killed", runs, cache, epochs=2), runs / "killed", 1200)
    code, seconds, tail = run(train_command(train, root, "killed", runs, cache, epochs=2, resume=True), 1200)
    resumed = compare_histories(runs / "killed", runs / "whole", preset["tolerance"]) if code == 0 else {}
    report["steps"]["kill_and_resume"] = {"kill": how, "resume_ok": code == 0, **resumed,
                                          "output": tail if code else ""}
    print(f"kill and resume: {how}; resumed {'ok' if code == 0 else 'FAILED'}; {resumed}", flush=True)

    # Every GPU (NCCL); without one, two CPU processes (gloo), so the step runs on any machine.
    gpus = torch.cuda.device_count()
    processes, backend = (gpus, "nccl") if gpus else (2, "gloo")
    code, seconds, tail = run(train_command(train, root, "torchrun", runs, cache, epochs=1, processes=processes), 1200)
    report["steps"]["torchrun"] = {"processes": processes, "backend": backend, "ok": code == 0,
                                   "seconds": round(seconds, 1), "output": tail if code else ""}
    print(f"torchrun, {processes} process(es) ({backend}): {'ok' if code == 0 else 'FAILED'} in {seconds:.0f} s",
          flush=True)

    report["seconds"] = round(time.perf_counter() - started, 1)
    steps = report["steps"]
    report["ok"] = bool(steps["train_2_epochs"]["ok"] and steps["kill_and_resume"].get("within_tolerance")
                        and steps["torchrun"]["ok"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"{'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s -> {args.out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

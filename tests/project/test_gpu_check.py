"""benchmarks/gpu_check.py, checked on the CPU: its cpu preset end to end, a kill mid-run, a step that times out.

A GPU lease is short: the check must leave a readable JSON with every finished figure
whatever stops it, record a step that fails or overruns and go on, and leave no process
behind. These tests run it as a subprocess, as a lease would (about a minute in all on 2
cores; most of it the cpu preset's run in the first test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pytest import approx

from cxrutils.inference.scoring import default_workers as inference_workers
from cxrutils.paths import PROJ_ROOT

SCRIPT = PROJ_ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _command(tmp_path: Path, *options: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--preset", "cpu", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "gpu_check.json"), *options]


def _run(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    completed = subprocess.run(_command(tmp_path, *options), cwd=PROJ_ROOT, capture_output=True, text=True,
                               timeout=300)
    return completed, json.loads((tmp_path / "gpu_check.json").read_text())


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes running with ``text`` in their arguments (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            if text in command:
                found.append(command)
    return found


def test_the_cpu_preset_runs_every_step_and_records_the_machine_first(tmp_path):
    completed, report = _run(tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert report["finished"] is True and report["preset"] == "cpu"
    keys = list(report)
    assert keys.index("machine") < keys.index("steps")
    machine = report["machine"]
    assert {"gpu", "gpus", "driver", "torch", "cuda", "cudnn", "cpus"} <= set(machine)
    assert machine["torch"] and machine["cpus"] >= 1
    steps = report["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    statuses = {name: entry["status"] for name, entry in steps.items()}
    assert statuses.pop("train_compiled_large").startswith("not applicable: the cpu preset")
    assert statuses == {name: "ok" for name in statuses}

    eager = steps["train_eager"]["figures"]
    assert set(eager) == {"b4_channels_last", "b8_channels_last", "b4_nchw", "b8_nchw"}
    for figures in eager.values():
        assert figures["img_per_s"] > 0 and len(figures["window_img_per_s"]) == 2
        assert figures["peak_gib"] is None  # GPU memory: not applicable on a CPU
    assert eager["b4_channels_last"]["data_fed"]["img_per_s"] > 0
    assert eager["b4_channels_last"]["data_fed_over_in_memory"] > 0
    compiled = steps["train_compiled"]["figures"]["b4_channels_last"]
    assert compiled["graphs"] >= 1 and compiled["recompiles_in_timed_steps"] == 0
    tail = steps["tail"]["figures"]
    assert tail["restored_identical"] is True
    assert tail["validation_films"] == 64 and tail["validation_seconds_per_film"] > 0
    assert tail["checkpoint_save_seconds"] > 0 and tail["checkpoint_mb"] > 10  # AdamW's moments are in it
    inference = steps["inference"]["figures"]
    assert inference["workers_0"]["scored"] == inference["films"] == 8
    # infer's own default for 8 films in batches of 4 (a worker per core but one, none beyond the batches), not 0.
    default = inference_workers(8, 4)
    assert inference["default_workers"] == default and inference[f"workers_{default}"]["default"] is True
    # One process as training runs it (no DDP), then the same process through DDP over a group of one.
    torchrun = steps["torchrun"]["figures"]
    assert torchrun["process_counts"] == [1]
    alone = torchrun["n1"]
    assert alone["ddp"] is False and alone["backend"] is None and alone["in_memory"]["images_per_step"] == 4
    through = alone["through_ddp"]
    assert through["backend"] == "gloo" and through["data_fed"]["img_per_s"] > 0
    assert through["data_fed_over_without_ddp"] == approx(through["data_fed"]["img_per_s"]
                                                          / alone["data_fed"]["img_per_s"])
    # Compiled around DDP, one process forced through it: what a box with one GPU runs.
    compiled_ddp = steps["torchrun_compiled"]["figures"]
    assert compiled_ddp["processes"] == 1 and compiled_ddp["backend"] == "gloo" and compiled_ddp["ddp"] is True
    assert compiled_ddp["forced_ddp"] is True and compiled_ddp["in_memory"]["images_per_step"] == 4
    assert compiled_ddp["compile"]["graphs"] >= 1 and compiled_ddp["compile"]["recompiles_data_fed"] == 0
    assert compiled_ddp["data_fed"]["img_per_s"] > 0

    summary = report["summary"]
    epoch = summary["nih_epoch"]["eager"]
    assert epoch["epoch_seconds"] > epoch["train_seconds"] > 0 and 0 < epoch["tail_share"] < 1
    one = summary["torchrun_scaling"]["data_fed"]["1"]
    assert one["img_per_s"] == alone["data_fed"]["img_per_s"] and one["efficiency"] == approx(1.0)
    validation, checkpoint = 8_600 * tail["validation_seconds_per_film"], tail["checkpoint_save_seconds"]
    train = 78_000 / one["img_per_s"]
    assert one["tail_share"] == approx((validation + checkpoint) / (train + validation + checkpoint))
    assert summary["torchrun_scaling"]["one_process_through_ddp"]["backend"] == "gloo"
    compared = summary["compiled_ddp"]["data_fed"]
    assert compared["compiled_over_eager"] == approx(compiled_ddp["data_fed"]["img_per_s"]
                                                     / through["data_fed"]["img_per_s"])
    assert summary["compile_decision"]["verdict"].startswith("not applicable")
    # The cache was written in the image cache's own format: the project opens it as any built cache.
    from cxrutils.data.cache import ImageCache

    cache = ImageCache.open(tmp_path / "work" / "cache_64")
    assert len(cache) == 256 and cache.usable.all() and cache.pixels.shape == (256, 64, 64)


def test_a_check_killed_mid_run_leaves_a_readable_json_with_the_finished_figures_and_no_process(tmp_path):
    out = tmp_path / "gpu_check.json"
    process = subprocess.Popen(_command(tmp_path), cwd=PROJ_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    seen = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if out.is_file():
                seen = json.loads(out.read_text())  # every version on disk parses: written whole, then renamed
                if any(entry["status"] == "ok" for entry in seen["steps"].values()):
                    break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert seen is not None and seen["steps"]["cache"]["status"] == "ok", seen
    after = json.loads(out.read_text())
    assert after["finished"] is False and after["machine"]["torch"]
    assert after["steps"]["cache"] == seen["steps"]["cache"]  # the finished step's figures, intact
    assert after["steps"]["cache"]["figures"]["films"] == 256
    assert all(entry["status"] == "running" for name, entry in after["steps"].items() if name != "cache")
    # The step that was running dies with the check (its child is killed when its parent dies).
    deadline = time.monotonic() + 20
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_step_that_times_out_is_recorded_and_the_next_step_still_runs(tmp_path):
    completed, report = _run(tmp_path, "--only", "train_eager,inference", "--timeout", "train_eager=1")
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    steps = report["steps"]
    assert list(steps) == ["train_eager", "inference"]
    assert steps["train_eager"]["status"] == "timeout" and steps["train_eager"]["timeout_s"] == 1
    assert "stopped after 1 s, the step's limit" in steps["train_eager"]["error"]
    assert steps["inference"]["status"] == "ok" and steps["inference"]["figures"]["workers_0"]["scored"] == 8
    assert report["finished"] is True
    assert "FAILED: train_eager" in completed.stdout
    assert _processes_mentioning(str(tmp_path)) == []  # the timed-out step's child was killed, not left behind

    # No budget left: every step is skipped, and says why.
    completed, report = _run(tmp_path, "--only", "cache,tail", "--budget-s", "0")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert [entry["status"] for entry in report["steps"].values()] == ["skipped: budget"] * 2


def _gpu_report(eager_fed: float | None, compiled_fed: float | None, compile_seconds: float | None) -> dict:
    def trained(fed: float | None, **extra: float | None) -> dict:
        return {"figures": {"b96_channels_last": {"img_per_s": 1000.0, "data_fed_over_in_memory": 0.9, **extra,
                                                  "data_fed": {"img_per_s": fed}}}} if fed else {"figures": {}}

    return {"preset": "gpu", "steps": {
        "train_eager": trained(eager_fed), "train_compiled": trained(compiled_fed, compile_seconds=compile_seconds),
        "tail": {"figures": {"validation_seconds_per_film": 0.001, "checkpoint_save_seconds": 0.5}},
        "torchrun": {"figures": {"n1": {"in_memory": {"img_per_s": 1000.0}, "data_fed": {"img_per_s": 900.0},
                                        "through_ddp": {"backend": "nccl", "data_fed": {"img_per_s": 880.0},
                                                        "data_fed_over_without_ddp": 880.0 / 900.0}},
                                 "n2": {"in_memory": {"img_per_s": 1800.0}, "data_fed": {"img_per_s": 1500.0}}}},
        "torchrun_compiled": {"figures": {"processes": 1, "forced_ddp": True, "data_fed": {"img_per_s": 1100.0}}}}}


def test_the_summary_extrapolates_an_nih_epoch_and_decides_on_compile_by_its_rule():
    summary = gpu_check.summarise(_gpu_report(eager_fed=1000.0, compiled_fed=1300.0, compile_seconds=12.0))
    eager = summary["nih_epoch"]["eager"]
    assert eager["train_seconds"] == approx(78.0) and summary["nih_epoch"]["validation_seconds"] == approx(8.6)
    assert eager["epoch_seconds"] == approx(78.0 + 8.6 + 0.5)
    assert eager["tail_share"] == approx((8.6 + 0.5) / (78.0 + 8.6 + 0.5))
    scaling = summary["torchrun_scaling"]
    assert scaling["in_memory"]["2"]["efficiency"] == approx(0.9)
    # Per N, the epoch's tail from its definition: each rank validates 1/N of 8,600 films (8.6 s on one), rank 0
    # saves the checkpoint (0.5 s) while the others wait, and the N ranks train 78,000 films at img/s(N) together.
    for processes, rate in ((1, 900.0), (2, 1500.0)):
        tail = 8.6 / processes + 0.5
        assert scaling["data_fed"][str(processes)]["tail_share"] == approx(tail / (78_000 / rate + tail))
        assert scaling["data_fed"][str(processes)]["epoch_seconds"] == approx(78_000 / rate + tail)
    assert "validation_seconds / N" in scaling["tail_share_rule"]
    assert scaling["one_process_through_ddp"]["data_fed_over_without_ddp"] == approx(880.0 / 900.0)
    # Compiled DDP on one GPU (forced) against eager through DDP on one process, fed by the loader.
    assert summary["compiled_ddp"]["data_fed"]["compiled_over_eager"] == approx(1100.0 / 880.0)
    decision = summary["compile_decision"]
    assert decision["compiled_over_eager"] == approx(1.3) and decision["epoch_seconds_saved"] == approx(18.0)
    assert decision["amortised_within_one_epoch"] is True
    assert decision["verdict"] == "make compile the GPU default"
    # Fast enough but not paid back within one epoch (78 s - 60 s saved < 30 s of compiling): eager stays.
    slow_to_compile = gpu_check.summarise(_gpu_report(1000.0, 1300.0, compile_seconds=30.0))["compile_decision"]
    assert slow_to_compile["verdict"] == "keep eager"
    # Paid back but under 1.1 x: eager stays.
    assert gpu_check.summarise(_gpu_report(1000.0, 1050.0, 0.1))["compile_decision"]["verdict"] == "keep eager"
    # The compiled step never finished (a timeout, the budget): no verdict, and the summary says what is missing.
    undecided = gpu_check.summarise(_gpu_report(1000.0, None, None))["compile_decision"]["verdict"]
    assert undecided.startswith("undecided") and "compiled data-fed img/s" in undecided
    # ... unless it was stopped while compiling for longer than an eager epoch trains (78 s): that is a verdict.
    stopped = _gpu_report(1000.0, None, None)
    stopped["steps"]["train_compiled"] = {"status": "timeout", "ended_unix": 1150.0, "figures": {
        "b96_channels_last": {"phase": "compiling (the first step)", "first_step_started_unix": 1000.0}}}
    decision = gpu_check.summarise(stopped)["compile_decision"]
    assert decision["compile_seconds_at_least"] == approx(150.0) and decision["verdict"].startswith("keep eager")
    stopped["steps"]["train_compiled"]["ended_unix"] = 1050.0  # 50 s: it might still have paid back
    assert gpu_check.summarise(stopped)["compile_decision"]["verdict"].startswith("undecided")


def test_the_recommended_call_fits_five_minutes_and_the_compile_decision_runs_first():
    # One budget, the gpu preset's: the docstring's command (which the README quotes) leaves it to the preset.
    assert gpu_check.PRESETS["gpu"]["budget_s"] == gpu_check.GPU_BUDGET_S
    command = f"timeout {gpu_check.OUTER_TIMEOUT_S} .venv/bin/python benchmarks/gpu_check.py --preset gpu\n"
    assert command in gpu_check.__doc__ and "--budget-s 2" not in gpu_check.__doc__
    assert f"budget of {gpu_check.GPU_BUDGET_S} s" in gpu_check.__doc__
    assert gpu_check.OUTER_TIMEOUT_S <= 5 * 60
    # Outside the budget: starting Python, a SIGKILL to the step in flight, the last JSON; seconds, with slack.
    assert gpu_check.OUTER_TIMEOUT_S - gpu_check.GPU_BUDGET_S >= 30
    steps = list(gpu_check.STEPS)
    assert steps[:3] == ["cache", "train_eager", "train_compiled"]  # what compile_decision reads, first
    assert steps[-2:] == ["torchrun_compiled", "train_compiled_large"]  # what a short budget may cut, last
    assert set(steps) == set(gpu_check.STEP_FUNCTIONS) == set(gpu_check.PRESETS["gpu"]["timeouts"])

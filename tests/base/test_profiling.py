"""Stage timing and memory (cxrutils.profiling) and the rehearsal's figures built from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cxrutils import profiling
from cxrutils.publish import rehearsal


@pytest.fixture
def stage_log(tmp_path, monkeypatch):
    path = tmp_path / "stages.jsonl"
    monkeypatch.setenv(profiling.STAGE_LOG_VARIABLE, str(path))
    monkeypatch.setenv(profiling.STAGE_CONTEXT_VARIABLE, "01_eda")
    return path


def test_without_a_stage_log_stages_record_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(profiling.STAGE_LOG_VARIABLE, raising=False)
    with profiling.stage("load dataset") as facts:
        facts["images"] = 3
    profiling.mark_once("first training batch")
    assert list(tmp_path.iterdir()) == []


def test_a_stage_records_its_time_its_details_and_the_memory_it_touched(stage_log):
    with profiling.stage("outer", images=7):
        with profiling.stage("allocate") as facts:
            block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB, touched
            facts["boxes"] = 2
            del block
    records = profiling.read_stage_log(stage_log)
    assert [r["stage"] for r in records] == ["allocate", "outer"]  # in the order they ended
    inner, outer = records
    assert inner["context"] == "01_eda" and inner["boxes"] == 2 and inner["depth"] == 1 and outer["depth"] == 0
    assert outer["images"] == 7 and outer["seconds"] >= inner["seconds"] > 0
    # The 300 MB were freed before the stage ended; the peak still holds them, for both stages.
    assert inner["peak_rss_bytes"] >= 300 * 2**20 and outer["peak_rss_bytes"] >= inner["peak_rss_bytes"] - 2**20


def test_a_child_process_memory_counts_in_the_stage_peak(stage_log):
    script = "import numpy, time; block = numpy.ones(250 * 2**20, dtype=numpy.uint8); time.sleep(0.5)"
    with profiling.stage("spawned work"):
        subprocess.run([sys.executable, "-c", script], check=True, env={k: v for k, v in os.environ.items()
                                                                        if k != profiling.STAGE_LOG_VARIABLE})
    (record,) = profiling.read_stage_log(stage_log)
    assert record["peak_rss_bytes"] >= 250 * 2**20


# A script that spends ``burn(seconds)`` of its own CPU time, whatever else runs on the machine.
_BURN = ("import sys, time\ndef burn(seconds):\n    end = time.process_time() + seconds\n"
         "    while time.process_time() < end:\n        pass\n")


def _child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != profiling.STAGE_LOG_VARIABLE}


def _burn_in_process(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_stage_records_the_cpu_time_it_computed_and_not_the_time_it_waited(stage_log):
    with profiling.stage("compute, then wait"):
        _burn_in_process(0.3)
        time.sleep(0.4)
    (record,) = profiling.read_stage_log(stage_log)
    assert record["seconds"] >= 0.7
    assert 0.3 <= record["cpu_seconds"] < 0.55, record  # the burn, not the sleep


def test_the_cpu_time_of_children_and_their_children_counts_in_the_stage(stage_log):
    grandchild = _BURN + "burn(0.4)"
    child = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    with profiling.stage("spawned work"):
        subprocess.run([sys.executable, "-c", child], check=True, env=_child_environment())
    (record,) = profiling.read_stage_log(stage_log)
    assert record["cpu_seconds"] >= 0.4, record  # this process only waited


def test_a_child_still_running_when_the_stage_ends_counts_and_one_started_before_counts_only_its_part(stage_log):
    # Burns 0.4 s, says so, waits for a line; then burns 0.2 s and ends.
    script = _BURN + "burn(0.4)\nprint('burnt', flush=True)\nsys.stdin.readline()\nburn(0.2)\n"
    with profiling.stage("worker started inside"):
        started_inside = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, env=_child_environment())
        assert started_inside.stdout.readline().strip() == "burnt"  # alive when the stage ends, like a pool worker
    started_before = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=_child_environment())
    assert started_before.stdout.readline().strip() == "burnt"
    with profiling.stage("worker started before"):
        started_before.communicate("go\n")  # its last 0.2 s, and it is reaped inside the stage
    started_inside.communicate("go\n")
    inside, before = profiling.read_stage_log(stage_log)
    assert inside["cpu_seconds"] >= 0.4, inside
    assert 0.2 <= before["cpu_seconds"] < 0.4, before  # not the 0.4 s it burnt before the stage


def test_a_stage_records_the_cpu_time_other_programs_used_meanwhile(stage_log):
    # A program that is not this process's descendant (started by a child that leaves at once) burns for 3 s at most.
    burner = "import time\nend = time.time() + 3\nwhile time.time() < end:\n    pass\n"
    starter = (f"import subprocess, sys\nprint(subprocess.Popen([sys.executable, '-c', {burner!r}], "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True).pid)")
    pid = int(subprocess.run([sys.executable, "-c", starter], check=True, capture_output=True, text=True,
                             env=_child_environment()).stdout)
    try:
        time.sleep(0.3)  # started
        with profiling.stage("waiting beside a busy program"):
            time.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGTERM)
    (record,) = profiling.read_stage_log(stage_log)
    assert record["cpu_seconds"] < 0.2 and record["others_cpu_seconds"] >= 0.3, record
    assert record["cores"] == len(os.sched_getaffinity(0))


def test_a_mark_is_recorded_once_with_the_seconds_since_the_process_started(stage_log, monkeypatch):
    monkeypatch.setattr(profiling, "_marked", set())
    profiling.mark_once("first training batch")
    profiling.mark_once("first training batch")
    (record,) = profiling.read_stage_log(stage_log)
    assert record["event"] == "first training batch" and record["context"] == "01_eda"
    assert record["after_start_seconds"] > 0


def test_stage_context_is_restored_after_the_block(monkeypatch):
    monkeypatch.setenv(profiling.STAGE_CONTEXT_VARIABLE, "outer")
    with profiling.stage_context("02_train"):
        assert os.environ[profiling.STAGE_CONTEXT_VARIABLE] == "02_train"
    assert os.environ[profiling.STAGE_CONTEXT_VARIABLE] == "outer"


# --------------------------------------------------------------------------- the rehearsal's figures


def _result(scale: float, notebook_peak: int = 2 * 10**9, first_batch: float = 20.0) -> dict:
    records = [
        {"context": "02_train", "stage": "image cache", "seconds": 10.0 * scale, "peak_rss_bytes": 10**9, "depth": 0},
        {"context": "02_train", "stage": "train epoch", "seconds": 2.0, "peak_rss_bytes": 2 * 10**9, "depth": 0},
        {"context": "02_train", "stage": "train epoch", "seconds": 2.0, "peak_rss_bytes": 3 * 10**9, "depth": 0},
        {"context": "02_train", "stage": "checkpoint", "seconds": 0.01 * scale**3, "peak_rss_bytes": 1, "depth": 0},
    ]
    return {"images": int(1000 * scale), "patients": 10, "image_size": 64, "ok": True, "total_seconds": 60 * scale,
            "notebooks": [{"notebook": "02_train", "status": "ok", "seconds": 30.0 * scale,
                           "peak_rss_bytes": notebook_peak, "report": "rehearsal/x/02_train.html"}],
            "stages": rehearsal.aggregate_stages(records),
            "events": [{"context": "02_train", "event": "first training batch", "after_start_seconds": first_batch}]}


def test_repeated_stages_are_summed_and_growth_is_judged_on_stages_long_enough_to_time():
    quarter, full = _result(1.0), _result(4.0)
    epochs = next(r for r in full["stages"] if r["stage"] == "train epoch")
    assert (epochs["seconds"], epochs["peak_rss_bytes"], epochs["count"]) == (4.0, 3 * 10**9, 2)
    rows = {r["stage"]: r for r in rehearsal.growth(quarter, full)}
    assert rows["image cache"]["ratio"] == 4.0 and rows["image cache"]["ok"]
    assert rows["(whole notebook)"]["ratio"] == 4.0
    # 0.01 s -> 0.64 s is a ratio of 64, but under a second at full size is timer noise: not judged.
    assert rows["checkpoint"]["ratio"] == 64.0 and not rows["checkpoint"]["judged"] and rows["checkpoint"]["ok"]
    checks = rehearsal.budget_checks({"quarter": quarter, "full": full}, list(rows.values()))
    assert all(check["ok"] for check in checks), checks


def test_budgets_fail_on_memory_time_to_first_batch_and_growth():
    quarter = _result(1.0)
    full = _result(4.0, notebook_peak=5 * 10**9, first_batch=90.0)
    full["stages"][0]["seconds"] = 160.0  # the cache build grew 16 times for 4 times the films: quadratic
    rows = rehearsal.growth(quarter, full)
    failed = {check["budget"].split(" (")[0] for check in rehearsal.budget_checks({"quarter": quarter, "full": full}, rows)
              if not check["ok"]}
    assert any(name.startswith("peak RSS of any notebook") for name in failed)
    assert "notebook 02 at full size: from the kernel's start to the first training batch" in failed
    assert any(name.startswith("growth exponent of every stage") for name in failed)


def test_the_rehearsal_page_shows_both_sizes_the_ratios_and_the_budgets(tmp_path):
    results = {"quarter": {**_result(1.0), "size": "quarter", "fraction": 0.25},
               "full": {**_result(4.0), "size": "full", "fraction": 1.0}}
    json_path, page_path = rehearsal.write_results(results, tmp_path)
    document = json.loads(json_path.read_text())
    assert document["synthetic"] is True and set(document["sizes"]) == {"quarter", "full"}
    table = rehearsal.stage_table(document)
    cache = table[table["stage"] == "image cache"].iloc[0]
    assert (cache["quarter s"], cache["full s"], cache["full / quarter"]) == (10.0, 40.0, 4.0)
    page = page_path.read_text()
    assert "SYNTHETIC" in page and "image cache" in page and "Budgets" in page and "02_train.html" in page


def test_a_stage_run_by_several_notebooks_is_judged_on_its_total():
    def result(first: float, second: float) -> dict:
        records = [{"context": "01_eda", "stage": "load dataset", "seconds": first, "peak_rss_bytes": 1, "depth": 0},
                   {"context": "03_evaluate", "stage": "load dataset", "seconds": second, "peak_rss_bytes": 1,
                    "depth": 0}]
        return {"stages": rehearsal.aggregate_stages(records), "notebooks": []}

    rows = rehearsal.growth(result(0.6, 0.6), result(3.6, 2.0))
    per_notebook = {r["context"]: r for r in rows if r["scope"] == "notebook"}
    assert per_notebook["01_eda"]["ratio"] == 6.0 and not per_notebook["01_eda"]["judged"]
    (total,) = [r for r in rows if r["scope"] == "stage"]
    assert (total["context"], total["stage"], total["ratio"], total["judged"], total["ok"]) == (
        rehearsal.ALL_NOTEBOOKS, "load dataset", 4.67, True, True)

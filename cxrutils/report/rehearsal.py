"""The full-size rehearsal: every notebook on a 112,120-film NIH-shaped root, measured stage by stage.

    python -m cxrutils.rehearsal                  # a quarter of the rows, then all of them (`make rehearsal`)
    python -m cxrutils.rehearsal --size full      # one size only

Code that is quadratic in films, holds a copy too many or assumes every listed file
exists fails only at the real size, on the user's machine, after a 42 GB download.
The rehearsal runs the real pipeline at that size on the CPU instead:

1. builds the rehearsal root if it is missing (``cxrutils.demo.roots``: the real v2020
   metadata, box list and official-sized split lists, a tiny phantom per row) and the
   same root without images, as a user has it before downloading them;
2. runs notebook 01 on the root without images (every listed film reported missing);
3. runs every notebook on the full root through the reports runner, from a fresh run
   folder and a fresh image cache, so the cache build is measured too; training is
   capped (``configs/train/rehearsal.yaml``), everything around it is not;
4. writes ``reports/rehearsal.json`` and ``reports/rehearsal.html``: wall time and peak
   memory of every stage (``cxrutils.profiling``) and notebook, at each size, how each
   stage grows from a quarter to all rows, and the budgets each figure must meet.

Every report it writes is marked SYNTHETIC: the figures measure the code, not a model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from cxrutils import files
from cxrutils.data.cache import image_cache_dir
from cxrutils.demo.roots import RehearsalSpec, ensure_rehearsal_dataset, rehearsal_root_is_built
from cxrutils.paths import DATA_DIR, REPORTS_DIR, resolve
from cxrutils.profiling import STAGE_LOG_VARIABLE, read_stage_log, stage, stage_context
from cxrutils.report import runner as reports
from cxrutils.settings import load_profile, load_train_config

PROFILE = "rehearsal"
SIZES: dict[str, float] = {"quarter": 0.25, "full": 1.0}
RESULT_NAME = "rehearsal.json"
PAGE_NAME = "rehearsal.html"
RUNNER_CONTEXT = "rehearsal"
NO_IMAGES_SUFFIX = "_no_images"
NO_IMAGES_LABEL = " (no images)"
# The budgets on the project's 2-core, 24 GB machine (README, "The full-size rehearsal").
BUDGET_TOTAL_SECONDS = 20 * 60
BUDGET_NOTEBOOK_PEAK_BYTES = 4 * 10**9
BUDGET_GROWTH_RATIO = 5.0
BUDGET_FIRST_BATCH_SECONDS = 60
# A stage is judged on its growth when it takes at least this long at quarter size (over all notebooks):
# shorter ones are within the timing noise of this 2-core machine.
GROWTH_MIN_SECONDS = 1.0
WHOLE_NOTEBOOK = "(whole notebook)"
ALL_NOTEBOOKS = "(all notebooks)"


def root_for(size: str) -> Path:
    return DATA_DIR / f"rehearsal_{size}"


def run_name_for(size: str) -> str:
    return f"rehearsal_{size}"


def _fresh_run(size: str, train_profile: str) -> None:
    """Delete the size's run folder and image cache, so training and the cache build are measured from scratch."""
    config = load_train_config(train_profile, {"data_root": str(root_for(size)), "name": run_name_for(size)})
    shutil.rmtree(config.run_dir, ignore_errors=True)
    shutil.rmtree(image_cache_dir(config), ignore_errors=True)


def rehearse(size: str, reports_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Build (if missing) and run one size; return its figures. Reports go to ``reports_dir/rehearsal/<size>``."""
    fraction = SIZES[size]
    profile = load_profile(PROFILE)
    image_size = int(profile["rehearsal_data"]["image_size"])
    out = reports_dir / "rehearsal"
    out.mkdir(parents=True, exist_ok=True)
    logs = {"": out / f"{size}_stages.jsonl", NO_IMAGES_LABEL: out / f"{size}_no_images_stages.jsonl"}
    for log in logs.values():
        log.unlink(missing_ok=True)
    started = time.perf_counter()
    entries: dict[str, dict[str, Any]] = {}
    try:
        os.environ[STAGE_LOG_VARIABLE] = str(logs[""])
        with stage_context(RUNNER_CONTEXT):
            for root, with_images in ((root_for(size), True), (root_for(size + NO_IMAGES_SUFFIX), False)):
                spec = RehearsalSpec(fraction=fraction, image_size=image_size, seed=seed, with_images=with_images)
                with stage("build root" if with_images else "build root without images") as facts:
                    facts["built"] = not rehearsal_root_is_built(root, spec)  # else reused: its time is no build's
                    ensure_rehearsal_dataset(root, spec)
            _fresh_run(size, profile["train_profile"])

            print(f"== rehearsal ({size}): notebook 01 on the root without images", flush=True)
            os.environ[STAGE_LOG_VARIABLE] = str(logs[NO_IMAGES_LABEL])
            no_images_dir = out / f"{size}{NO_IMAGES_SUFFIX}"
            code = reports.main(["--profile", PROFILE, "--only", "01", "--set",
                                 f"data_root={root_for(size + NO_IMAGES_SUFFIX)}", "--reports-dir", str(no_images_dir)])
            entries.update(_notebook_entries(no_images_dir, NO_IMAGES_LABEL))
            if code == 0:
                print(f"== rehearsal ({size}): every notebook on {root_for(size)}", flush=True)
                os.environ[STAGE_LOG_VARIABLE] = str(logs[""])
                notebooks_dir = out / size
                code = reports.main(["--profile", PROFILE, "--set", f"data_root={root_for(size)}",
                                     "--set", f"name={run_name_for(size)}", "--reports-dir", str(notebooks_dir)])
                entries.update(_notebook_entries(notebooks_dir))
    finally:
        os.environ.pop(STAGE_LOG_VARIABLE, None)
    total = time.perf_counter() - started
    records = read_stage_log(logs[""]) + [
        {**record, "context": record["context"] + NO_IMAGES_LABEL} for record in read_stage_log(logs[NO_IMAGES_LABEL])
    ]
    manifest = json.loads((root_for(size) / "PHANTOM_DATASET.json").read_text())
    return {
        "size": size,
        "fraction": fraction,
        "images": manifest["images"],
        "patients": manifest["patients"],
        "image_size": image_size,
        "ok": code == 0,
        "total_seconds": round(total, 1),
        "notebooks": list(entries.values()),
        "stages": aggregate_stages([r for r in records if "stage" in r]),
        "events": [r for r in records if "event" in r],
    }


def _notebook_entries(reports_dir: Path, suffix: str = "") -> dict[str, dict[str, Any]]:
    """Each notebook's status, wall time and peak memory from a reports folder's index, its name + ``suffix``."""
    index = reports_dir / reports.INDEX_JSON_NAME
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {
        name + suffix: {"notebook": name + suffix, "status": entry["status"], "seconds": entry.get("run_seconds"),
                        "peak_rss_bytes": entry.get("peak_rss_bytes"),
                        "report": str((reports_dir / f"{name}.html").relative_to(reports_dir.parent.parent))}
        for name, entry in sorted(entries.items())
    }


def aggregate_stages(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (context, stage): summed seconds over repeats (epochs), the largest peak, how many times."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record.get("context", ""), record["stage"])
        row = rows.setdefault(key, {"context": key[0], "stage": key[1], "seconds": 0.0, "peak_rss_bytes": 0,
                                    "count": 0, "depth": record.get("depth", 0)})
        row["seconds"] = round(row["seconds"] + record["seconds"], 3)
        row["peak_rss_bytes"] = max(row["peak_rss_bytes"], record["peak_rss_bytes"])
        row["count"] += 1
        for detail in ("images", "boxes", "decoded", "built"):
            if detail in record:
                row[detail] = record[detail]
    return list(rows.values())


def growth(quarter: dict[str, Any], full: dict[str, Any]) -> list[dict[str, Any]]:
    """Full / quarter time, per stage in each notebook (to read) and per stage over all notebooks (judged).

    Rows with ``scope`` "notebook" are each (notebook, stage) pair and each whole notebook.
    Rows with ``scope`` "stage" sum a stage over every notebook that runs it (each notebook
    loads the dataset): these are judged, where the quarter's total is at least
    ``GROWTH_MIN_SECONDS`` (a shorter time is within this machine's timing noise, about
    +-0.15 s, which alone can move a sub-second stage's ratio past 5) and the stage did its
    work at both sizes (a root reused from an earlier run was not built).
    """
    def timings(result: dict[str, Any]) -> dict[tuple[str, str], tuple[float, bool]]:
        """(seconds, whether the stage did its work: a root reused from an earlier run did not)."""
        found = {(row["context"], row["stage"]): (row["seconds"], row.get("built", True)) for row in result["stages"]}
        found.update({(row["notebook"], WHOLE_NOTEBOOK): (row["seconds"], True) for row in result["notebooks"]})
        return found

    def totals(found: dict[tuple[str, str], tuple[float, bool]]) -> dict[tuple[str, str], tuple[float, bool]]:
        summed: dict[tuple[str, str], tuple[float, bool]] = {}
        for (_, name), (seconds, did_work) in found.items():
            if name == WHOLE_NOTEBOOK:
                continue
            before, worked = summed.get((ALL_NOTEBOOKS, name), (0.0, True))
            summed[(ALL_NOTEBOOKS, name)] = (before + seconds, worked and did_work)
        notebooks = {key: value for key, value in found.items() if key[1] == WHOLE_NOTEBOOK}
        return {**summed, **notebooks}

    rows = []
    small, large = timings(quarter), timings(full)
    for scope, small_part, large_part in (("notebook", small, large), ("stage", totals(small), totals(large))):
        for key, (seconds, did_work) in large_part.items():
            if key not in small_part:
                continue
            small_seconds, small_did_work = small_part[key]
            ratio = seconds / small_seconds if small_seconds > 0 else float("inf")
            judged = scope == "stage" and small_seconds >= GROWTH_MIN_SECONDS and did_work and small_did_work
            rows.append({"scope": scope, "context": key[0], "stage": key[1], "quarter_seconds": round(small_seconds, 3),
                         "full_seconds": round(seconds, 3), "ratio": round(ratio, 2), "judged": judged,
                         "ok": (ratio <= BUDGET_GROWTH_RATIO) or not judged})
    return rows


def budget_checks(results: dict[str, dict[str, Any]], growth_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    if "full" in results:
        total = results["full"]["total_seconds"]
        checks.append({"budget": "whole rehearsal at full size, root included", "value": f"{total / 60:.1f} min",
                       "limit": f"{BUDGET_TOTAL_SECONDS / 60:.0f} min", "ok": total <= BUDGET_TOTAL_SECONDS})
        first = [e for e in results["full"].get("events", [])
                 if e["event"] == "first training batch" and e["context"] == "02_train"]
        checks.append({"budget": "notebook 02 at full size: from the kernel's start to the first training batch",
                       "value": f"{first[0]['after_start_seconds']:.0f} s" if first else "not reached",
                       "limit": f"{BUDGET_FIRST_BATCH_SECONDS} s",
                       "ok": bool(first) and first[0]["after_start_seconds"] <= BUDGET_FIRST_BATCH_SECONDS})
    for size, result in results.items():
        peaks = [row for row in result["notebooks"] if row.get("peak_rss_bytes")]
        if peaks:
            worst = max(peaks, key=lambda row: row["peak_rss_bytes"])
            checks.append({"budget": f"peak RSS of any notebook ({size}: {worst['notebook']})",
                           "value": f"{worst['peak_rss_bytes'] / 1e9:.2f} GB",
                           "limit": f"{BUDGET_NOTEBOOK_PEAK_BYTES / 1e9:.0f} GB",
                           "ok": worst["peak_rss_bytes"] <= BUDGET_NOTEBOOK_PEAK_BYTES})
        checks.append({"budget": f"every notebook ran ({size})", "value": "yes" if result["ok"] else "no",
                       "limit": "yes", "ok": bool(result["ok"])})
    if growth_rows:
        judged = [row for row in growth_rows if row["judged"]]
        worst = max(judged, key=lambda row: row["ratio"]) if judged else None
        checks.append({"budget": f"full / quarter time of every stage over all notebooks (of {GROWTH_MIN_SECONDS:g} s "
                                 "or more at quarter size)" + (f" (largest: {worst['stage']})" if worst else ""),
                       "value": f"{worst['ratio']:.2f}" if worst else "-",
                       "limit": f"{BUDGET_GROWTH_RATIO:g}", "ok": all(row["ok"] for row in growth_rows)})
    return checks


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def write_results(results: dict[str, dict[str, Any]], reports_dir: Path) -> tuple[Path, Path]:
    """``rehearsal.json`` and ``rehearsal.html`` in ``reports_dir``; sizes run earlier are kept."""
    path = reports_dir / RESULT_NAME
    previous = json.loads(path.read_text()).get("sizes", {}) if path.is_file() else {}
    sizes = {**previous, **results}
    growth_rows = growth(sizes["quarter"], sizes["full"]) if {"quarter", "full"} <= set(sizes) else []
    document = {
        "synthetic": True,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "profile": PROFILE,
        "sizes": sizes,
        "growth": growth_rows,
        "checks": budget_checks(sizes, growth_rows),
    }
    files.write_json(path, document)
    page = reports_dir / PAGE_NAME
    page.write_text(render_page(document), encoding="utf-8")
    reports.write_index([], PROFILE, reports_dir)  # the index links the page
    return path, page


def stage_table(document: dict[str, Any]) -> pd.DataFrame:
    """Context, stage, then seconds and peak GB at each size, and the full / quarter ratio.

    Rows come in the order the pipeline runs: the runner's own stages, the EDA without
    images, then each notebook (its whole run first, then its stages, nested ones indented).
    """
    labels: dict[tuple[str, str], str] = {}
    frames = []
    for size, result in document["sizes"].items():
        rows = [{"context": r["notebook"], "key": WHOLE_NOTEBOOK, "seconds": r["seconds"],
                 "peak_rss_bytes": r["peak_rss_bytes"]} for r in result["notebooks"]]
        for r in result["stages"]:
            labels.setdefault((r["context"], r["stage"]), "  " * r.get("depth", 0) + r["stage"])
            rows.append({"context": r["context"], "key": r["stage"], "seconds": r["seconds"],
                         "peak_rss_bytes": r["peak_rss_bytes"]})
        frame = pd.DataFrame(rows).set_index(["context", "key"])
        frames.append(pd.DataFrame({f"{size} s": frame["seconds"],
                                    f"{size} peak GB": frame["peak_rss_bytes"].astype(float) / 1e9}))
    table = pd.concat(frames, axis=1)
    ratios = {(r["context"], r["stage"]): r["ratio"] for r in document.get("growth", [])
              if r["scope"] == "notebook" and r.get("full_seconds", 0) >= 0.1}
    table["full / quarter"] = [ratios.get(key) for key in table.index]
    table.insert(0, "stage", [labels.get(key, key[1]) for key in table.index])
    table = table.reset_index()

    def position(row: pd.Series) -> tuple[int, str, int]:
        context = row["context"]
        group = 0 if context == RUNNER_CONTEXT else (1 if context.endswith(NO_IMAGES_LABEL) else 2)
        return group, context, 0 if row["key"] == WHOLE_NOTEBOOK else 1

    table["position"] = table.apply(position, axis=1)
    return table.sort_values("position", kind="stable").drop(columns=["position", "key"])


def render_page(document: dict[str, Any]) -> str:
    """The rehearsal page: budgets, then every stage at both sizes, then links to the reports."""
    checks = pd.DataFrame(document["checks"])
    checks["ok"] = checks["ok"].map({True: "pass", False: "FAIL"})
    stages = stage_table(document)
    sizes = document["sizes"]
    size_lines = "".join(
        f"<li><b>{html.escape(size)}</b>: {r['images']:,} films of {r['patients']:,} patients "
        f"({r['image_size']} px), {r['total_seconds'] / 60:.1f} min in all; "
        + ", ".join(f"<a href='{html.escape(n['report'])}'>{html.escape(n['notebook'])}</a> ({n['status']})"
                    for n in r["notebooks"]) + "</li>"
        for size, r in sizes.items()
    )
    formats = {c: "{:,.1f}" for c in stages.columns if c.endswith(" s")}
    formats |= {c: "{:.2f}" for c in stages.columns if c.endswith("peak GB") or c == "full / quarter"}
    stage_html = stages.style.format(formats, na_rep="").hide(axis="index").to_html()
    judged = growth_table(document)
    growth_html = (judged.style.format({"quarter s": "{:,.1f}", "full s": "{:,.1f}", "full / quarter": "{:.2f}"})
                   .hide(axis="index").to_html() if len(judged) else "<p>Only one size was run.</p>")
    machine_text = ", ".join(f"{k} {v}" for k, v in document["machine"].items())
    return _PAGE.format(
        created=html.escape(document["created"]), machine=html.escape(machine_text),
        checks=checks.to_html(index=False, escape=True), sizes=size_lines, stages=stage_html, growth=growth_html,
        min_seconds=f"{GROWTH_MIN_SECONDS:g}", limit=f"{BUDGET_GROWTH_RATIO:g}",
    )


def growth_table(document: dict[str, Any]) -> pd.DataFrame:
    """Each stage summed over the notebooks, and each notebook: quarter and full time, ratio, judged or not."""
    rows = [r for r in document.get("growth", []) if r["scope"] == "stage"]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["verdict"] = [("pass" if r["ok"] else "FAIL") if r["judged"] else "not judged" for r in rows]
    table = table.rename(columns={"quarter_seconds": "quarter s", "full_seconds": "full s", "ratio": "full / quarter"})
    table["stage"] = [r["stage"] if r["context"] == ALL_NOTEBOOKS else f"{r['context']} {r['stage']}" for r in rows]
    return table[["stage", "quarter s", "full s", "full / quarter", "verdict"]]


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxrutils full-size rehearsal</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: left; white-space: pre; }}
th {{ background: #f4f4f4; }}
.synthetic {{ background: #b00020; color: white; padding: .6em 1em; border-radius: 6px; }}
</style></head><body>
<h1>Full-size rehearsal</h1>
<p class="synthetic"><b>SYNTHETIC DATA.</b> The films are tiny phantoms; the metadata, box list and radiologist
labels are the real ones. These figures measure the code at the real dataset's size, not any model.</p>
<p>Generated {created} by <code>python -m cxrutils.rehearsal</code> on: {machine}.
<a href="index.html">Back to the reports index</a>.</p>
<h2>Budgets</h2>
{checks}
<h2>Sizes</h2>
<ul>{sizes}</ul>
<h2>Growth</h2>
<p>How each stage's time grows from a quarter of the rows to all of them: about 4 for linear growth (4.09
times the films). Each stage is summed over the notebooks that run it (each notebook loads the dataset) and
judged against the limit of {limit} where its quarter-size total is at least {min_seconds} s; shorter times
are within this machine's timing noise. A root reused from an earlier run, not built, is not judged.</p>
{growth}
<h2>Stages</h2>
<p>Wall time and peak resident memory (the process and its children) of each stage in each notebook, at
each size, with its own full / quarter ratio for reading. Repeated stages (epochs) are summed. Peak memory
counts the pages of memory-mapped files (the image cache) that a process has touched.</p>
{stages}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", choices=list(SIZES), default=[],
                        help="run only this size (repeatable); default: quarter, then full")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR), help="where reports go (default: reports/)")
    args = parser.parse_args(argv)
    reports_dir = resolve(args.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in args.size or list(SIZES):
        print(f"=== rehearsal at {size} size ({SIZES[size]:g} of the rows)", flush=True)
        results[size] = rehearse(size, reports_dir)
    path, page = write_results(results, reports_dir)
    document = json.loads(path.read_text())
    print(stage_table(document).to_string(index=False, na_rep="", float_format=lambda v: f"{v:,.2f}"))
    print(pd.DataFrame(document["checks"]).to_string(index=False))
    print(f"rehearsal: {page}", flush=True)
    return 0 if all(check["ok"] for check in document["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

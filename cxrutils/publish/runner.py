"""Run the numbered notebooks headlessly with papermill and publish HTML reports.

    cxrutils reports --profile NAME [--set KEY=VALUE ...] [--only NOTEBOOK ...]

Every notebook receives the same training profile and settings (``train_profile``,
``settings``: the data root, its split, the run's name; see ``cxrutils.settings``), so
they all describe one split of one dataset; plus the profile's notebook parameters
that its ``parameters`` cell declares, and ``output_dir`` (``<run's reports>/<notebook>/``),
where it writes ``report_summary.json`` (status, data source, headline figures; and
``result_json``, the file name of the results JSON it saved there, which the indexes link).
``--set KEY=VALUE`` changes a training setting or a notebook parameter, whichever KEY
names.

Each run's reports have their own folder, ``reports/<run name>/`` (the run's folder
name: ``runs/demo`` reports into ``reports/demo``), so a second run never replaces the
first one's pages: executed copies, HTML, the model card and the run's ``index.html``
go there, and ``reports/index.html`` lists every run's folder. Notebook 05 given a
``run_dir`` reports into that run's folder. The first failing notebook stops the run
with a non-zero exit; its HTML keeps the error.

The terminal shows what runs: each notebook's sections as they start, and the live
progress of its long steps (``cxrutils.progress``: the kernels inherit this process's
stderr and write their bars there), while the HTML keeps one line per step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cxrutils import files
from cxrutils.compare.runs import COMPARISONS_FOLDER, SAFE_NAME, comparison_name
from cxrutils.demo.roots import prepare_data_root
from cxrutils.engine import run_folder
from cxrutils.paths import NOTEBOOKS_DIR, PROJ_ROOT, REPORTS_DIR, resolve
from cxrutils.profiling import PeakSampler, stage, stage_context
from cxrutils.progress import duration_text, progress_to_terminal
from cxrutils.publish.model_card import write_model_card
from cxrutils.publish.notebook_html import INDEX_PAGE, THUMBNAIL_NAME, export_html, write_thumbnail
from cxrutils.settings import SettingsError, apply_overrides, load_profile, profile_train_config
from cxrutils.summary import SUMMARY_NAME
from cxrutils.text import html_text

KERNEL_NAME = "cxrutils"
# Parameters the runner fills for every notebook from the profile; --set reaches them through the settings.
SHARED_PARAMETERS = {"train_profile", "settings", "output_dir"}
INDEX_JSON_NAME = "index.json"
# A summary fact: the file name of the results JSON a notebook saved into its output_dir (notebook 06's
# runs_compared.json), linked beside its report. Links stay inside the reports folder, which is shared without runs/.
RESULT_JSON_FACT = "result_json"
# Pages other commands write beside a run's reports, linked from its index when present.
EXTRA_PAGES = {
    "model_card.html": "Model card: the trained run's data, training, evaluation and limitations, from its run folder",
}
# Pages other commands write into the top reports folder, linked from the index of runs when present.
TOP_PAGES = {
    "rehearsal.html": "Full-size rehearsal: every stage's time and memory at 112,120 films (make rehearsal)",
}
# Where `cxrutils infer` writes by default (reports/inference/<run name>/inference.html); listed by the index of runs.
INFERENCE_FOLDER = "inference"
# Notebooks about several runs: run only by a profile that names them (configs/runs_compared.yaml), never by
# default, since a profile's other notebooks describe one run. Their reports go to reports/comparisons/<name>/.
EXTERNAL_NOTEBOOK = "07_external_validation"
EXTERNAL_FOLDER = "external"  # reports/external/<run name>-<collection>/: notebook 07's reports
ON_REQUEST_NOTEBOOKS = {"06_runs_compared": "finished runs compared on the same films",
                        "07_external_validation": "a finished run on an external collection"}


def notebook_paths(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(profile: dict[str, Any], only: list[str], available: list[Path]) -> list[Path]:
    """Notebooks of the profile (all by default), narrowed by ``--only`` (stem or number)."""
    by_stem = {p.stem: p for p in available}
    wanted = profile.get("notebooks") or [stem for stem in by_stem if stem not in ON_REQUEST_NOTEBOOKS]
    unknown = [name for name in wanted if name not in by_stem]
    if unknown:
        raise SettingsError(f"profile {profile['name']!r} names unknown notebook(s) {unknown}; have {list(by_stem)}")
    chosen = [by_stem[name] for name in wanted]
    if only:
        matches = [p for p in chosen if any(p.stem == o or p.stem.split("_")[0] == o for o in only)]
        missing = [o for o in only if not any(p.stem == o or p.stem.split("_")[0] == o for p in chosen)]
        if missing:
            raise SettingsError(f"--only {missing}: not among this profile's notebooks {[p.stem for p in chosen]}")
        chosen = matches
    return chosen


def ensure_kernel() -> str:
    """Register this interpreter as the ``cxrutils`` Jupyter kernel in its own prefix.

    Papermill and JupyterLab then run notebooks in this environment, whatever
    other kernels the user has; no manual ``ipykernel install`` step.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable):
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    install(kernel_name=KERNEL_NAME, display_name="Python (cxrutils)", prefix=sys.prefix)
    return KERNEL_NAME


def kernel_options() -> dict[str, Any]:
    """How the runner starts a kernel: the quiet transport, and stderr left to the terminal.

    - Over TCP ipykernel warns that the kernel's traffic is unencrypted; over IPC (Unix
      sockets, files only this user can open) there is no port to eavesdrop on and no
      warning. Where zmq has no IPC (Windows), the kernel manager provisions CurveZMQ
      keys instead, which encrypt the TCP traffic.
    - ipykernel copies whatever the kernel writes to file descriptor 2 into the cell
      (``capture_fd_output``); off, the progress bars that ``cxrutils.progress`` writes
      there reach only the terminal, not the report. Python's own ``sys.stderr``
      (warnings, tracebacks) still goes to the cell.
    """
    import zmq
    from traitlets.config import Config

    manager = {"transport": "ipc"} if zmq.has("ipc") else {"transport_encryption": "required"}
    return {"config": Config({"KernelManager": manager}),
            "extra_arguments": ["--IPKernelApp.capture_fd_output=False"]}


def _section_printer(notebook: Path) -> Any:
    """An nbclient ``on_cell_start`` hook that prints each ``##`` heading of the notebook to the terminal as it starts."""

    def show(cell: Any, cell_index: int) -> None:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    print(f"   {notebook.stem}: {line[3:].strip()}", flush=True)

    return show


def run_notebook(notebook: Path, parameters: dict[str, Any], reports_dir: Path, show_code: bool) -> dict[str, Any]:
    """Execute one notebook and export its HTML; return its index entry."""
    import papermill as pm

    output_dir = reports_dir / notebook.stem
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY_NAME).unlink(missing_ok=True)
    declared = pm.inspect_notebook(str(notebook))
    passed = {k: v for k, v in {**parameters, "output_dir": str(output_dir)}.items() if k in declared}
    executed = reports_dir / notebook.name
    started = time.perf_counter()
    error: str | None = None
    # The kernel inherits the environment, so the stages it records (cxrutils.profiling) name this notebook.
    # The kernel and its workers are this process's descendants: their summed RSS is the notebook's memory.
    # The terminal shows the notebook's sections and the live bars of its steps, so papermill's own bar
    # (cells executed out of all) stays off: two processes redrawing one terminal line garble it.
    with stage_context(notebook.stem), progress_to_terminal():
        with PeakSampler(descendants_only=True) as memory:
            try:
                pm.execute_notebook(
                    str(notebook),
                    str(executed),
                    parameters=passed,
                    kernel_name=ensure_kernel(),
                    cwd=str(PROJ_ROOT),
                    progress_bar=False,
                    on_cell_start=_section_printer(notebook),
                    **kernel_options(),
                )
            except pm.PapermillExecutionError as err:
                error = f"{err.ename}: {err.evalue}"
        elapsed = time.perf_counter() - started
        with stage("render HTML"):
            export_html(executed, reports_dir / f"{notebook.stem}.html", show_code=show_code)
            thumbnail = write_thumbnail(executed, output_dir)
    summary_path = output_dir / SUMMARY_NAME
    if error is None and not summary_path.is_file():
        # Its last cells never ran or never reported: the index must not call that a success.
        error = (f"the notebook finished without writing {SUMMARY_NAME}: its last cell must call "
                 "cxrutils.summary.write_summary(output_dir, ...)")
    summary = json.loads(summary_path.read_text()) if error is None else {}
    result_json = None
    if RESULT_JSON_FACT in summary:
        try:
            result_json = result_json_link(summary.pop(RESULT_JSON_FACT), output_dir)
        except ValueError as err:
            error, summary = str(err), {}
    status = "failed" if error else summary.pop("status", "ok")
    return {
        "notebook": notebook.stem,
        "status": status,
        "status_reason": error or summary.pop("status_reason", ""),
        "run_seconds": round(elapsed, 1),
        "peak_rss_bytes": memory.peak,
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
        "parameters": passed,
        "thumbnail": f"{notebook.stem}/{THUMBNAIL_NAME}" if thumbnail else None,
        RESULT_JSON_FACT: result_json,
        **summary,
    }


def result_json_link(name: Any, output_dir: Path) -> str:
    """The results JSON a notebook's summary names, as the index links it: ``<output_dir's name>/<name>``.

    ``ValueError`` unless ``name`` is the plain name of a JSON file in ``output_dir``: a
    link to a missing file, or out of the reports folder, would lead nowhere where the
    reports are shared.
    """
    if not isinstance(name, str) or not name.endswith(".json") or Path(name).name != name or name.startswith("."):
        raise ValueError(f"the notebook's {SUMMARY_NAME} gives {RESULT_JSON_FACT}={name!r}: it must be the file name "
                         f"of a JSON file the notebook wrote into its output_dir ({output_dir})")
    if not (output_dir / name).is_file():
        raise ValueError(f"the notebook's {SUMMARY_NAME} gives {RESULT_JSON_FACT}={name!r}, but {output_dir / name} "
                         "does not exist: write the file into output_dir before the summary")
    return f"{output_dir.name}/{name}"


def _result_json_html(entry: dict[str, Any], reports_dir: Path, href_prefix: str = "") -> str:
    """A link to the entry's results JSON under its report's link, when the file is there; '' otherwise."""
    link = entry.get(RESULT_JSON_FACT)
    # index.json may come from elsewhere (the index of runs reads every folder): a link never leaves its folder.
    if not isinstance(link, str) or Path(link).is_absolute() or ".." in Path(link).parts \
            or not (reports_dir / link).is_file():
        return ""
    return (f"<div class='files'><a href='{href_prefix}{html_text(quote(link))}'>{html_text(Path(link).name)}</a>"
            "</div>")


def write_index(entries: list[dict[str, Any]], profile: str, reports_dir: Path, in_runs_index: bool = True,
                up_href: str = f"../{INDEX_PAGE}") -> Path:
    """Merge this run's entries into ``index.json`` and render ``index.html``.

    ``in_runs_index``: the folder is one run's among the others of the top reports
    folder, whose ``index.html`` (``write_runs_index``) the page links at ``up_href``.
    """
    index_json = reports_dir / INDEX_JSON_NAME
    previous = json.loads(index_json.read_text()) if index_json.is_file() else {}
    for entry in entries:
        previous[entry["notebook"]] = {**entry, "profile": profile}
    files.write_json(index_json, previous)
    rows = []
    for name in sorted(previous):
        entry = previous[name]
        status = entry["status"]
        status_text = status
        reason = (
            f"<div class='reason'>{html_text(str(entry.get('status_reason', '')))}</div>"
            if entry.get("status_reason")
            else ""
        )
        if status == "skipped" and entry.get("status_reason"):  # e.g. "skipped (no weights)": not a failure
            status_text, reason = f"skipped ({entry['status_reason']})", ""
        source = html_text(str(entry.get("data_source", "")))
        if entry.get("synthetic"):
            # The dataset's own description already opens with the word; mark it rather than repeat it.
            source = f"<span class='synthetic'>SYNTHETIC</span> {source.removeprefix('SYNTHETIC ')}"
        report_page = html_text(f"{name}.html")
        has_page = (reports_dir / f"{name}.html").is_file()
        link = f"<a href='{report_page}'>{html_text(name)}</a>" if has_page else html_text(name)
        link += _result_json_html(entry, reports_dir)
        headline = f"<div class='headline'>{html_text(str(entry.get('headline', '')))}</div>"
        thumbnail = entry.get("thumbnail")
        if thumbnail and (reports_dir / thumbnail).is_file():
            image = f"<img class='thumbnail' src='{html_text(thumbnail)}' alt='headline figure of {html_text(name)}'>"
            headline = (f"<a href='{report_page}'>{image}</a>" if has_page else image) + headline
        run_time = duration_text(entry["run_seconds"]) if "run_seconds" in entry else ""
        rows.append(
            f"<tr><td>{link}</td><td class='status {status.replace(' ', '-')}'>{html_text(status_text)}{reason}</td>"
            f"<td>{headline}</td><td>{source}</td><td>{run_time}</td>"
            f"<td>{html_text(str(entry.get('profile', '')))}</td>"
            f"<td>{html_text(str(entry.get('finished_at', '')))}</td></tr>"
        )
    extras = [f"<li><a href='{name}'>{html_text(title)}</a></li>" for name, title in EXTRA_PAGES.items()
              if (reports_dir / name).is_file()]
    others = f"<h2>Other pages</h2><ul>{''.join(extras)}</ul>" if extras else ""
    up = f"<a href='{html_text(up_href)}'>Every run's reports</a>. " if in_runs_index else ""
    page = _INDEX_TEMPLATE.format(rows="\n".join(rows), generated=dt.datetime.now().isoformat(timespec="seconds"),
                                  others=others, up=up)
    return files.atomic_write_text(reports_dir / INDEX_PAGE, page)


def write_runs_index(reports_dir: Path) -> Path:
    """``index.html`` of the top reports folder: every run's folder of reports, newest first, and the other pages.

    A run's folder is one holding the ``index.json`` that ``write_index`` writes. Each
    row names the run, its profile, its reports' statuses, the data source and the
    evaluation's headline (the first report's when there is no evaluation), and links
    the run's index, its model card and its inference results when they exist.
    """
    runs = []
    for index_json in reports_dir.glob(f"*/{INDEX_JSON_NAME}"):
        try:
            entries = json.loads(index_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a folder someone else wrote: listed as unreadable, not fatal
            entries = None
        runs.append((index_json.parent, entries if isinstance(entries, dict) else None))
    # Newest first; finish times are to the second, so the index's own write time breaks ties.
    runs.sort(key=lambda run: (_last_finished(run[1] or {}), (run[0] / INDEX_JSON_NAME).stat().st_mtime_ns),
              reverse=True)
    rows = [_run_row(reports_dir, folder, entries) for folder, entries in runs]
    others = [f"<li><a href='{name}'>{html_text(title)}</a></li>" for name, title in TOP_PAGES.items()
              if (reports_dir / name).is_file()]
    # Inference results of runs whose notebooks were never rendered here (cxrutils infer alone).
    listed = {folder.name for folder, _ in runs}
    others += [f"<li><a href='{INFERENCE_FOLDER}/{html_text(quote(page.parent.name))}/inference.html'>Inference with run "
               f"{html_text(page.parent.name)}</a></li>"
               for page in sorted((reports_dir / INFERENCE_FOLDER).glob("*/inference.html"))
               if page.parent.name not in listed]
    compared = ""
    for group, title, first_column in ((COMPARISONS_FOLDER, "Runs compared", "Comparison"),
                                       (EXTERNAL_FOLDER, "External validation", "Run on collection")):
        grouped = _comparison_rows(reports_dir, group)
        compared += (f"<h2>{title}</h2><table><thead><tr><th>{first_column}</th><th>Report</th><th>Headline</th>"
                     "<th>Data source</th><th>Last finished</th></tr></thead><tbody>\n" + "\n".join(grouped)
                     + "\n</tbody></table>") if grouped else ""
    page = _RUNS_INDEX_TEMPLATE.format(
        rows="\n".join(rows) or ("<tr><td colspan='7'>No run has reports here yet: make demo, or cxrutils reports "
                                 "--profile NAME.</td></tr>"),
        generated=dt.datetime.now().isoformat(timespec="seconds"),
        others=compared + (f"<h2>Other pages</h2><ul>{''.join(others)}</ul>" if others else ""),
    )
    return files.atomic_write_text(reports_dir / INDEX_PAGE, page)


def _comparison_rows(reports_dir: Path, group: str = COMPARISONS_FOLDER) -> list[str]:
    """One row per folder of reports/<group>/ (comparisons/: notebook 06's reports; external/: notebook 07's), newest
    first, names escaped and quoted; with a link to the results JSON saved beside the report when there is one."""
    rows = []
    for index_json in (reports_dir / group).glob(f"*/{INDEX_JSON_NAME}"):
        try:
            entries = json.loads(index_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = None
        entries = {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}
        rows.append((_last_finished(entries), index_json.parent, entries))
    lines = []
    for finished, folder, entries in sorted(rows, key=lambda row: row[0], reverse=True):
        href = f"{group}/{html_text(quote(folder.name))}"
        entry = next(iter(entries.values()), {})
        status = str(entry.get("status", "no readable index.json"))
        source = html_text(str(entry.get("data_source", "")))
        if entry.get("synthetic"):
            source = f"<span class='synthetic'>SYNTHETIC</span> {source.removeprefix('SYNTHETIC ')}"
        files_link = _result_json_html(entry, folder, href_prefix=f"{href}/")
        lines.append(f"<tr><td><a href='{href}/{INDEX_PAGE}'>{html_text(folder.name)}</a>{files_link}</td>"
                     f"<td class='status {html_text(status.replace(' ', '-'))}'>{html_text(status)}</td>"
                     f"<td><div class='headline'>{html_text(str(entry.get('headline', '')))}</div></td>"
                     f"<td>{source}</td><td>{html_text(finished)}</td></tr>")
    return lines


def _last_finished(entries: dict[str, Any]) -> str:
    return max((str(entry.get("finished_at", "")) for entry in entries.values() if isinstance(entry, dict)),
               default="")


def _run_row(reports_dir: Path, folder: Path, entries: dict[str, Any] | None) -> str:
    """One run's row of the index of runs."""
    href = html_text(quote(folder.name))  # a folder named "a#b" or "x?y" is a path, not a fragment or a query
    link = f"<a href='{href}/{INDEX_PAGE}'>{html_text(folder.name)}</a>"
    entries = {name: entry for name, entry in (entries or {}).items() if isinstance(entry, dict)} or None
    if entries is None:
        return (f"<tr><td>{link}</td><td class='status failed'>no readable {INDEX_JSON_NAME}</td>"
                "<td></td><td></td><td></td><td></td><td></td></tr>")
    statuses: dict[str, int] = {}
    for entry in entries.values():
        status = str(entry.get("status", "unknown"))
        statuses[status] = statuses.get(status, 0) + 1
    status_text = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    worst = "failed" if "failed" in statuses else "ok" if set(statuses) == {"ok"} else "skipped"
    main = entries.get("03_evaluate") or next(iter(entries.values()))
    source = html_text(str(main.get("data_source", "")))
    if any(entry.get("synthetic") for entry in entries.values()):
        source = f"<span class='synthetic'>SYNTHETIC</span> {source.removeprefix('SYNTHETIC ')}"
    extras = [f"<a href='{href}/{page}'>{html_text(page.removesuffix('.html').replace('_', ' '))}</a>"
              for page in EXTRA_PAGES if (folder / page).is_file()]
    if (reports_dir / INFERENCE_FOLDER / folder.name / "inference.html").is_file():
        extras.append(f"<a href='{INFERENCE_FOLDER}/{href}/inference.html'>cxrutils infer results</a>")
    profiles = sorted({str(entry.get("profile", "")) for entry in entries.values()} - {""})
    return (f"<tr><td>{link}</td><td class='status {worst}'>{html_text(status_text)}</td>"
            f"<td><div class='headline'>{html_text(str(main.get('headline', '')))}</div></td><td>{source}</td>"
            f"<td>{html_text(', '.join(profiles))}</td><td>{' · '.join(extras)}</td>"
            f"<td>{html_text(_last_finished(entries))}</td></tr>")


_STYLE = """<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .5rem .75rem; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }}
.status.ok {{ color: #176f2c; font-weight: 600; }}
.status.failed {{ color: #b00020; font-weight: 600; }}
.status.skipped, .status.not-run {{ color: #8a6d00; font-weight: 600; }}
.reason {{ font-weight: normal; font-size: .85em; color: #555; }}
.synthetic {{ background: #b00020; color: white; padding: 0 .3em; border-radius: 3px; font-size: .85em; }}
.headline {{ font-weight: 600; }}
.files {{ font-size: .85em; }}
.thumbnail {{ display: block; max-width: 240px; max-height: 160px; margin-bottom: .3rem; border: 1px solid #ddd; }}
</style>"""

_RUNS_INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxrutils reports: every run</title>
""" + _STYLE + """</head><body>
<h1>cxrutils reports: every run</h1>
<p>Generated {generated}. Each run's notebooks, model card and inference results have their own folder; a
second run never replaces the first one's pages. Runs marked <span class="synthetic">SYNTHETIC</span> were
trained or evaluated on rendered phantoms and say nothing about real chest X-rays.</p>
<table><thead><tr><th>Run</th><th>Reports</th><th>Headline</th><th>Data source</th><th>Profile</th>
<th>Also</th><th>Last finished</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{others}
</body></html>
"""


_INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxrutils reports</title>
""" + _STYLE + """</head><body>
<h1>cxrutils reports</h1>
<p>{up}Generated {generated} by <code>cxrutils reports</code>. Reports marked
<span class="synthetic">SYNTHETIC</span> were computed on rendered phantoms and say
nothing about real chest X-rays.</p>
<table><thead><tr><th>Report</th><th>Status</th><th>Headline</th><th>Data source</th><th>Run time</th>
<th>Profile</th><th>Finished</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{others}
</body></html>
"""


def report_folder_name(profile: dict[str, Any]) -> str:
    """The name of the folder a profile's reports go to: its run's folder name (notebook 05's ``run_dir`` when set),
    or ``comparisons/<comparison name>`` for runs compared (notebook 06's ``run_dirs``), or
    ``external/<run name>-<collection>`` for a run on an external collection (notebook 07)."""
    if _is_external(profile):
        run_name = Path(str(profile["parameters"].get("run_dir") or "run")).name
        collection = str(profile["parameters"].get("collection") or "collection")
        if not SAFE_NAME.fullmatch(f"{run_name}-{collection}"):
            raise SettingsError(f"run_dir {run_name!r} and collection {collection!r} must make a plain folder name "
                                "(letters, digits, dot, dash, underscore)")
        return f"{EXTERNAL_FOLDER}/{run_name}-{collection}"
    if profile["parameters"].get("run_dirs"):
        parameters = profile["parameters"]
        try:
            name = comparison_name(parameters["run_dirs"], parameters.get("comparison_name"))
        except ValueError as err:
            raise SettingsError(str(err)) from err
        return f"{COMPARISONS_FOLDER}/{name}"
    run_dir = str(profile["parameters"].get("run_dir") or "")
    return Path(run_dir).name if run_dir else profile_train_config(profile).run_dir.name


def resolve_profile(profile_name: str, overrides: list[str] | None = None, only: list[str] | None = None,
                    ) -> tuple[dict[str, Any], list[Path]]:
    """The profile with its ``--set`` overrides applied, and the notebooks it runs; ``SettingsError`` when either is off.

    An unknown profile, notebook, setting or parameter, or a value of the wrong type, fails
    here, before any notebook starts.
    """
    profile = load_profile(profile_name)
    notebooks = select_notebooks(profile, only or [], notebook_paths())
    profile = apply_overrides(profile, overrides or [], parameters=_declared(notebooks) - SHARED_PARAMETERS)
    profile_train_config(profile)  # an unknown training profile or a bad setting fails here, not in a notebook
    return profile, notebooks


def run_reports(
    profile_name: str,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    show_code: bool = False,
    reports_dir: str | os.PathLike[str] = REPORTS_DIR,
    into: str | os.PathLike[str] | None = None,
) -> int:
    """Run the profile's notebooks (``only`` narrows them) with ``--set`` overrides; 0 when every one succeeded.

    The reports go to ``reports_dir/<run name>/`` and ``reports_dir/index.html`` lists every
    run's folder; ``into`` names the folder instead, and no index of runs is written (the
    rehearsal's layout). A bad profile, setting or data root is a ``SettingsError`` (or
    ``FileNotFoundError``) before any notebook starts.
    """
    profile, notebooks = resolve_profile(profile_name, overrides, only)
    top = resolve(reports_dir)
    run_reports_dir = resolve(into) if into is not None else top / report_folder_name(profile)
    run_reports_dir.mkdir(parents=True, exist_ok=True)
    if "settings" in _declared(notebooks) and not profile["parameters"].get("run_dir"):
        # Notebooks that read the data: a phantom root is built, a missing one named. Notebook 05 given a run
        # folder needs none (its films are the paths given), so a machine without the training data can run it.
        try:
            prepare_data_root(profile_train_config(profile).data_root)
        except ValueError as err:
            raise SettingsError(str(err)) from err
    parameters = {**profile["parameters"], "train_profile": profile["train_profile"], "settings": profile["settings"]}
    entries: list[dict[str, Any]] = []
    failed = False
    for notebook in notebooks:
        if failed:
            entries.append(
                {"notebook": notebook.stem, "status": "not run", "status_reason": "an earlier notebook failed"}
            )
            continue
        print(f"== {notebook.name} ({profile_name})", flush=True)
        entry = run_notebook(notebook, parameters, run_reports_dir, show_code)
        entries.append(entry)
        print(f"   {entry['status']} in {entry['run_seconds']} s -> {run_reports_dir / notebook.stem}.html", flush=True)
        failed = entry["status"] == "failed"
        if failed:
            print(f"   error: {entry['status_reason']}", file=sys.stderr, flush=True)
    if not failed:
        write_card_if_trained(profile, run_reports_dir)
    up_href = Path(os.path.relpath(top / INDEX_PAGE, run_reports_dir)).as_posix()
    index = write_index(entries, profile_name, run_reports_dir, in_runs_index=into is None, up_href=up_href)
    print(f"index: {index}", flush=True)
    if into is None:
        print(f"index of runs: {write_runs_index(top)}", flush=True)
    return 1 if failed else 0


def _is_external(profile: dict[str, Any]) -> bool:
    """Whether the profile runs notebook 07: a run on an external collection."""
    return bool(profile["parameters"].get("external_root")) or profile.get("notebooks") == [EXTERNAL_NOTEBOOK]


def write_card_if_trained(profile: dict[str, Any], reports_dir: Path) -> Path | None:
    """The model card of the profile's run, when that run has been trained and evaluated."""
    if profile["parameters"].get("run_dirs") or _is_external(profile):
        return None  # runs compared, or a run on another collection: each run's card is in its own folder
    given = profile["parameters"].get("run_dir")  # notebook 05's run, when it names one
    run_dir = resolve(given) if given else profile_train_config(profile).run_dir
    if not run_folder.metrics_path(run_dir).is_file():
        return None
    with stage("model card"):
        page = write_model_card(run_dir, reports_dir)
    print(f"model card: {page}", flush=True)
    return page


def _declared(notebooks: list[Path]) -> set[str]:
    """Every parameter the notebooks' parameters cells declare."""
    import papermill as pm

    return set().union(*(pm.inspect_notebook(str(notebook)) for notebook in notebooks))


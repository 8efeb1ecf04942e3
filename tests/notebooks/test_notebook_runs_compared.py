"""Notebook 06 through the reports runner, on run folders written without training (tests/helpers/run_folders.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from run_folders import clustered_predictions, perturbed, write_run

from cxrutils.cli import main as cli_main
from cxrutils.compare.runs import COMPARISON_JSON, comparison_name
from cxrutils.publish import runner
from cxrutils.summary import SUMMARY_NAME
from cxrutils.text import html_text

pytestmark = pytest.mark.notebook

NOTEBOOK = "06_runs_compared"
HOSTILE = "lr<b>0.01"  # a run folder named like markup: shown as text


def test_notebook_06_shows_every_item_and_saves_what_it_shows(tmp_path: Path):
    films = clustered_predictions(n_patients=80, seed=1)
    runs_dir = tmp_path / "runs"
    runs = [write_run(runs_dir / "base", films),
            write_run(runs_dir / "base_seed1", perturbed(films, 0.5, seed=1), seed=1),
            write_run(runs_dir / HOSTILE, perturbed(films, 0.5, seed=2, shift=0.3), seed=0, lr=0.01, epochs=4)]
    reports_dir = tmp_path / "reports"
    code = cli_main(["reports", "--profile", "runs_compared", "--reports-dir", str(reports_dir),
                     "--set", f"run_dirs={json.dumps([str(run) for run in runs])}", "--set", "n_bootstrap=50"])
    assert code == 0
    name = comparison_name(runs)
    folder = reports_dir / "comparisons" / name
    summary = json.loads((folder / NOTEBOOK / SUMMARY_NAME).read_text())
    saved = json.loads((runs_dir / "comparisons" / name / COMPARISON_JSON).read_text())
    assert summary["comparison_json"] == str(runs_dir / "comparisons" / name / COMPARISON_JSON)
    assert summary["headline"] == saved["headline"] and summary["synthetic"] is True
    page = (folder / f"{NOTEBOOK}.html").read_text()
    # Every item of the report, in its section.
    for heading in ("1. The runs and their films", "2. What differs between the runs", "3. AUROC of each run",
                    "4. Each run against the reference", "5. Training curves", "6. Seeds", "7. Saved results"):
        assert heading in page, heading
    assert "SYNTHETIC DATA" in page and "SYNTHETIC phantoms" in page
    assert f"Every run scored the same {len(films):,} test films" in page
    assert "DeLong p" in page and "Holm p" in page and "BH p" in page
    assert ">lr</th>" in page or ">lr<" in page  # the setting that differs
    # (the HTML writer turns &#x27; back into a quote)
    assert html_text(saved["spread_sentence"]).replace("&#x27;", "'") in page and "mean ± SD across seeds" in page
    assert page.count("data:image/png") >= 3  # two forest plots and the training curves
    # The hostile run name is text everywhere.
    assert "<b>0.01" not in page and "lr&lt;b&gt;0.01" in page
    # The groups: base and base_seed1 (seeds 0, 1), the lr=0.01 run alone; its difference set against their spread.
    assert [g["runs"] for g in saved["seed_groups"]] == [["base", "base_seed1"], [HOSTILE]]
    assert {row["exceeds_spread"] for row in saved["between_groups"]} <= {True, False}
    assert saved["settings_differences"]["lr"][HOSTILE] == 0.01
    assert set(saved["history"]) == {"base", "base_seed1", HOSTILE} and len(saved["history"][HOSTILE]) == 4
    # The comparison's own index links back to the index of runs, which lists it.
    index_page = (folder / "index.html").read_text()
    assert "href='../../index.html'" in index_page
    top = (reports_dir / "index.html").read_text()
    assert f"href='comparisons/{name}/index.html'" in top and html_text(saved["headline"]) in top
    # Both indexes link runs_compared.json inside the reports folder: a copy beside the report, the saved document.
    linked = re.findall(r"href='([^']+\.json)'", index_page)
    assert linked == [f"{NOTEBOOK}/{COMPARISON_JSON}"]
    assert json.loads((folder / linked[0]).read_text()) == saved
    assert re.findall(r"href='([^']+\.json)'", top) == [f"comparisons/{name}/{NOTEBOOK}/{COMPARISON_JSON}"]
    entry = json.loads((folder / runner.INDEX_JSON_NAME).read_text())[NOTEBOOK]
    assert entry["result_json"] == linked[0]
    assert not (folder / "model_card.html").exists()


def test_runs_that_scored_other_films_stop_the_notebook_with_the_difference(tmp_path: Path):
    films = clustered_predictions(n_patients=40, seed=2)
    runs = [write_run(tmp_path / "runs" / "a", films), write_run(tmp_path / "runs" / "b", films.iloc[2:], seed=1)]
    reports_dir = tmp_path / "reports"
    code = cli_main(["reports", "--profile", "runs_compared", "--reports-dir", str(reports_dir),
                     "--set", f"run_dirs={json.dumps([str(run) for run in runs])}", "--set", "n_bootstrap=20"])
    assert code == 1
    entry = json.loads((reports_dir / "comparisons" / "a-vs-b" / runner.INDEX_JSON_NAME).read_text())[NOTEBOOK]
    assert entry["status"] == "failed" and "FilmsDifferError" in entry["status_reason"]
    assert "2 film(s) only in run a" in entry["status_reason"]

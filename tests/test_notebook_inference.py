"""Notebook 05 through the reports runner on the tiny trained run, with its default films (what make demo runs)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrutils.engine import run_folder
from cxrutils.engine.predict import predict_split
from cxrutils.inference.scoring import CSV_NAME, SCORED
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.report import runner as reports

pytestmark = pytest.mark.notebook
NOTEBOOK = "05_inference"


def test_inference_notebook_scores_test_films_as_evaluation_does_and_the_index_links_it(tiny_run, tmp_path):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))
    reports_dir = tmp_path / "reports"
    code = reports.main(["--profile", "demo", "--only", "05", "--set", f"runs_dir={run_dir.parent}",
                         "--set", f"name={run_dir.name}",
                         "--set", f"data_root={run_folder.read_config(run_dir)['data_root']}",
                         "--set", "n_films=3", "--reports-dir", str(reports_dir)])
    assert code == 0

    summary = json.loads((reports_dir / NOTEBOOK / reports.SUMMARY_NAME).read_text())
    assert (summary["scored"], summary["refused"], summary["synthetic"]) == (3, 0, True)
    table = pd.read_csv(reports_dir / NOTEBOOK / CSV_NAME)
    split = run_folder.read_split(run_dir).set_index("image")["split"]
    assert len(table) == 3 and set(table["status"]) == {SCORED} and set(split[table["image"]]) == {"test"}

    probabilities = [probability_column(f) for f in FINDINGS]
    reference = predict_split(run_folder.open_run(run_dir), "test").set_index("image").loc[table["image"]]
    np.testing.assert_allclose(table[probabilities].to_numpy(), reference[probabilities].to_numpy(), atol=2e-6)

    page = (reports_dir / f"{NOTEBOOK}.html").read_text()
    assert "SYNTHETIC TRAINING DATA" in page and "view not recorded in the file" in page  # PNGs carry no view
    assert (reports_dir / NOTEBOOK / "inference.html").is_file()
    entry = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())[NOTEBOOK]
    assert entry["status"] == "ok" and entry["headline"] == "3 files: 3 scored, 0 refused"
    assert f"href='{NOTEBOOK}.html'" in (reports_dir / "index.html").read_text()

"""Notebook 05 through the reports runner on the tiny trained run, with its default films (what make demo runs)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrutils.cli import main as cli_main
from cxrutils.engine import run_folder
from cxrutils.engine.predict import predict_split
from cxrutils.inference.scoring import CSV_NAME, SCORED
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.publish import runner as reports
from cxrutils.publish.inference_page import PAGE_NAME
from cxrutils.summary import SUMMARY_NAME

pytestmark = pytest.mark.notebook
NOTEBOOK = "05_inference"


def test_inference_notebook_scores_test_films_as_evaluation_does_and_the_index_links_it(tiny_run, tmp_path):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))
    reports_dir = tmp_path / "reports"
    code = cli_main(["reports", "--profile", "demo", "--only", "05", "--set", f"runs_dir={run_dir.parent}",
                         "--set", f"name={run_dir.name}",
                         "--set", f"data_root={run_folder.read_config(run_dir)['data_root']}",
                         "--set", "n_films=3", "--reports-dir", str(reports_dir)])
    assert code == 0

    summary = json.loads((reports_dir / NOTEBOOK / SUMMARY_NAME).read_text())
    assert (summary["scored"], summary["refused"], summary["synthetic"]) == (3, 0, True)
    table = pd.read_csv(reports_dir / NOTEBOOK / CSV_NAME)
    split = run_folder.read_split(run_dir).set_index("image")["split"]
    assert len(table) == 3 and set(table["status"]) == {SCORED} and set(split[table["image"]]) == {"test"}

    probabilities = [probability_column(f) for f in FINDINGS]
    reference = predict_split(run_folder.open_run(run_dir), "test").set_index("image").loc[table["image"]]
    np.testing.assert_allclose(table[probabilities].to_numpy(), reference[probabilities].to_numpy(), atol=2e-6)

    page = (reports_dir / f"{NOTEBOOK}.html").read_text()
    assert "SYNTHETIC TRAINING DATA" in page and "view not recorded in the file" in page  # PNGs carry no view
    # One figure per film (inference_view.film_figure: the film, its bars, its overlays), nothing drawn twice.
    assert page.count("src=\"data:image/png") == 3
    inference_page = (reports_dir / NOTEBOOK / PAGE_NAME).read_text()
    pictures = table["film_picture"].tolist() + [name for names in table["overlays"].dropna() for name in
                                                 names.split("|")]
    assert len(pictures) >= 3 and all((reports_dir / NOTEBOOK / name).is_file() and f"src='{name}'" in inference_page
                                     for name in pictures)
    entry = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())[NOTEBOOK]
    assert entry["status"] == "ok" and entry["headline"] == "3 files: 3 scored, 0 refused"
    assert f"href='{NOTEBOOK}.html'" in (reports_dir / "index.html").read_text()

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
    reports_dir = reports_dir / run_dir.name  # each run's reports in their own folder

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


def test_a_run_folder_alone_renders_notebook_05_where_the_training_data_is_not(tiny_run, tiny_phantom_root, tmp_path):
    """A radiologist's workstation: the run folder, a PACS export, no NIH copy (the run's data_root is elsewhere).

    ``--profile inference --set run_dir=...`` needs no data root: the films are scored, the
    DICOM identifiers are in the CSV, section 3 says why it does not compare with the
    training films, and the report goes to the run's own folder, listed by the index of runs.
    """
    from cxrutils.data.dicom import write_dicom
    from cxrutils.data.images import read_image

    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "copied" / "radiology_run"))
    record = run_folder.read_config(run_dir)
    record["data_root"] = str(tmp_path / "the_training_machine" / "nih")  # not on this machine
    (run_dir / run_folder.CONFIG_NAME).write_text(json.dumps(record))
    pacs = tmp_path / "pacs_export"
    film = read_image(next((tiny_phantom_root / "images").glob("*.png")))
    write_dicom(pacs / "study1" / "IM0001", film, extra={"StudyInstanceUID": "1.2.3.4", "AccessionNumber": "ACC9"})
    write_dicom(pacs / "study1" / "IM0002", film, view="LL", extra={"StudyInstanceUID": "1.2.3.4"})
    reports_dir = tmp_path / "reports"

    code = cli_main(["reports", "--profile", "inference", "--set", f"run_dir={run_dir}", "--set", f"paths=['{pacs}']",
                     "--reports-dir", str(reports_dir)])

    assert code == 0
    folder = reports_dir / run_dir.name
    summary = json.loads((folder / NOTEBOOK / SUMMARY_NAME).read_text())
    assert (summary["scored"], summary["refused"]) == (1, 1)
    table = pd.read_csv(folder / NOTEBOOK / CSV_NAME, dtype=str, keep_default_na=False).set_index("image")
    assert table.loc["study1/IM0001", ["StudyInstanceUID", "AccessionNumber"]].tolist() == ["1.2.3.4", "ACC9"]
    assert table.loc["study1/IM0002", "status"] != SCORED and table.loc["study1/IM0002", "StudyInstanceUID"] == "1.2.3.4"
    page = (folder / f"{NOTEBOOK}.html").read_text()
    assert "Not compared with the training films" in page and "the_training_machine" in page
    # The identifiers that link a result back to the PACS are shown, not only saved: the notebook's files table and
    # the inference page.
    assert "1.2.3.4" in page and "ACC9" in page
    assert "StudyInstanceUID 1.2.3.4" in (folder / NOTEBOOK / "inference.html").read_text()
    assert f"href='{run_dir.name}/index.html'" in (reports_dir / "index.html").read_text()
    assert not (tmp_path / "the_training_machine").exists()

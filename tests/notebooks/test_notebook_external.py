"""Notebook 07 through papermill (the reports runner's ``run_notebook``) on the tiny run and phantom external roots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.data.external import external_label_map
from cxrutils.demo.external_roots import ExternalRootSpec, build_external_root
from cxrutils.engine import run_folder
from cxrutils.engine.predict import predict_split
from cxrutils.evaluate.external import PREDICTIONS_NAME, RESULT_NAME, external_dir
from cxrutils.paths import NOTEBOOKS_DIR
from cxrutils.predictions import probability_column
from cxrutils.publish.runner import run_notebook

pytestmark = pytest.mark.notebook
NOTEBOOK = NOTEBOOKS_DIR / "07_external_validation.ipynb"


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path, tmp_path_factory) -> Path:
    run_dir = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("notebook07") / "runs" / tiny_run.name,
                                   ignore=shutil.ignore_patterns(run_folder.LAST_CHECKPOINT)))
    predict_split(run_folder.open_run(run_dir), "test")
    return run_dir


def _run(run_dir: Path, reports_dir: Path, **parameters: Any) -> tuple[dict[str, Any], str]:
    entry = run_notebook(NOTEBOOK, {"run_dir": str(run_dir), "n_bootstrap": 20, **parameters}, reports_dir,
                         show_code=False)
    return entry, (reports_dir / f"{NOTEBOOK.stem}.html").read_text()


def test_chexpert_phantoms_home_and_away_with_a_not_external_torchxrayvision_model(evaluated_run, tmp_path):
    root = build_external_root(tmp_path / "chexpert", ExternalRootSpec("chexpert", n_patients=6, seed=4,
                                                                       positives_per_finding=1))
    entry, page = _run(evaluated_run, tmp_path / "reports", collection="chexpert", external_root=str(root),
                       max_films=20, txv_models=["densenet121-res224-chex"], txv_home=False,
                       use_random_txv_weights_for_testing=True, weights_dir=str(tmp_path / "no_weights"))
    assert entry["status"] == "ok", entry["status_reason"]
    assert entry["synthetic"] is True and entry["headline"].startswith(RANDOM_INIT_LABEL)
    assert "SYNTHETIC DATA" in page and page.count("SYNTHETIC phantoms") >= 3 and RANDOM_INIT_LABEL in page
    # CheXpert's chex model trained on these films: shown as not external, and no model is the headline.
    assert "not external" in page and "none is the headline" in page
    for finding in external_label_map("chexpert").not_available:
        assert external_label_map("chexpert")[finding].reason.split(";")[0][:40] in page.replace("&#x27;", "'")

    saved = json.loads((external_dir(evaluated_run, "chexpert") / RESULT_NAME).read_text())
    assert saved["models"]["densenet121-res224-chex"]["verdict"] == "not external" and saved["headline_txv"] is None
    import pandas as pd

    scored = pd.read_csv(external_dir(evaluated_run, "chexpert") / PREDICTIONS_NAME)
    assert len(scored) == saved["summary"]["films_scored"] <= 20
    for row in saved["findings"]:
        if row["status"] == "mapped" and row.get("away_auroc") is not None:
            known = scored[row["finding"]].notna()
            assert row["away_auroc"] == pytest.approx(roc_auc_score(
                scored.loc[known, row["finding"]], scored.loc[known, probability_column(row["finding"])]), abs=1e-5)


def test_padchest_phantoms_map_every_finding_and_without_a_root_the_report_is_skipped(evaluated_run, tmp_path):
    root = build_external_root(tmp_path / "padchest", ExternalRootSpec("padchest", n_patients=4, seed=2,
                                                                       positives_per_finding=1))
    entry, page = _run(evaluated_run, tmp_path / "reports", collection="padchest", external_root=str(root),
                       max_films=16, txv_models=[])
    assert entry["status"] == "ok", entry["status_reason"]
    saved = json.loads((external_dir(evaluated_run, "padchest") / RESULT_NAME).read_text())
    assert saved["not_available"] == [] and "labels all 14 NIH findings" in page
    home = run_folder.read_predictions(evaluated_run, "test")
    for row in saved["findings"]:
        assert row["home_prevalence"] == pytest.approx(home[row["finding"]].mean())
    assert "SYNTHETIC DATA" in page and "No TorchXRayVision model was scored" in page

    entry, page = _run(evaluated_run, tmp_path / "reports_default")  # as the demo profile runs it: no root
    assert (entry["status"], entry["status_reason"]) == ("skipped", "no external root")
    assert "No external_root given" in page and np.isfinite(entry["run_seconds"])

"""Notebook 04 through the reports runner on the tiny run: skipped without weights, end to end with them."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrutils.cli import main as cli_main
from cxrutils.compare import txv
from cxrutils.compare.comparison import LEAKAGE_CAVEAT
from cxrutils.compare.provenance import CLEAN, DEFAULT_MODELS, MAY_HAVE_SEEN
from cxrutils.data.cache import ImageCache
from cxrutils.engine import run_folder
from cxrutils.labels import FINDINGS
from cxrutils.publish import runner as reports

with warnings.catch_warnings():
    import torchxrayvision as xrv

pytestmark = pytest.mark.notebook

NOTEBOOK = "04_txv_comparison"
MODEL, CLEAN_MODEL = DEFAULT_MODELS  # the recipes' comparator, which may have seen the test films, and the clean one
SPEC = txv.txv_spec(MODEL)
# A part of the leakage caveat without quotes (the HTML escapes those).
LEAKAGE_WORDS = "which overlap the official test list"
assert LEAKAGE_WORDS in LEAKAGE_CAVEAT


@pytest.fixture
def run_dir(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run: the notebook writes predictions_test.csv and comparison.json into it."""
    ignore = shutil.ignore_patterns(run_folder.LAST_CHECKPOINT)
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name, ignore=ignore))


def _run(run_dir: Path, reports_dir: Path, *overrides: str) -> tuple[int, dict[str, Any], str, dict[str, Any]]:
    """Exit code, index entry, HTML and comparison.json of one run of notebook 04."""
    data_root = run_folder.read_config(run_dir)["data_root"]
    sets = [f"runs_dir={run_dir.parent}", f"name={run_dir.name}", f"data_root={data_root}", "n_bootstrap=50",
            *overrides]
    argv = ["--profile", "demo", "--only", "04", "--reports-dir", str(reports_dir)]
    code = cli_main(["reports", *argv] + [arg for text in sets for arg in ("--set", text)])
    reports_dir = reports_dir / run_dir.name  # each run's reports in their own folder
    entry = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())[NOTEBOOK]
    page = (reports_dir / f"{NOTEBOOK}.html").read_text()
    return code, entry, page, json.loads((run_dir / run_folder.COMPARISON_NAME).read_text())


def _per_class(saved: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(saved["models"][MODEL]["per_class"]).set_index("finding")


def test_without_weights_the_comparison_is_skipped_with_the_file_folder_and_url(run_dir: Path, tmp_path: Path):
    weights_dir = tmp_path / "no_weights"
    weights_dir.mkdir()
    code, entry, page, saved = _run(run_dir, tmp_path / "reports", f"weights_dir={weights_dir}")
    assert code == 0
    assert (entry["status"], entry["status_reason"]) == ("skipped", "no weights")
    assert SPEC.weights_file in entry["headline"]
    assert SPEC.weights_file in page and str(weights_dir) in page and SPEC.weights_url in page
    assert "Comparison skipped" in page and "skipped" in page
    assert LEAKAGE_WORDS in page and "SYNTHETIC DATA" in page  # the caveat is shown even when skipped
    assert saved["status"] == "skipped" and saved["status_reason"] == "no weights"
    # Each default model is skipped with its own file, the folder and the URL.
    assert saved["missing_weights"] == [
        {"model": name, "weights_file": txv.txv_spec(name).weights_file, "folder": str(weights_dir),
         "url": txv.txv_spec(name).weights_url} for name in DEFAULT_MODELS
    ]
    assert all(txv.txv_spec(name).weights_file in page for name in DEFAULT_MODELS)
    assert any("weights_dir" in step for step in saved["instructions"]) and saved["models"] == {}
    # Nothing after the skip touched the run: no test predictions were made.
    assert not (run_dir / run_folder.predictions_name("test")).exists()


def test_random_weights_run_the_whole_comparison_and_say_so(run_dir: Path, tmp_path: Path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    code, entry, page, saved = _run(
        run_dir, tmp_path / "reports", "use_random_txv_weights_for_testing=true", f"weights_dir={empty}"
    )
    assert code == 0 and entry["status"] == "ok"
    assert entry["headline"].startswith(txv.RANDOM_INIT_LABEL) and entry["random_init"] is True
    assert txv.RANDOM_INIT_LABEL in page and "Comparison skipped" not in page
    assert saved["status"] == "ok" and saved["random_init"] is True
    assert saved["random_init_label"] == txv.RANDOM_INIT_LABEL
    # Both default models are compared, each under the banner of what it may have seen; the clean one leads.
    assert set(saved["models"]) == set(DEFAULT_MODELS) and saved["lead_model"] == CLEAN_MODEL
    assert saved["models"][MODEL]["provenance"]["verdict"] == MAY_HAVE_SEEN
    assert saved["models"][CLEAN_MODEL]["provenance"]["verdict"] == CLEAN
    assert f"{MODEL}: {MAY_HAVE_SEEN}." in page and f"{CLEAN_MODEL}: {CLEAN}." in page
    assert page.index(f"{CLEAN_MODEL}: {CLEAN}.") < page.index(f"{MODEL}: {MAY_HAVE_SEEN}.")
    assert entry["headline"].index(CLEAN_MODEL) < entry["headline"].index(MODEL)
    record = saved["models"][MODEL]
    assert record["random_init"] is True and record["label"] == txv.RANDOM_INIT_LABEL
    assert txv.RANDOM_INIT_LABEL in record["display_name"] and record["weights_path"] is None
    assert any(LEAKAGE_WORDS in caveat for caveat in record["caveats"])

    # The per-class table scores our own test predictions, which the notebook wrote into the run.
    ours = pd.read_csv(run_dir / run_folder.predictions_name("test"))
    table = _per_class(saved)
    assert list(table.index) == list(FINDINGS) and record["images"] == len(ours)
    scored = table[table["auroc_ours"].notna()]
    assert len(scored) >= 2  # the scorable ones: 2 positive and 2 negative films, from 2 patients each
    for finding, row in scored.iterrows():
        assert row["auroc_ours"] == pytest.approx(roc_auc_score(ours[finding], ours[f"prob_{finding}"]))
        assert 0 <= row["auroc_txv"] <= 1 and row["ours_ci_low"] <= row["auroc_ours"] <= row["ours_ci_high"]
        assert record["p_values"][finding]["delong"] <= record["p_values"][finding]["holm"] <= 1
    mean = record["mean_difference"]
    assert mean["findings"] == list(scored.index)
    assert mean["difference"] == pytest.approx(scored["difference"].mean())
    assert mean["ci_low"] <= mean["difference"] <= mean["ci_high"]
    # Thresholds: both models on validation, TXV also at its published op_threshs.
    settings = {(row["model"], row["thresholds"]) for row in record["classification"]}
    assert len(settings) == 3 and any(source == "TorchXRayVision op_threshs" for _, source in settings)
    assert {row["subgroup"] for row in record["subgroups"]} == {"sex", "view"}
    # Subgroup cells under the one rule: 5 patients with a positive film in the group; the grid is exploratory.
    assert saved["settings"]["subgroup_min_positive_patients"] == 5
    for row in record["subgroups"]:
        if row["finding"] != "mean" and row["auroc_ours"] is not None:
            assert row["positive_patients"] >= 5
    assert "exploratory" in page
    # Who the compared films come from, computed on them; the clean model is a transfer comparison, not "clean".
    counts = ours["patient_id"].value_counts()
    assert (saved["clusters"]["films"], saved["clusters"]["patients"]) == (len(ours), counts.size)
    assert f"come from {counts.size:,} patients" in page and "3.6 per patient" not in page
    assert "(clean)" not in entry["headline"] and "a transfer comparison" in entry["headline"]


def test_a_weights_file_in_weights_dir_is_loaded_by_torchxrayvision_and_compared(run_dir: Path, tmp_path: Path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.manual_seed(7)
    torch.save(xrv.models.DenseNet(), weights_dir / SPEC.weights_file)  # release format: a pickled whole module
    code, entry, page, saved = _run(run_dir, tmp_path / "reports", f"weights_dir={weights_dir}")
    assert code == 0 and entry["status"] == "ok" and entry["random_init"] is False
    # Only the NIH model's file is there: it is compared, the clean one is skipped with its file named.
    assert set(saved["models"]) == {MODEL} and saved["lead_model"] is None
    assert [m["model"] for m in saved["missing_weights"]] == [CLEAN_MODEL]
    assert f"skipped (no weights): {CLEAN_MODEL}" in entry["headline"]
    # (the narrative mentions the label; no output carries it)
    assert txv.RANDOM_INIT_LABEL not in page and "RANDOMLY INITIALISED" not in entry["headline"]
    record = saved["models"][MODEL]
    assert record["random_init"] is False and record["weights_path"] == str(weights_dir / SPEC.weights_file)
    assert record["op_thresholds"]["Hernia"] == pytest.approx(
        xrv.models.model_urls[MODEL]["op_threshs"][xrv.datasets.default_pathologies.index("Hernia")]
    )

    # The TXV AUROCs are those of this file's weights on our cached test images.
    ours = pd.read_csv(run_dir / run_folder.predictions_name("test"))
    model = txv.load_txv_model(MODEL, weights_dir)
    cache = ImageCache.open(run_folder.read_config(run_dir)["cache_dir"])
    with pytest.warns(UserWarning, match="upsampled"):  # the tiny run caches 32 px images
        probabilities = txv.predict_txv(model, cache, names=ours["image"].tolist(), show_progress=False)
    table = _per_class(saved)
    scored = table[table["auroc_txv"].notna()]
    assert len(scored) >= 2  # the scorable ones: 2 positive and 2 negative films, from 2 patients each
    for finding, row in scored.iterrows():
        column = model.findings.index(finding)
        assert row["auroc_txv"] == pytest.approx(roc_auc_score(ours[finding], probabilities[:, column]))
    assert np.isfinite(saved["models"][MODEL]["mean_difference"]["difference"])

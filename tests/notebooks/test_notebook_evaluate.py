"""Notebook 03 through the reports runner, on the tiny trained run."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from cxrutils.engine import run_folder
from cxrutils.publish import runner as reports

pytestmark = pytest.mark.notebook


def test_evaluation_reports_mean_auroc_with_its_interval_at_the_validation_thresholds(rendered_reports, tmp_path):
    """Notebook 03 as the reports runner ran it after notebook 02 (``rendered_reports``: the tiny run, 50 resamples)."""
    assert rendered_reports.returncode == 0, rendered_reports.terminal[-4000:]
    run_dir, reports_dir = rendered_reports.run_dir, rendered_reports.reports_dir
    thresholds_file = run_dir / run_folder.THRESHOLDS_NAME

    metrics = json.loads((run_dir / run_folder.METRICS_NAME).read_text())
    mean = metrics["mean_auroc"]
    assert math.isfinite(mean["auroc"])
    assert mean["ci_low"] <= mean["auroc"] <= mean["ci_high"] and mean["ci_low"] < mean["ci_high"]
    assert metrics["bootstrap"]["n_resamples"] == 50 and metrics["bootstrap"]["resampling"].startswith("patients")
    assert (metrics["split"], metrics["synthetic"], metrics["images_match_training"]) == ("test", True, True)
    assert metrics["n_images"] == len(run_folder.read_predictions(run_dir, "test")) > 0

    # The thresholds are the run's validation thresholds, used as they are; the file is as training left it
    # (training writes it before each epoch's history, and nothing after).
    assert thresholds_file.stat().st_mtime_ns <= (run_dir / run_folder.HISTORY_JSON).stat().st_mtime_ns
    validation = json.loads(thresholds_file.read_text())["youden"]
    assert metrics["thresholds"]["method"] == "youden"
    assert metrics["thresholds"]["values"] == validation
    assert {f: p["threshold"] for f, p in metrics["operating_points"].items()} == validation

    # The tiny phantom test split has boxes: Grad-CAM is scored beside its random-heatmap chance level.
    located = metrics["localization"]
    assert located["available"] is True and located["boxes"] > 0
    assert set(located["random_baseline"]) == set(located["scores"])
    # The phantom films are 64 px and their boxes are in the 1024-px NIH frame: mapped onto the films, every box
    # is on its film.
    assert located["boxes_outside_film"] == 0 and located["outside_film"] == []

    entry = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())["03_evaluate"]
    assert entry["status"] == "ok" and entry["synthetic"] is True
    assert re.search(r"mean AUROC \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", entry["headline"]), entry["headline"]
    page = (reports_dir / "03_evaluate.html").read_text()
    assert "SYNTHETIC DATA" in page
    assert "macro avg" in page and "samples avg" in page
    assert "meaningless" in page  # the published-results table is not a comparison on phantoms

    # Radiologist labels: the tiny split's films that Google's panel labelled are scored, under the phantom warning.
    from cxrutils.data.radiologist_labels import read_radiologist_labels

    labelled = run_folder.read_predictions(run_dir, "test")["image"].isin(read_radiologist_labels().index).sum()
    radiologist = metrics["radiologist_labels"]
    if labelled:
        assert radiologist["films"] == labelled and "measures nothing about the model" in page
    else:
        assert radiologist == {"available": False, "films": 0} and "so this section is empty" in page

    # Who the films come from, computed on the scored films (not the dataset's 3.6 films per patient).
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    scored = run_folder.read_predictions(run_dir, "test")
    counts = scored["patient_id"].value_counts()
    clusters = metrics["clusters"]
    assert (clusters["films"], clusters["patients"]) == (len(scored), counts.size) == (metrics["n_images"],
                                                                                      metrics["n_patients"])
    assert clusters["films_per_patient"]["max"] == counts.max()
    assert clusters["top_decile"]["share_of_films"] == pytest.approx(
        counts.nlargest(math.ceil(counts.size / 10)).sum() / len(scored))
    assert "3.6 films per patient" not in page and f"come from {counts.size:,} patients" in page
    # Beside the film-level AUROC: each patient weighing the same (scikit-learn's sample_weight), and first films.
    weights = 1.0 / scored["patient_id"].map(counts).to_numpy()
    patient_level = metrics["patient_level_auroc"]["per_class"]
    checked = 0
    for finding, row in patient_level.items():
        if finding != "mean" and row["auroc_weighted"] is not None:
            assert row["auroc_weighted"] == pytest.approx(
                roc_auc_score(scored[finding], scored[f"prob_{finding}"], sample_weight=weights))
            checked += 1
    assert checked >= 2 and "first film per patient" in page and "sensitivity analysis" in page
    assert patient_level["mean"]["auroc_films"] == pytest.approx(np.mean(
        [metrics["per_class"][f]["auroc"] for f in metrics["patient_level_auroc"]["mean_over"]]))
    # Subgroups: the one rule in positive patients, an exploratory grid, and no claim from overlapping intervals.
    assert metrics["subgroups"]["min_positive_patients"] == 5
    shown = pd.DataFrame(metrics["subgroups"]["table"])
    shown = shown[(shown["finding"] != "mean") & shown["auroc"].notna()]
    assert (shown["positive_patients"] >= 5).all()
    assert "Overlapping intervals say" not in page and "exploratory" in page
    ages = pd.DataFrame(metrics["subgroups"]["table"]).query("subgroup == 'age band'")["value"].unique()
    assert set(ages) <= {"<18", "18-39", "40-59", "60-79", "80+"}

    # The runner wrote the run's model card from the run folder, and the index links it.
    card = json.loads((reports_dir / "model_card.json").read_text())
    assert card["synthetic"] is True and card["evaluation"]["mean_auroc"]["auroc"] == mean["auroc"]
    assert card["data"]["split"]["patients_in_two_splits"] == 0
    assert card["training"]["best_epoch"]["epoch"] >= 1 and card["model"]["initial_weights"]["kind"].startswith("none")
    children = metrics["paediatric"]
    children_line = f"Children: {children['films']:,} of the {metrics['n_images']:,}"
    assert any(children_line in line for line in card["limitations"])
    assert "not agreement with the films" in card["data"]["label_definitions"]
    assert "above 90% accurate" in card["data"]["label_definitions"]
    card_page = (reports_dir / "model_card.html").read_text()
    assert "SYNTHETIC DATA" in card_page and card_page.count("TO BE WRITTEN BY A PERSON") == 4
    assert "href='model_card.html'" in (reports_dir / "index.html").read_text()

    # The command line computes the same evaluation and writes the same file, number for number.
    from cxrutils.cli import main as cli_main

    copy = Path(shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name))
    (copy / run_folder.METRICS_NAME).unlink()
    assert cli_main(["evaluate", "--run", str(copy), "--n-bootstrap", "50"]) == 0
    assert run_folder.read_metrics(copy) == json.loads(
        run_folder.metrics_path(run_dir).read_text().replace(str(run_dir), str(copy)))  # the same, but for where it is


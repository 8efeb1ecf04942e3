"""The model card's reporting checklist and the figures it adds, against the run folder it is written from.

The run is the tiny trained run (``tiny_run``), evaluated once here on its test films; each variant
below is a copy of its small files with metrics.json or the external/ folder changed, so every
status is seen to follow what the run recorded. Figures are checked against metrics.json and
split.csv read back independently (json, pandas, sets), not through the card's own helpers.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrutils.engine import run_folder
from cxrutils.evaluate import evaluate_run, write_metrics
from cxrutils.labels import FINDINGS
from cxrutils.publish import model_card
from cxrutils.publish.model_card import (
    BY_A_PERSON,
    CLAIM,
    FILLED,
    MISSING,
    NOT_APPLICABLE,
    PERSON_ITEMS,
    REPORTING_ITEMS,
    TO_BE_WRITTEN,
    TRIPOD,
    ReportingItem,
    build_card,
    render_card,
)

# TRIPOD+AI (Collins et al., BMJ 2024;385:e078378), its checklist's item column as published.
TRIPOD_NUMBERS = {
    "1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c", "9a", "9b", "9c", "10",
    "11", "12a", "12b", "12c", "12d", "12e", "12f", "12g", "13", "14", "15", "16", "17", "18a", "18b", "18c", "18d",
    "18e", "18f", "19", "20a", "20b", "20c", "21", "22", "23a", "23b", "24", "25", "26", "27a", "27b", "27c",
}
# Items that only the evaluation can fill: without metrics.json each must say to evaluate the run.
EVALUATION_ITEMS = {(CLAIM, "28"), (CLAIM, "29"), (CLAIM, "31"), (CLAIM, "32"), (CLAIM, "37"), (CLAIM, "38"),
                    (TRIPOD, "12e"), (TRIPOD, "15"), (TRIPOD, "16"), (TRIPOD, "20c"), (TRIPOD, "23a")}
HOSTILE_FINDING = "<script>alert(1)</script>"
HOSTILE_COLLECTION = '<img src=x onerror=alert(1)>=HYPERLINK("http:x")'  # a folder name: no "/"


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny run, evaluated on its test films (metrics.json written)."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("card") / "runs" / tiny_run.name,
                                   ignore=shutil.ignore_patterns(run_folder.LAST_CHECKPOINT, "tensorboard")))
    write_metrics(evaluate_run(run_dir, n_bootstrap=20, gallery_per_kind=0))
    return run_dir


def _small_copy(run_dir: Path, folder: Path) -> Path:
    """The run's JSON and CSV files (no checkpoints): all a card reads."""
    return Path(shutil.copytree(run_dir, folder / run_dir.name, ignore=shutil.ignore_patterns("*.pt", "tensorboard")))


def _rows(card: dict) -> dict[tuple[str, str], dict]:
    return {(row["checklist"], row["number"]): row for row in card["reporting_checklist"]["items"]}


def _rewrite_metrics(run_dir: Path, change) -> dict:
    metrics = json.loads(run_folder.metrics_path(run_dir).read_text())
    change(metrics)
    run_folder.metrics_path(run_dir).write_text(json.dumps(metrics))
    return metrics


def test_the_checklist_has_every_claim_item_once_and_every_tripod_item():
    claim = [item.number for item in REPORTING_ITEMS if item.checklist == CLAIM]
    assert sorted(claim, key=int) == [str(number) for number in range(1, 45)]  # 1..44, each exactly once
    tripod = [item.number for item in REPORTING_ITEMS if item.checklist == TRIPOD]
    assert len(tripod) == len(set(tripod)) and set(tripod) == TRIPOD_NUMBERS
    assert {int(re.match(r"\d+", number).group()) for number in tripod} == set(range(1, 28))
    for key in PERSON_ITEMS:  # every person's blank answers some item, and every item's way is well formed
        assert any(item.person == key for item in REPORTING_ITEMS), key
    with pytest.raises(ValueError, match="exactly one"):
        ReportingItem(CLAIM, "99", "x", "x", card=("data.source",), not_applicable="both")
    with pytest.raises(ValueError, match="PERSON_ITEMS"):
        ReportingItem(CLAIM, "99", "x", "x", person="nobody")


def test_a_trained_run_not_yet_evaluated_says_to_evaluate_it(tiny_run: Path, tmp_path: Path):
    run_dir = _small_copy(tiny_run, tmp_path)
    assert not run_folder.metrics_path(run_dir).exists()
    card = build_card(run_dir)
    rows = _rows(card)
    assert len(rows) == len(REPORTING_ITEMS)
    for key in EVALUATION_ITEMS:
        assert rows[key]["status"] == MISSING and "evaluate the run" in rows[key]["note"], key
    assert rows[(CLAIM, "7")]["status"] == FILLED and rows[(CLAIM, "7")]["value"] == card["data"]["source"]
    assert rows[(CLAIM, "20")]["status"] == FILLED and rows[(CLAIM, "20")]["value"] == "0"
    assert rows[(CLAIM, "3")]["status"] == BY_A_PERSON and rows[(CLAIM, "41")]["status"] == BY_A_PERSON
    assert rows[(CLAIM, "21")]["status"] == NOT_APPLICABLE and "sample size" in rows[(CLAIM, "21")]["note"]
    assert "not tested yet" in card["study_design"]["goal"]
    # The counts are the rows, status by status.
    for checklist, counts in card["reporting_checklist"]["counts"].items():
        assert counts == {status: sum(r["status"] == status for r in rows.values() if r["checklist"] == checklist)
                          for status in (FILLED, BY_A_PERSON, NOT_APPLICABLE, MISSING)}


def test_an_evaluated_run_fills_the_evaluation_items_and_the_figures_equal_its_record(evaluated_run: Path):
    card = build_card(evaluated_run)
    rows = _rows(card)
    metrics = run_folder.read_metrics(evaluated_run)
    assert metrics["localization"]["available"] is True  # the phantom root has boxes
    for key in EVALUATION_ITEMS:
        assert rows[key]["status"] == FILLED, key
    assert rows[(CLAIM, "33")]["status"] == MISSING and "external" in rows[(CLAIM, "33")]["note"]  # none scored away

    # Prevalence shift: exactly metrics["prevalence"], validation beside test.
    shift = card["evaluation"]["prevalence_shift"]
    assert [row["finding"] for row in shift] == list(metrics["prevalence"]["test"])
    for row in shift:
        val, test = metrics["prevalence"]["validation"][row["finding"]], metrics["prevalence"]["test"][row["finding"]]
        assert row["prevalence (val)"] == val and row["prevalence (test)"] == test
        assert row["test / val"] == (pytest.approx(test / val) if val else None)

    # Outcome events per split, counted here from split.csv with plain sets.
    split = pd.read_csv(evaluated_run / run_folder.SPLIT_NAME, dtype=str, keep_default_na=False)
    labels = [set(text.split("|")) for text in split["finding_labels"]]
    for row in card["data"]["positive_films_per_split"]:
        for side in ("train", "val", "test"):
            assert row[side] == sum(row["finding"] in names and where == side
                                    for names, where in zip(labels, split["split"]))
    assert [row["finding"] for row in card["data"]["positive_films_per_split"]] == list(FINDINGS)

    # Subgroups: the rule in positive patients, marked exploratory, the means as recorded.
    subgroups = card["evaluation"]["subgroups"]
    minimum = metrics["subgroups"]["min_positive_patients"]
    assert subgroups["status"] == "exploratory" and subgroups["min_positive_patients"] == minimum
    assert f"at least {minimum} patients" in subgroups["rule"]
    assert subgroups["means"] == [row for row in metrics["subgroups"]["table"] if row["finding"] == "mean"]

    # Localization: every accuracy recorded for all boxes, beside the random heatmaps' (today's keys, no interval).
    located = card["evaluation"]["localization"]
    recorded = {key for key in metrics["localization"]["scores"]["all"] if key not in ("boxes", "patients")
                and not key.endswith(("_ci_low", "_ci_high"))}
    assert len(located["accuracies (all boxes)"]) == len(recorded)
    pointing = next(row for row in located["accuracies (all boxes)"] if row["metric"] == "pointing game")
    assert pointing["random heatmaps"].startswith(f"{metrics['localization']['random_baseline']['all']['pointing_game']:.3f}")
    assert rows[(CLAIM, "31")]["where"] == "evaluation.localization"

    page = render_card(card)
    assert page.count(TO_BE_WRITTEN) == len(PERSON_ITEMS)  # the blanks, and nowhere else
    questions = page.index(PERSON_ITEMS["intended_use"][3].replace("'", "&#x27;"))
    assert questions < page.index("<h2>Model</h2>") < page.index("<h2>Reporting checklist")  # asked at the top
    json.dumps(card, allow_nan=False)  # strict JSON


def test_the_statuses_and_figures_follow_a_changed_record(evaluated_run: Path, tmp_path: Path):
    run_dir = _small_copy(evaluated_run, tmp_path)

    def newer_localization(metrics: dict) -> None:  # the keys the extended evaluation adds, with intervals
        for row, value in (("scores", 0.4), ("random_baseline", 0.1)):
            metrics["localization"][row]["all"].update({"t_iou_0.5": value, "t_iou_0.5_ci_low": value / 2,
                                                        "t_iou_0.5_ci_high": value + 0.2})
        metrics["localization"]["versus_random"] = {  # row -> metric -> the paired difference
            "all": {"t_iou_0.5": {"gradcam": 0.4, "random": 0.1, "difference": 0.3, "ci_low": 0.05, "ci_high": 0.5,
                                  "beats_chance": True}},
            "Mass": {"t_iou_0.5": {"gradcam": 0.2, "random": 0.3, "difference": -0.1, "ci_low": -0.3,
                                   "ci_high": 0.1, "beats_chance": False}}}

    _rewrite_metrics(run_dir, newer_localization)
    located = build_card(run_dir)["evaluation"]["localization"]["accuracies (all boxes)"]
    iou = next(row for row in located if row["metric"] == "T(IoU) 0.5")
    assert iou == {"metric": "T(IoU) 0.5", "Grad-CAM [95% CI]": "0.400 [0.200, 0.600]",
                   "random heatmaps": "0.100 [0.050, 0.300]", "Grad-CAM - random [95% CI]": "0.300 [0.050, 0.500]",
                   "beats chance": True}
    assert not any(row["metric"].endswith(("ci_low", "ci_high")) for row in located)

    def nothing_located_nor_operated(metrics: dict) -> None:
        metrics["localization"] = {"available": False, "note": "no boxes on these films"}
        metrics["operating_points_with_intervals"] = {"available": False, "note": "no predictions_val.csv"}
        metrics["prevalence"]["validation"] = None

    _rewrite_metrics(run_dir, nothing_located_nor_operated)
    card = build_card(run_dir)
    rows = _rows(card)
    assert rows[(CLAIM, "31")]["status"] == MISSING and "BBox_List_2017.csv" in rows[(CLAIM, "31")]["note"]
    assert rows[(CLAIM, "38")]["status"] == MISSING and rows[(CLAIM, "32")]["status"] == FILLED
    assert card["evaluation"]["localization"] == {"available": False, "boxes": None, "gradcam_layer": None,
                                                  "note": "no boxes on these films"}
    assert all(row["prevalence (val)"] is None for row in card["evaluation"]["prevalence_shift"])


def _external_document(collection: str, findings: list[dict]) -> dict:
    """external.json as cxrutils.evaluate.external writes it, the keys the card reads."""
    return {"collection": collection, "synthetic": True, "provenance": {"external": True, "why": "another hospital"},
            "summary": {"collection": collection, "films_scored": 40, "patients_scored": 12,
                        "headline": f"{collection}: mean AUROC away"},
            "findings": findings, "home_note": None}


def test_external_validations_and_hostile_names_are_listed_as_text(evaluated_run: Path, tmp_path: Path):
    run_dir = _small_copy(evaluated_run, tmp_path)
    findings = [{"finding": "Effusion", "home_auroc": 0.81, "away_auroc": 0.70},
                {"finding": "Edema", "home_auroc": 0.75, "away_auroc": 0.64},
                {"finding": HOSTILE_FINDING, "home_auroc": 0.9, "away_auroc": None}]  # scored home only: left out
    folder = run_dir / model_card.EXTERNAL_FOLDER
    (folder / HOSTILE_COLLECTION).mkdir(parents=True)
    (folder / HOSTILE_COLLECTION / model_card.EXTERNAL_RESULT_NAME).write_text(
        json.dumps(_external_document(HOSTILE_COLLECTION, findings)))
    (folder / "padchest").mkdir()
    (folder / "padchest" / "predictions.csv").write_text("film\n")
    (folder / "vindr").mkdir()
    (folder / "vindr" / model_card.EXTERNAL_RESULT_NAME).write_text("{not json")

    def hostile(metrics: dict) -> None:
        metrics["prevalence"]["test"][HOSTILE_FINDING] = 0.5
        metrics["localization"]["scores"]["all"][HOSTILE_FINDING] = 0.25

    _rewrite_metrics(run_dir, hostile)
    card = build_card(run_dir)
    external = card["external_validation"]
    assert external["available"] is True
    by_name = {row["collection"]: row for row in external["collections"]}
    away = by_name[HOSTILE_COLLECTION]
    paired = [row for row in findings if row["away_auroc"] is not None]
    assert away["findings scored home and away"] == 2 and away["films scored"] == 40
    assert away["mean AUROC home (NIH test)"] == pytest.approx(np.mean([row["home_auroc"] for row in paired]))
    assert away["mean AUROC away"] == pytest.approx(np.mean([row["away_auroc"] for row in paired]))
    assert by_name["padchest"]["files"] == ["predictions.csv"]  # no result: the files found, by name
    assert by_name["vindr"]["files"] == [model_card.EXTERNAL_RESULT_NAME] and "JSONDecodeError" in by_name["vindr"]["note"]
    rows = _rows(card)
    assert rows[(CLAIM, "33")]["status"] == FILLED and rows[(TRIPOD, "23b")]["status"] == FILLED
    assert HOSTILE_COLLECTION in card["study_design"]["goal"]

    page = render_card(card)
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the finding, as text (prevalence and localization)
    assert "&lt;img src=x onerror=alert(1)&gt;=HYPERLINK(&quot;http:x&quot;)" in page  # the collection, as text
    assert page.count(TO_BE_WRITTEN) == len(PERSON_ITEMS)


def test_the_external_folder_names_match_where_the_external_evaluation_writes():
    from cxrutils.evaluate import external

    assert (model_card.EXTERNAL_FOLDER, model_card.EXTERNAL_RESULT_NAME) == (external.EXTERNAL_FOLDER,
                                                                             external.RESULT_NAME)

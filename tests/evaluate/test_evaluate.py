"""Evaluation and comparison as plain functions: computed without papermill, checked against their inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.compare import compare_run, txv, write_comparison
from cxrutils.engine import run_folder
from cxrutils.evaluate import evaluate_run
from cxrutils.labels import FINDINGS
from cxrutils.stats.metrics import MEAN_ROW


@pytest.fixture
def run_dir(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))


def test_evaluate_run_computes_every_table_from_the_runs_own_predictions_and_thresholds(run_dir: Path):
    result = evaluate_run(run_dir, n_bootstrap=40)
    written = run_folder.read_predictions(run_dir, "test")
    assert written["image"].tolist() == result.predictions["image"].tolist()
    assert result.gradcam_layer == "denseblock2"  # auto: the tiny run's 32 px input
    for k, finding in enumerate(FINDINGS):
        value = result.auroc.loc[finding, "auroc"]
        if np.isfinite(value):
            assert value == pytest.approx(roc_auc_score(result.labels[:, k], result.probabilities[:, k]))
    assert result.thresholds_by_finding == run_folder.read_thresholds(run_dir)["youden"]
    assert result.operating["threshold"].drop(MEAN_ROW, errors="ignore").reindex(list(FINDINGS)).equals(
        result.operating["threshold"].reindex(list(FINDINGS)))
    assert result.localization is not None and len(result.localization.boxes) > 0
    located = result.localization.table()
    assert ("T(IoBB) 0.1", "Wang et al. 2017") in located.columns
    assert ("T(IoBB) 0.25", "Wang et al. 2017") not in located.columns
    for i, row in enumerate(result.gallery.examples.itertuples()):  # a film's box is drawn as x, y, w, h
        box = result.gallery.boxes[i]
        assert box is None if np.isnan(row.x) else len(box) == 4 and 0 <= box[0] < result.input_size
    document = json.loads(json.dumps(result.to_document(), allow_nan=False))  # strict JSON
    assert document["split"] == "test" and document["synthetic"] is True
    assert document["localization"]["available"] is True and document["localization"]["boxes"] > 0
    assert document["mean_auroc"]["auroc"] == pytest.approx(result.auroc.loc[MEAN_ROW, "auroc"])
    assert "split.csv" in document["split_source"]


def test_compare_run_without_weights_is_skipped_and_says_where_the_file_goes(run_dir: Path, tmp_path: Path):
    empty = tmp_path / "weights"
    empty.mkdir()
    result = compare_run(run_dir, ["densenet121-res224-nih"], weights_dir=empty)
    assert result.skipped and result.comparisons == [] and result.inputs is None
    saved = json.loads(write_comparison(result).read_text())
    spec = txv.txv_spec("densenet121-res224-nih")
    assert saved["status"] == "skipped" and saved["missing_weights"][0]["weights_file"] == spec.weights_file
    assert saved["missing_weights"][0]["folder"] == str(empty)


def test_compare_run_with_random_weights_pairs_our_test_films_and_caps_them_by_patient(run_dir: Path, tmp_path: Path):
    result = compare_run(run_dir, ["densenet121-res224-nih"], weights_dir=tmp_path, random_init=True,
                         n_bootstrap=20, max_images=8)
    (comparison,) = result.comparisons
    assert len(comparison.test) <= 8 and result.inputs.capped
    ours = run_folder.read_predictions(run_dir, "test")
    assert set(comparison.test.images) <= set(ours["image"])
    kept_patients = set(comparison.test.patient_ids)
    assert set(ours.loc[ours["patient_id"].isin(kept_patients), "image"]) == set(comparison.test.images)
    document = result.to_document()
    assert document["random_init"] is True and document["capped"]["max_images"] == 8
    assert txv.RANDOM_INIT_LABEL in result.headline


def test_an_unfinished_run_is_neither_evaluated_nor_compared(run_dir: Path, tmp_path: Path):
    (run_dir / run_folder.BEST_CHECKPOINT).unlink()
    with pytest.raises(run_folder.NotATrainedRunError, match="checkpoint_best.pt"):
        evaluate_run(run_dir, n_bootstrap=10)
    with pytest.raises(run_folder.NotATrainedRunError, match="checkpoint_best.pt"):
        compare_run(run_dir, ["densenet121-res224-nih"], weights_dir=tmp_path, random_init=True)


def test_thresholds_without_the_chosen_method_or_a_finding_are_refused_before_anything_is_scored(run_dir: Path):
    path = run_dir / run_folder.THRESHOLDS_NAME
    thresholds = json.loads(path.read_text())
    path.write_text(json.dumps({"youden": thresholds["youden"]}))
    with pytest.raises(KeyError, match="max_f1") as error:
        evaluate_run(run_dir, threshold_method="max_f1", n_bootstrap=10)
    assert str(path) in str(error.value) and "youden" in str(error.value)
    del thresholds["youden"]["Hernia"]
    path.write_text(json.dumps(thresholds))
    with pytest.raises(KeyError, match="Hernia"):
        evaluate_run(run_dir, n_bootstrap=10)
    assert not (run_dir / run_folder.predictions_name("test")).exists()


def test_a_predictions_csv_missing_columns_is_refused_naming_them(run_dir: Path, tmp_path: Path):
    """The comparison pairs the findings both tables score: without this check a lost probability column would
    drop that finding from the comparison without a word."""
    from cxrutils.predictions import prediction_arrays

    table = run_folder.read_predictions(run_dir, "val").drop(columns=["prob_Hernia", "Edema"])
    with pytest.raises(KeyError, match="prob_Hernia") as error:
        prediction_arrays(table)
    assert "Edema" in str(error.value) and "cxrutils.predictions" in str(error.value)
    path = run_dir / run_folder.predictions_name("test")
    table.to_csv(path, index=False)  # newer than the checkpoint: the comparison reads it, not scores the split
    with pytest.raises(ValueError, match="prob_Hernia") as error:
        compare_run(run_dir, ["densenet121-res224-nih"], weights_dir=tmp_path, random_init=True)
    assert str(path) in str(error.value) and "Edema" in str(error.value)

"""The evaluation's operating points, prevalences and calibration, checked against the run's own files."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix

from cxrutils.engine import run_folder
from cxrutils.evaluate import evaluate_run, evaluation
from cxrutils.labels import FINDINGS
from cxrutils.predictions import prediction_arrays
from cxrutils.stats.calibration import logit


@pytest.fixture
def run_dir(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))


def test_operating_points_prevalences_and_calibration_come_from_validation_and_test_as_defined(run_dir: Path):
    result = evaluate_run(run_dir, n_bootstrap=30, target_sensitivity=0.8, target_specificity=0.9,
                          calibration_bins=5, recalibration="platt", gallery_per_kind=0)
    document = json.loads(json.dumps(result.to_document(), allow_nan=False))  # strict JSON
    for key in ("per_class", "thresholds", "operating_points", "classification_report", "calibration", "subgroups"):
        assert key in document  # the keys other code reads stay
    val_labels, val_probs, _ = prediction_arrays(run_folder.read_predictions(run_dir, "val"))
    test_labels, test_probs = result.labels, result.probabilities

    assert document["prevalence"]["validation"] == pytest.approx(dict(zip(FINDINGS, val_labels.mean(axis=0))))
    assert document["prevalence"]["test"] == pytest.approx(dict(zip(FINDINGS, test_labels.mean(axis=0))))

    intervals = document["operating_points_with_intervals"]
    assert intervals["available"] is True and "do not depend on prevalence" in intervals["transfer"]
    assert list(intervals["rules"]) == ["youden", "max_f1", "sensitivity 0.80", "specificity 0.90"]
    saved = run_folder.read_thresholds(run_dir)
    for method in ("youden", "max_f1"):  # the run's thresholds, as training chose them
        assert {f: row["threshold"] for f, row in intervals["rules"][method].items()} == saved[method]
    checked = 0
    for k, finding in enumerate(FINDINGS):
        row = intervals["rules"]["sensitivity 0.80"][finding]
        positives = np.sort(val_probs[val_labels[:, k] == 1, k])[::-1]
        if positives.size == 0 or val_labels[:, k].all():
            assert row["threshold"] is None
            continue
        assert row["threshold"] == positives[math.ceil(0.8 * positives.size - 1e-9) - 1]  # from its definition
        assert row["val_sensitivity"] >= 0.8
        tn, fp, fn, tp = confusion_matrix(test_labels[:, k], test_probs[:, k] >= row["threshold"],
                                          labels=[False, True]).ravel()
        if tp + fn:
            assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
        if tn + fp:
            assert row["specificity"] == pytest.approx(tn / (tn + fp))
        if row["sensitivity_ci_low"] is not None:
            assert row["sensitivity_ci_low"] <= row["sensitivity"] <= row["sensitivity_ci_high"]
        checked += 1
    assert checked >= 3

    per_class = document["calibration"]["equal_mass"]["per_class"]
    for k, finding in enumerate(FINDINGS):
        y, p = test_labels[:, k], test_probs[:, k]
        assert per_class[finding]["observed_expected"] == pytest.approx(y.sum() / p.sum())
        if 0 < y.mean() < 1:
            assert per_class[finding]["scaled_brier"] == pytest.approx(1 - np.mean((p - y) ** 2) / (y.mean() * (1 - y.mean())))
    assert document["calibration"]["equal_mass"]["n_bins"] == 5
    assert document["calibration"]["mean_ece"] == pytest.approx(result.calibration["ece"].mean())  # the old key

    # Platt scaling was fitted on the validation predictions alone: scikit-learn's fit on them gives the same.
    recalibration = document["calibration"]["recalibration"]
    assert recalibration["available"] is True and recalibration["method"] == "platt"
    fitted = 0
    for k, finding in enumerate(FINDINGS):
        y = val_labels[:, k]
        if y.min() == y.max():
            continue
        reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(logit(val_probs[:, [k]]), y)
        platt = recalibration["per_class"][finding]
        if platt["slope"] is None or abs(reference.coef_[0, 0]) > 50:  # separable on a tiny validation set
            continue
        assert platt["slope"] == pytest.approx(reference.coef_[0, 0], rel=1e-4, abs=1e-4)
        assert platt["intercept"] == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-4)
        fitted += 1
    assert fitted >= 1
    # the raw probabilities are never replaced: every other figure is still the raw model's
    assert document["per_class"][FINDINGS[0]]["auroc"] == result.auroc.loc[FINDINGS[0], "auroc"]

    for finding in FINDINGS:
        entry = document["per_class"][finding]
        if entry["average_precision_ci_low"] is not None:
            assert entry["average_precision_ci_low"] <= entry["average_precision"] <= entry["average_precision_ci_high"]

    # Between-group differences: the statistic's own function on the scored films' sex, age band and view, same seed.
    from cxrutils.data.metadata import age_band
    from cxrutils.stats.group_differences import between_group_differences

    rows = result.run.dataset.metadata.set_index("image").loc[result.predictions["image"]].reset_index()
    variables = {"sex": rows["sex"], "age band": age_band(rows["age_years"], evaluation.SUBGROUP_AGE_EDGES),
                 "view": rows["view"]}
    saved = document["subgroups"]["differences"]
    assert "Holm" in saved["family"] and set(saved["reference"]) == set(variables)
    for name, groups in variables.items():
        expected = between_group_differences(test_labels, test_probs, result.patient_ids, groups.rename(name),
                                             n_resamples=30, seed=0, class_names=FINDINGS,
                                             min_positive_patients=result.subgroup_min_positive_patients)
        got = [row for row in saved["table"] if row["subgroup"] == name]
        assert saved["reference"][name] == expected.attrs["reference"] and len(got) == len(expected)
        for row, (_, want) in zip(got, expected.iterrows()):
            assert (row["value"], row["finding"]) == (want["value"], want["finding"])
            assert (row["difference"] is None) == pd.isna(want["difference"])
            if row["difference"] is not None:
                assert row["difference"] == pytest.approx(want["difference"])
                assert (row["ci_low"], row["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]))

    summary = result.summary_table()  # the headline table sets both prevalences beside the validation threshold
    assert summary.loc[list(FINDINGS), "prevalence (val)"].tolist() == pytest.approx(val_labels.mean(axis=0).tolist())
    assert summary.loc[list(FINDINGS), "prevalence (test)"].tolist() == pytest.approx(
        test_labels.mean(axis=0).tolist())
    shift = result.prevalence_shift_table()
    assert set(shift.index) == set(FINDINGS) and "PPV expected at test prevalence" in shift.columns
    assert result.operating_table("specificity 0.90")["prevalence (val)"].tolist() == pytest.approx(
        val_labels.mean(axis=0).tolist())

    # What notebook 03 and the model card show of it: every table renders, marked as phantoms.
    import matplotlib.pyplot as plt

    from cxrutils.publish import model_card
    from cxrutils.show import evaluation_view as view
    from cxrutils.show import plots

    pages = [view.operating_points_table(result, rule).to_html() for rule in intervals["rules"]]
    pages += [view.prevalence_shift_table(result).to_html(), view.calibration_figures_table(result).to_html(),
              view.calibration_shift_table(result).to_html(), view.recalibration_table(result).to_html()]
    pages += [view.subgroup_differences_table(result).to_html(),
              view.subgroup_differences_table(result, means_only=True).to_html()]
    assert all("SYNTHETIC" in page for page in pages)
    plt.close(plots.subgroup_difference_forest(result.subgroup_differences))
    assert "sensitivity [95% CI]" in pages[0] and "PPV expected at test prevalence" in pages[4]
    figure = plots.reliability_equal_mass(result.reliability_equal_mass, result.recalibrated_reliability,
                                          result.calibration_summary, synthetic=True)
    assert len([ax for ax in figure.axes if ax.axison]) == len(FINDINGS) and figure._suptitle.get_text()
    plt.close(figure)
    card_rows = model_card._operating_point_rows(document)
    assert card_rows["rules"] == ["youden", "sensitivity 0.80", "specificity 0.90"]
    assert len(card_rows["per_finding"]) == len(FINDINGS)
    assert model_card._calibration_figures(document)["recalibration"]["method"] == "platt"
    assert len(model_card._average_precision_rows(document)) == len(FINDINGS)

    # Without the validation predictions the test-side figures stand and the document says what is missing.
    run_folder.predictions_path(run_dir, "val").unlink()
    missing = evaluation._validation_predictions(result.run)
    assert isinstance(missing, str) and "predictions_val.csv" in missing
    without = dataclasses.replace(result, operating_intervals=None, operating_note=missing, recalibration=None,
                                  recalibrated_summary=None, recalibrated_reliability=None, recalibration_note=missing,
                                  validation_prevalence=None, validation_observed_expected=None)
    document = json.loads(json.dumps(without.to_document(), allow_nan=False))
    assert document["operating_points_with_intervals"] == {"available": False, "note": missing}
    assert document["calibration"]["recalibration"] == {"available": False, "note": missing}
    assert document["prevalence"]["validation"] is None and document["calibration"]["equal_mass"]["per_class"]


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("target_sensitivity", 1.0, "target_sensitivity must lie strictly between 0 and 1"),
    ("target_specificity", 0.0, "target_specificity must lie strictly between 0 and 1"),
    ("calibration_bins", 1, "calibration_bins must be at least 2"),
    ("recalibration", "isotonic", "recalibration must be one of"),
])
def test_bad_settings_are_refused_before_any_file_is_read(setting, value, message):
    with pytest.raises(ValueError, match=message):
        evaluate_run("runs/none", **{setting: value})

"""Operating points: each rule and figure against an independent computation, and the intervals' coverage."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_curve

from cxrutils.paths import PROJ_ROOT
from cxrutils.stats.operating import (
    OperatingRule,
    bootstrap_average_precision,
    choose_operating_thresholds,
    npv_at_prevalence,
    operating_point_intervals,
    ppv_at_prevalence,
    rates_at_thresholds,
    weighted_average_precision,
    weighted_thresholds,
)
from cxrutils.stats.thresholds import choose_thresholds


def _data(n: int = 600, classes: int = 3, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < np.linspace(0.08, 0.4, classes)).astype(np.int8)
    scores = 1 / (1 + np.exp(-(rng.normal(size=(n, classes)) + 1.4 * labels - 1.5)))
    if ties:
        scores = np.round(scores, 2)
    patients = rng.integers(0, n // 3, n)
    return labels, scores, patients


@pytest.mark.parametrize("ties", [False, True])
def test_fixed_sensitivity_is_the_highest_threshold_reaching_the_target_by_definition(ties):
    labels, scores, _ = _data(ties=ties)
    for target in (0.8, 0.9, 0.95):
        chosen = choose_operating_thresholds(labels, scores, OperatingRule("fixed_sensitivity", target))
        for k in range(labels.shape[1]):
            positive = np.sort(scores[labels[:, k] == 1, k])[::-1]
            needed = math.ceil(target * positive.size - 1e-9)  # positives that must score at or above it
            assert chosen[k] == positive[needed - 1]
            assert (positive >= chosen[k]).mean() >= target
            higher = np.unique(scores[:, k])[np.unique(scores[:, k]) > chosen[k]]
            if higher.size:  # the next candidate up misses the target
                assert (positive >= higher.min()).mean() < target


@pytest.mark.parametrize("ties", [False, True])
def test_fixed_specificity_is_the_most_sensitive_observed_threshold_reaching_the_target_by_definition(ties):
    labels, scores, _ = _data(ties=ties, seed=1)
    for target in (0.8, 0.9, 0.95):
        chosen = choose_operating_thresholds(labels, scores, OperatingRule("fixed_specificity", target))
        for k in range(labels.shape[1]):
            negative = scores[labels[:, k] == 0, k]
            candidates = np.unique(scores[:, k])
            positive = scores[labels[:, k] == 1, k]
            reaching = [t for t in candidates if (negative < t).mean() >= target - 1e-12]
            best = max((positive >= t).mean() for t in reaching)  # the most sensitive of them ...
            assert chosen[k] == max(t for t in reaching if (positive >= t).mean() == best)  # ... and most specific
            # and through scikit-learn's ROC curve: the most sensitive point with fpr <= 1 - target
            fpr, tpr, cut = roc_curve(labels[:, k], scores[:, k], drop_intermediate=False)
            allowed = fpr <= 1 - target + 1e-12
            assert chosen[k] == cut[allowed][np.argmax(tpr[allowed])]


@pytest.mark.parametrize("method", ["youden", "max_f1"])
def test_youden_and_max_f1_at_unit_weights_are_the_training_time_thresholds(method):
    labels, scores, _ = _data(n=900, classes=4, seed=2)
    expected = choose_thresholds(labels, scores, method)
    np.testing.assert_array_equal(choose_operating_thresholds(labels, scores, OperatingRule(method)), expected)


@pytest.mark.parametrize("rule", [OperatingRule("youden"), OperatingRule("max_f1"),
                                  OperatingRule("fixed_sensitivity", 0.9), OperatingRule("fixed_specificity", 0.85)])
def test_a_multiplicity_counts_as_that_many_copies_of_the_film(rule):
    labels, scores, _ = _data(n=300, classes=1, seed=3)
    weights = np.random.default_rng(4).integers(0, 4, size=(3, 300)).astype(float)
    chosen = weighted_thresholds(labels[:, 0], scores[:, 0], weights, rule)
    for row, w in zip(chosen, weights):
        copies = np.repeat(np.arange(300), w.astype(int))
        assert row == choose_operating_thresholds(labels[copies], scores[copies], rule)[0]


def test_a_class_with_one_label_value_gets_no_threshold():
    labels, scores, _ = _data(classes=2)
    labels[:, 1] = 0
    assert np.isnan(choose_operating_thresholds(labels, scores, OperatingRule("fixed_sensitivity", 0.9))[1])
    with pytest.raises(ValueError, match="target strictly between 0 and 1"):
        OperatingRule("fixed_specificity", 1.0)


def test_rates_match_scikit_learns_confusion_matrix():
    labels, scores, _ = _data(seed=5)
    thresholds = np.array([0.2, 0.3, 0.4])
    rates = rates_at_thresholds(labels, scores, thresholds)
    for k in range(3):
        called = (scores[:, k] >= thresholds[k]).astype(int)
        tn, fp, fn, tp = confusion_matrix(labels[:, k], called, labels=[0, 1]).ravel()
        assert rates.loc[k, "sensitivity"] == pytest.approx(tp / (tp + fn))
        assert rates.loc[k, "specificity"] == pytest.approx(tn / (tn + fp))
        assert rates.loc[k, "ppv"] == pytest.approx(tp / (tp + fp))
        assert rates.loc[k, "npv"] == pytest.approx(tn / (tn + fn))
        assert rates.loc[k, "f1"] == pytest.approx(f1_score(labels[:, k], called))


def test_ppv_and_npv_at_another_prevalence_follow_bayes_rule_on_counted_films():
    # 100 positives (80 called) among 900 negatives (90 called): sensitivity 0.8, specificity 0.9, prevalence 0.1
    assert ppv_at_prevalence(0.8, 0.9, 0.1) == pytest.approx(80 / (80 + 90))
    assert npv_at_prevalence(0.8, 0.9, 0.1) == pytest.approx(810 / (810 + 20))
    # the same model where the finding is three times as common: 300 positives (240 called), 700 negatives (70)
    assert ppv_at_prevalence(0.8, 0.9, 0.3) == pytest.approx(240 / (240 + 70))
    assert npv_at_prevalence(0.8, 0.9, 0.3) == pytest.approx(630 / (630 + 60))


def test_weighted_average_precision_is_scikit_learns_with_multiplicities():
    labels, scores, _ = _data(n=400, classes=1, seed=6, ties=True)
    weights = np.random.default_rng(7).integers(0, 3, size=(4, 400)).astype(float)
    values = weighted_average_precision(labels[:, 0], scores[:, 0], weights)
    for value, w in zip(values, weights):
        assert value == pytest.approx(average_precision_score(labels[:, 0], scores[:, 0], sample_weight=w))
    table = bootstrap_average_precision(labels, scores, np.arange(400), n_resamples=50, class_names=["a"])
    assert table.loc["a", "average_precision"] == pytest.approx(average_precision_score(labels[:, 0], scores[:, 0]))
    assert table.loc["a", "ci_low"] < table.loc["a", "average_precision"] < table.loc["a", "ci_high"]


def test_operating_point_table_reads_test_at_the_validation_threshold_and_validation_at_its_own():
    val_labels, val_scores, val_patients = _data(seed=8)
    test_labels, test_scores, test_patients = _data(seed=9)
    given = np.array([0.3, 0.35, 0.4])
    rules = [OperatingRule("youden"), OperatingRule("fixed_sensitivity", 0.9)]
    table = operating_point_intervals(val_labels, val_scores, val_patients, test_labels, test_scores, test_patients,
                                      rules, point_thresholds={"youden": given}, n_resamples=100,
                                      class_names=["a", "b", "c"])
    youden = table[table["rule"] == "youden"].set_index("finding")
    np.testing.assert_array_equal(youden["threshold"], given)  # the run's thresholds, untouched
    fixed = table[table["rule"] == "sensitivity 0.90"].set_index("finding")
    chosen = choose_operating_thresholds(val_labels, val_scores, OperatingRule("fixed_sensitivity", 0.9))
    np.testing.assert_array_equal(fixed["threshold"], chosen)
    for k, name in enumerate("abc"):
        row = fixed.loc[name]
        tn, fp, fn, tp = confusion_matrix(test_labels[:, k], test_scores[:, k] >= chosen[k]).ravel()
        assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert row["ppv"] == pytest.approx(tp / (tp + fp))
        assert row["val_sensitivity"] >= 0.9
        assert row["test_prevalence"] == pytest.approx(test_labels[:, k].mean())
        assert row["val_prevalence"] == pytest.approx(val_labels[:, k].mean())
        assert row["ppv_expected_at_test"] == pytest.approx(ppv_at_prevalence(
            row["val_sensitivity"], row["val_specificity"], test_labels[:, k].mean()))
        assert row["threshold_ci_low"] < row["threshold"] < row["threshold_ci_high"]  # the threshold moves
        for metric in ("sensitivity", "specificity", "ppv", "npv", "f1"):
            assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"]


def test_the_intervals_cover_the_true_operating_point_on_clustered_films():
    """200 replications x 150 resamples of ``benchmarks/operating_point_coverage.py`` (150 patients per split,
    1 + Poisson(3) films each, labels and scores correlated within patient). When written, the 95% intervals
    covered 0.960 (fixed specificity 0.90 -> sensitivity), 0.955 (fixed sensitivity 0.90 -> specificity) and
    0.990 (Youden -> sensitivity); holding the threshold at its validation value covered 0.820, 0.675 and 0.680.
    The benchmark at 1000 x 500: 0.957, 0.965, 0.978 against 0.830, 0.684, 0.655."""
    spec = importlib.util.spec_from_file_location("operating_point_coverage",
                                                  PROJ_ROOT / "benchmarks" / "operating_point_coverage.py")
    assert spec is not None and spec.loader is not None
    simulation = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = simulation  # its dataclass looks its module up there
    spec.loader.exec_module(simulation)
    results = simulation.run(replications=200, resamples=150, patients=150, seed=0)
    for result in results:
        coverage, naive = result.covered / result.replications, result.naive_covered / result.replications
        assert 0.91 <= coverage, result.line()  # 0.95 within sampling error (200 replications: SE about 0.015)
        assert naive < coverage, result.line()  # leaving out the threshold's variability undercovers

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, classification_report, roc_auc_score

from cxrutils.labels import BOX_FINDINGS, FINDINGS
from cxrutils.stats import metrics
from cxrutils.stats.thresholds import choose_thresholds


def tied_sample(seed: int, n: int = 300, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Labels with varied prevalence and scores rounded to one decimal, so ties are common."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < np.linspace(0.1, 0.5, k)).astype(int)
    scores = np.round(rng.random((n, k)) * 0.8 + 0.3 * labels, 1)
    return labels, scores


# --------------------------------------------------------------------------- point metrics


def test_per_class_auroc_and_average_precision_match_sklearn_with_ties():
    labels, scores = tied_sample(0)
    assert len(np.unique(scores[:, 0])) < 20  # ties are really there
    auroc = metrics.per_class_auroc(labels, scores)
    ap = metrics.per_class_average_precision(labels, scores)
    for k in range(labels.shape[1]):
        assert auroc[k] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]), abs=1e-12)
        assert ap[k] == pytest.approx(average_precision_score(labels[:, k], scores[:, k]), abs=1e-12)


def test_undefined_classes_are_nan_not_a_number_that_looks_real():
    labels, scores = tied_sample(1, k=3)
    labels[:, 1] = 0  # no positives
    labels[:, 2] = 1  # no negatives
    auroc = metrics.per_class_auroc(labels, scores)
    ap = metrics.per_class_average_precision(labels, scores)
    assert np.isfinite(auroc[0]) and np.isnan(auroc[1]) and np.isnan(auroc[2])
    assert np.isnan(ap[1]) and ap[2] == pytest.approx(1.0)


def test_weighted_auroc_equals_sklearn_unweighted_and_on_an_explicitly_duplicated_sample():
    labels, scores = tied_sample(2, n=200, k=1)
    y, s = labels[:, 0], scores[:, 0]
    assert metrics.weighted_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    multiplicity = np.random.default_rng(3).integers(0, 5, size=y.size)  # zeros drop images
    duplicated = roc_auc_score(np.repeat(y, multiplicity), np.repeat(s, multiplicity))
    assert metrics.weighted_auroc(y, s, multiplicity) == pytest.approx(duplicated, abs=1e-12)
    assert metrics.weighted_auroc(y, s, multiplicity) != pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_bootstrap_resamples_are_whole_patients_scored_like_sklearn():
    """Rebuild the first resamples by hand (patients drawn with replacement, all their images)."""
    labels, scores = tied_sample(4, n=120, k=2)
    patient_ids = np.random.default_rng(5).integers(1000, 1040, size=120)
    resampled = metrics.bootstrap_resample_aurocs(labels, scores, patient_ids, n_resamples=6, seed=11)
    patients, codes = np.unique(patient_ids, return_inverse=True)  # patients numbered by id, not by row order
    draws = np.random.default_rng(11).integers(0, len(patients), size=(6, len(patients)))
    for r in range(6):
        rows = np.concatenate([np.flatnonzero(codes == p) for p in draws[r]])
        for k in range(2):
            assert resampled[r, k] == pytest.approx(roc_auc_score(labels[rows, k], scores[rows, k]), abs=1e-12)
    # The same films in another row order (a reordered CSV) are the same resamples.
    order = np.random.default_rng(6).permutation(120)
    np.testing.assert_allclose(metrics.bootstrap_resample_aurocs(labels[order], scores[order], patient_ids[order],
                                                                 n_resamples=6, seed=11), resampled, atol=1e-12)


# --------------------------------------------------------------------------- bootstrap intervals


def binormal_test_set(rng: np.random.Generator, separation: float, patients: int = 75, per_patient: int = 2):
    labels = (rng.random(patients * per_patient) < 0.35).astype(int)
    scores = rng.normal(size=labels.size) + separation * labels
    return labels, scores, np.repeat(np.arange(patients), per_patient)


def test_patient_bootstrap_interval_covers_the_true_auroc_about_95_percent_of_the_time():
    separation = 1.0
    true_auroc = norm.cdf(separation / np.sqrt(2))  # binormal, equal variances
    rng = np.random.default_rng(2024)
    covered = 0
    for trial in range(200):
        labels, scores, patient_ids = binormal_test_set(rng, separation)
        table = metrics.bootstrap_auroc(labels, scores, patient_ids, n_resamples=200, seed=trial, class_names=["x"])
        covered += table.loc["x", "ci_low"] <= true_auroc <= table.loc["x", "ci_high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_copies_of_one_patient_do_not_count_as_independent_evidence():
    rng = np.random.default_rng(7)
    labels, scores, _ = binormal_test_set(rng, 1.0, patients=60, per_patient=1)
    copies = 5
    labels, scores = np.repeat(labels, copies), np.repeat(scores, copies)
    by_patient = np.repeat(np.arange(60), copies)
    by_image = np.arange(labels.size)  # as if every copy were another patient
    clustered = metrics.bootstrap_auroc(labels, scores, by_patient, n_resamples=400, class_names=["x"]).loc["x"]
    naive = metrics.bootstrap_auroc(labels, scores, by_image, n_resamples=400, class_names=["x"]).loc["x"]
    assert clustered["auroc"] == naive["auroc"]
    assert (clustered["ci_high"] - clustered["ci_low"]) > 1.6 * (naive["ci_high"] - naive["ci_low"])


def test_bootstrap_table_shape_seed_and_mean_row():
    labels, scores = tied_sample(8, n=400, k=len(FINDINGS))
    labels[:, 13] = 0  # Hernia absent: undefined, left out of the mean
    labels[:6, 12] = 1  # a rare class (two patients' films): some resamples have no positive
    labels[6:, 12] = 0
    labels[:3, 11] = 1  # positives from one patient only: not scorable, left out of the mean
    labels[3:, 11] = 0
    patient_ids = np.arange(400) // 3
    table = metrics.bootstrap_auroc(labels, scores, patient_ids, n_resamples=300, seed=1)
    assert list(table.index) == [*FINDINGS, "mean"]
    assert list(table.columns[:4]) == ["auroc", "ci_low", "ci_high", "positives"]
    assert np.isnan(table.loc["Hernia", "auroc"]) and table.loc["Hernia", "n_resamples"] == 0
    assert np.isnan(table.loc["Fibrosis", "auroc"])  # 3 positive films, all one patient's
    assert table.attrs["mean_over"] == [f for f in FINDINGS[:13] if f != "Fibrosis"]
    scorable_columns = [k for k in range(13) if k != 11]
    assert table.loc["mean", "auroc"] == pytest.approx(
        np.mean(metrics.per_class_auroc(labels, scores)[scorable_columns]))
    assert 0 < table.loc["Pleural_Thickening", "n_resamples"] < 300
    assert table.loc["mean", "n_resamples"] == table.loc["Pleural_Thickening", "n_resamples"]
    finite = table.drop(index=["Hernia", "Fibrosis"])
    assert ((finite["ci_low"] <= finite["auroc"] + 0.05) & (finite["auroc"] - 0.05 <= finite["ci_high"])).all()
    assert table.loc["Atelectasis", "positives"] == labels[:, 0].sum()
    pd.testing.assert_frame_equal(table, metrics.bootstrap_auroc(labels, scores, patient_ids, n_resamples=300, seed=1))
    other_seed = metrics.bootstrap_auroc(labels, scores, patient_ids, n_resamples=300, seed=2)
    assert not np.allclose(other_seed["ci_low"].dropna(), table["ci_low"].dropna())


def test_bootstrap_needs_names_for_other_than_14_columns():
    labels, scores = tied_sample(9, k=3)
    with pytest.raises(ValueError, match="class_names"):
        metrics.bootstrap_auroc(labels, scores, np.arange(len(labels)), n_resamples=10)


# --------------------------------------------------------------------------- thresholds


def test_thresholds_come_from_validation_and_test_labels_cannot_move_them():
    rng = np.random.default_rng(10)
    names = ["a", "b", "c"]
    val_labels, val_scores = tied_sample(11, n=300, k=3)
    test_scores = rng.random((200, 3))
    test_labels_one = (rng.random((200, 3)) < 0.3).astype(int)
    test_labels_two = 1 - test_labels_one
    thresholds = choose_thresholds(val_labels, val_scores, "youden")
    frozen = thresholds.copy()
    for test_labels in (test_labels_one, test_labels_two):
        points = metrics.operating_points(test_labels, test_scores, thresholds, names)
        report = metrics.classification_report_table(test_labels, test_scores, thresholds, names)
        np.testing.assert_array_equal(points["threshold"].to_numpy(), frozen)
        assert list(report.attrs["thresholds"].values()) == list(frozen)
        np.testing.assert_array_equal(thresholds, frozen)
        # What tuning on test would have picked differs: the reports did not do that.
        assert not np.allclose(choose_thresholds(test_labels, test_scores, "youden"), frozen)


def test_threshold_array_reads_a_runs_thresholds_json_entry():
    entry = {f: 0.5 for f in FINDINGS} | {"Hernia": None}
    values = metrics.threshold_array(entry)
    assert values.shape == (14,) and np.isnan(values[13]) and values[0] == 0.5
    with pytest.raises(KeyError, match="Hernia"):
        metrics.threshold_array({f: 0.5 for f in FINDINGS[:13]})


# --------------------------------------------------------------------------- thresholded reports


def test_classification_report_agrees_with_sklearn_on_the_binarised_predictions():
    labels, scores = tied_sample(12, n=300, k=4)
    names = ["a", "b", "c", "d"]
    thresholds = np.array([0.5, 0.6, 0.4, 0.7])
    table = metrics.classification_report_table(labels, scores, thresholds, names)
    expected = classification_report(
        labels, (scores >= thresholds).astype(int), target_names=names, output_dict=True, zero_division=np.nan
    )
    assert list(table.index) == list(expected)
    for row, values in expected.items():
        for column in ("precision", "recall", "f1-score", "support"):
            assert table.loc[row, column] == pytest.approx(values[column], abs=1e-12, nan_ok=True)


def test_a_class_without_threshold_is_excluded_and_said_so():
    labels, scores = tied_sample(13, n=300, k=3)
    thresholds = np.array([0.5, np.nan, 0.6])
    table = metrics.classification_report_table(labels, scores, thresholds, ["a", "b", "c"])
    assert table.attrs["excluded"] == ["b"]
    assert np.isnan(table.loc["b", "precision"]) and "no threshold" in table.loc["b", "note"]
    assert table.loc["b", "support"] == labels[:, 1].sum()
    kept = classification_report(
        labels[:, [0, 2]], (scores[:, [0, 2]] >= [0.5, 0.6]).astype(int), output_dict=True, zero_division=np.nan
    )
    assert table.loc["macro avg", "f1-score"] == pytest.approx(kept["macro avg"]["f1-score"], abs=1e-12)
    assert "2 of 3" in table.loc["macro avg", "note"]
    points = metrics.operating_points(labels, scores, thresholds, ["a", "b", "c"])
    only_a = metrics.classification_report_table(labels, scores, [0.5, np.nan, np.nan], ["a", "b", "c"])
    assert only_a.loc["macro avg", "f1-score"] == pytest.approx(table.loc["a", "f1-score"])
    assert only_a.attrs["excluded"] == ["b", "c"]
    assert pd.isna(points.loc["b", "tp"]) and "no threshold" in points.loc["b", "note"]


def test_operating_points_on_a_hand_computed_example():
    labels = np.array([[1], [1], [0], [0], [1]])
    scores = np.array([[0.9], [0.4], [0.6], [0.1], [0.5]])
    row = metrics.operating_points(labels, scores, [0.5], ["x"]).loc["x"]
    # predicted positive where score >= 0.5: images 0, 2, 4
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (2, 1, 1, 1)
    assert row["sensitivity"] == pytest.approx(2 / 3) and row["specificity"] == pytest.approx(1 / 2)
    assert row["ppv"] == pytest.approx(2 / 3) and row["npv"] == pytest.approx(1 / 2)


# --------------------------------------------------------------------------- calibration


def test_ece_is_near_zero_when_calibrated_and_large_when_not_and_brier_matches_sklearn():
    rng = np.random.default_rng(14)
    truth = rng.random(20000)
    labels = (rng.random(20000) < truth).astype(int)
    overconfident = np.clip(0.5 + 1.8 * (truth - 0.5), 0, 1)
    probs = np.column_stack([truth, overconfident])
    table = metrics.calibration_table(np.column_stack([labels, labels]), probs, class_names=["calibrated", "not"])
    assert table.loc["calibrated", "ece"] < 0.02
    # Each bin's positive rate is the mean true probability in it, so ECE is about the mean gap (0.11).
    assert table.loc["not", "ece"] == pytest.approx(np.abs(overconfident - truth).mean(), abs=0.02)
    assert table.loc["not", "ece"] > 0.08
    assert table.loc["calibrated", "brier"] == pytest.approx(brier_score_loss(labels, truth), abs=1e-12)
    assert table.loc["not", "brier"] == pytest.approx(brier_score_loss(labels, overconfident), abs=1e-12)


def test_ece_on_a_hand_computed_example():
    # bin [0, 0.5]: probs 0.2, 0.2, labels 0, 1 -> |0.5 - 0.2| ; bin (0.5, 1]: 0.9, label 1 -> |1 - 0.9|
    ece = metrics.expected_calibration_error([0, 1, 1], [0.2, 0.2, 0.9], n_bins=2)
    assert ece == pytest.approx(2 / 3 * 0.3 + 1 / 3 * 0.1)
    with pytest.raises(ValueError, match="logits"):
        metrics.expected_calibration_error([0, 1], [-1.0, 2.0])


def test_reliability_curves_are_sklearns_calibration_curve_with_bin_counts():
    rng = np.random.default_rng(15)
    probs = rng.random((500, 2))
    labels = (rng.random((500, 2)) < probs).astype(int)
    curves = metrics.reliability_curves(labels, probs, n_bins=8, class_names=["a", "b"])
    fraction, mean = calibration_curve(labels[:, 1], probs[:, 1], n_bins=8)
    part = curves[curves["finding"] == "b"]
    np.testing.assert_allclose(part["fraction_positive"], fraction)
    np.testing.assert_allclose(part["mean_probability"], mean)
    assert part["images"].sum() == 500


# --------------------------------------------------------------------------- subgroups


def test_age_bands_and_implausible_ages():
    from cxrutils.data.metadata import age_band

    bands = age_band([5, 39, 40, 59, 60, 79, 80, 95, 150, np.nan])
    assert list(bands.astype(object).fillna("none")) == [
        "<40",
        "<40",
        "40-59",
        "40-59",
        "60-79",
        "60-79",
        "80+",
        "80+",
        "none",
        "none",
    ]
    assert list(bands.cat.categories) == ["<40", "40-59", "60-79", "80+"]


def test_subgroup_auroc_separates_a_group_where_the_model_fails():
    rng = np.random.default_rng(16)
    n = 600
    labels = (rng.random((n, 2)) < 0.3).astype(int)
    sex = pd.Series(np.where(np.arange(n) < 300, "F", "M"), name="sex")
    signal = np.where((sex == "F").to_numpy()[:, None], 2.0, 0.0)  # informative for F only
    scores = rng.normal(size=(n, 2)) + signal * labels
    patient_ids = np.arange(n) // 2
    table = metrics.subgroup_auroc(labels, scores, patient_ids, sex, n_resamples=200, class_names=["a", "b"])
    assert set(table.columns) >= {
        "subgroup",
        "value",
        "finding",
        "auroc",
        "ci_low",
        "ci_high",
        "images",
        "positives",
        "patients",
    }
    mean = table[table["finding"] == "mean"].set_index("value")
    assert mean.loc["F", "ci_low"] > mean.loc["M", "ci_high"]
    assert (table["subgroup"] == "sex").all()
    assert mean.loc["F", "images"] == 300 and mean.loc["F", "patients"] == 150
    row = table[(table["value"] == "M") & (table["finding"] == "a")].iloc[0]
    assert row["positives"] == labels[300:, 0].sum()
    assert row["auroc"] == pytest.approx(roc_auc_score(labels[300:, 0], scores[300:, 0]))


def test_subgroup_mean_covers_only_classes_scored_in_every_group():
    rng = np.random.default_rng(17)
    labels = (rng.random((200, 2)) < 0.4).astype(int)
    labels[100:, 1] = 0  # class b has no positives in group "y"
    groups = pd.Series(["x"] * 100 + ["y"] * 100, name="view")
    scores = rng.random((200, 2))
    table = metrics.subgroup_auroc(labels, scores, np.arange(200), groups, n_resamples=50, class_names=["a", "b"])
    assert table.attrs["mean_over"] == ["a"]
    means = table[table["finding"] == "mean"].set_index("value")["auroc"]
    per_class = table[table["finding"] == "a"].set_index("value")["auroc"]
    pd.testing.assert_series_equal(means, per_class, check_names=False)


# --------------------------------------------------------------------------- published context


def test_reference_results_say_which_split_each_used():
    table = metrics.reference_results()
    assert table["split"].notna().all()
    assert (table["comparable_to_official_split"] == (table["split"] == "official")).all()
    chexnet = table.set_index("model").loc["CheXNet"]
    assert chexnet["mean_auroc"] == 0.841 and not chexnet["comparable_to_official_split"]
    assert table.loc[table["split"] == "official", "mean_auroc"].max() == 0.830
    wang = metrics.wang2017_localization()
    assert set(wang.index) == set(BOX_FINDINGS) and wang["Cardiomegaly"] == 0.993


# --------------------------------------------------------------------------- figures


def test_roc_curves_title_each_class_with_its_interval_and_forest_draws_each_finding():
    import matplotlib

    matplotlib.use("Agg")
    from cxrutils.show import plots

    labels, scores = tied_sample(18, n=200, k=2)
    names = ["a", "b"]
    table = metrics.bootstrap_auroc(labels, scores, np.arange(200) // 2, n_resamples=50, class_names=names)
    fig = plots.roc_curves(labels, scores, names, auroc_table=table)
    title = fig.axes[0].get_title()
    assert f"{table.loc['a', 'auroc']:.3f} [{table.loc['a', 'ci_low']:.3f}, {table.loc['a', 'ci_high']:.3f}]" in title
    overlay = plots.roc_curves(labels, {"one": scores, "two": scores[:, ::-1]}, names)
    assert len(overlay.axes[0].get_lines()) == 3  # chance diagonal + two models
    groups = pd.Series(np.where(np.arange(200) < 100, "PA", "AP"), name="view")
    subgroups = metrics.subgroup_auroc(labels, scores, np.arange(200), groups, n_resamples=20, class_names=names)
    forest = plots.subgroup_forest(subgroups)
    assert [ax.get_title() for ax in forest.axes if ax.axison] == ["a", "b", "mean"]
    row = subgroups.iloc[0]  # each row says how many patients its positives come from
    tick_labels = [label.get_text() for label in forest.axes[0].get_yticklabels()]
    assert any(f" of {int(row['positive_patients'])} pt)" in text for text in tick_labels), tick_labels
    matplotlib.pyplot.close("all")


def test_one_rule_says_which_findings_are_scorable():
    labels = np.zeros((12, 4), dtype=int)
    labels[:2, 0] = 1  # 2 positives, from patients 0 and 1: scorable
    labels[:2, 1] = 1  # ... but another column has them from one patient below
    labels[0, 2] = 1  # one positive: never
    labels[:, 3] = 1
    labels[:2, 3] = 0  # 2 negatives, from two patients: scorable
    patients = np.array([0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    one_patient = patients.copy()
    one_patient[1] = 0
    assert metrics.scorable(labels, patients).tolist() == [True, True, False, True]
    assert metrics.scorable(labels, one_patient).tolist() == [False, False, False, False]
    assert metrics.scorable(labels, patients, min_positives=3).tolist() == [False, False, False, True]


# --------------------------------------------------------------------------- edges (each found by benchmarks/mutation.py)


def test_weighted_auroc_is_undefined_without_both_classes_and_exact_with_one_of_each():
    assert np.isnan(metrics.weighted_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(metrics.weighted_auroc([1, 0], [0.9, 0.1], weights=[1, 0]))  # the negative weighs nothing
    assert metrics.weighted_auroc([1, 0], [0.9, 0.1]) == 1.0
    assert metrics.weighted_auroc([1, 0], [0.1, 0.9]) == 0.0
    assert metrics.weighted_auroc([1, 0], [0.5, 0.5]) == 0.5
    one_resample = metrics.bootstrap_resample_aurocs([[1], [0], [1], [0]], [[0.9], [0.1], [0.8], [0.2]], [1, 2, 3, 4],
                                                     n_resamples=1)
    assert one_resample.shape == (1, 1)
    with pytest.raises(ValueError, match="n_resamples"):
        metrics.bootstrap_resample_aurocs([[1], [0]], [[0.9], [0.1]], [1, 2], n_resamples=0)


def test_intervals_refuse_a_confidence_outside_zero_to_one_and_say_when_nothing_was_scorable():
    from cxrutils.stats.intervals import percentile_interval

    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            percentile_interval(np.arange(10.0), confidence)
        with pytest.raises(ValueError, match="confidence"):
            metrics.bootstrap_auroc([[1], [0], [1], [0]], [[0.9], [0.1], [0.8], [0.2]], [1, 2, 3, 4], n_resamples=5,
                                    confidence=confidence, class_names=["x"])
    low, high, used = percentile_interval(np.array([np.nan, np.nan]))
    assert np.isnan(low) and np.isnan(high) and used == 0
    nothing = metrics.bootstrap_auroc(np.zeros((6, 1)), np.arange(6.0)[:, None], np.arange(6), n_resamples=5,
                                      class_names=["x"])
    assert np.isnan(nothing.loc[metrics.MEAN_ROW, "auroc"]) and nothing.loc[metrics.MEAN_ROW, "n_resamples"] == 0
    assert nothing.loc["x", "negatives"] == 6 and nothing.loc["x", "positives"] == 0


def test_ratios_with_a_single_film_in_the_denominator_are_numbers_not_nan():
    row = metrics.operating_points([[1], [0], [0]], [[0.9], [0.2], [0.7]], [0.5], ["x"]).loc["x"]
    assert (row["sensitivity"], row["specificity"], row["ppv"], row["npv"]) == (1.0, 0.5, 0.5, 1.0)
    assert (row["positives"], row["negatives"]) == (1, 2)


def test_calibration_of_one_film_counts_and_probabilities_outside_zero_to_one_are_refused():
    assert metrics.expected_calibration_error([1], [0.3]) == pytest.approx(0.7)
    table = metrics.calibration_table([[1, 0], [0, 0], [1, 1]], [[0.8, 0.1], [0.3, 0.2], [0.6, 0.9]],
                                      class_names=["a", "b"])
    assert table["images"].tolist() == [3, 3]
    for wrong in (-0.1, 1.2):
        with pytest.raises(ValueError, match="probabilities must lie in"):
            metrics.calibration_table([[1], [0]], [[0.5], [wrong]], class_names=["x"])


def test_classification_report_notes_how_many_classes_its_averages_cover():
    labels, scores = tied_sample(3, n=200, k=3)
    every = metrics.classification_report_table(labels, scores, [0.5, 0.5, 0.5], ["a", "b", "c"])
    assert every.loc["macro avg", "note"] == "over 3 of 3 classes"
    some = metrics.classification_report_table(labels, scores, [0.5, np.nan, 0.5], ["a", "b", "c"])
    assert some.loc["macro avg", "note"] == "over 2 of 3 classes (without b)"


def test_subgroups_leave_out_a_category_no_film_has():
    rng = np.random.default_rng(2)
    labels = (rng.random((80, 1)) < 0.4).astype(int)
    scores = labels + rng.normal(size=(80, 1))
    groups = pd.Series(pd.Categorical(rng.choice(["a", "b"], 80), categories=["a", "b", "never"]), name="g")
    table = metrics.subgroup_auroc(labels, scores, np.arange(80), groups, n_resamples=20, class_names=["x"])
    assert set(table["value"]) == {"a", "b"}

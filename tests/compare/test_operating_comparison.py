"""Both models at the evaluation's operating rules, their paired differences, and the exploratory subgroup grid."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cxrutils import files
from cxrutils.compare.comparison import (
    compare_operating_points,
    comparison_caveats,
    operating_rules,
    subgroup_difference_grid,
)
from cxrutils.settings import EvaluationSettings
from cxrutils.stats import operating
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.stats.paired import OURS, TXV, PairedPredictions, compare_auroc, subgroup_comparison
from cxrutils.stats.thresholds import choose_thresholds

FINDINGS = ["Effusion", "Edema"]
RESAMPLES = 64  # one chunk of draws: the from-definition bootstrap below draws them in one call too
SEED = 3
RULES = operating_rules("youden", 0.80, 0.90)


def _paired(n_patients: int, prevalence_shift: float, seed: int) -> PairedPredictions:
    """Two findings on 1-3 films per patient; ours separates them better than TXV; labels cluster by patient."""
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 4, n_patients)
    patients = np.repeat(np.arange(n_patients) + 10_000 * (seed + 1), films)
    tendency = rng.normal(size=(n_patients, len(FINDINGS)))[np.repeat(np.arange(n_patients), films)]
    labels = (tendency + rng.normal(size=tendency.shape) > 1.2 - prevalence_shift).astype(np.int8)
    ours = 1.5 * labels + rng.normal(size=labels.shape)
    txv = 0.8 * labels + rng.normal(size=labels.shape)
    images = np.array([f"{p}_{k}.png" for k, p in enumerate(patients)])
    return PairedPredictions(images, patients, list(FINDINGS), labels, 1 / (1 + np.exp(-ours)),
                             1 / (1 + np.exp(-txv)), {OURS: "ours", TXV: "TorchXRayVision densenet121-res224-nih"})


@pytest.fixture(scope="module")
def validation() -> PairedPredictions:
    return _paired(90, 0.0, seed=1)


@pytest.fixture(scope="module")
def test_films() -> PairedPredictions:
    return _paired(110, 0.4, seed=2)  # a higher prevalence than validation, as on NIH's official test list


@pytest.fixture(scope="module")
def compared(test_films, validation):
    return compare_operating_points(test_films, validation, RULES, n_resamples=RESAMPLES, seed=SEED,
                                    txv_name="densenet121-res224-nih")


# --------------------------------------------------------------------------- each model


def test_each_models_figures_are_what_stats_operating_gives(test_films, validation, compared) -> None:
    assert compared.rule_names == ["youden", "sensitivity 0.80", "specificity 0.90"]
    for model, val_scores, test_scores in ((OURS, validation.ours, test_films.ours),
                                           (TXV, validation.txv, test_films.txv)):
        expected = operating.operating_point_intervals(
            validation.labels, val_scores, validation.patient_ids, test_films.labels, test_scores,
            test_films.patient_ids, RULES, n_resamples=RESAMPLES, seed=SEED, class_names=FINDINGS)
        got = compared.points[compared.points["model"] == model].drop(columns="model").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
        # And against the definitions: Youden's threshold is scikit-learn's on validation, read on test.
        youden = compared.table(model, "youden")
        np.testing.assert_allclose(youden["threshold"], choose_thresholds(validation.labels, val_scores, "youden"))
        for k, finding in enumerate(FINDINGS):
            positive = test_films.labels[:, k] == 1
            called = test_scores[:, k] >= youden.loc[finding, "threshold"]
            assert youden.loc[finding, "sensitivity"] == pytest.approx(called[positive].mean())
            assert youden.loc[finding, "specificity"] == pytest.approx((~called[~positive]).mean())
            assert youden.loc[finding, "ppv"] == pytest.approx(positive[called].mean())
            assert youden.loc[finding, "val_prevalence"] == pytest.approx(validation.labels[:, k].mean())
            assert youden.loc[finding, "test_prevalence"] == pytest.approx(positive.mean())
            assert youden.loc[finding, "sensitivity_ci_low"] <= youden.loc[finding, "sensitivity_ci_high"]
    # The prevalences differ (the shift the tables show side by side) and the difference table reads both models.
    youden_ours = compared.table(OURS, "youden")
    assert (youden_ours["test_prevalence"] > youden_ours["val_prevalence"]).all()
    differences = compared.difference_table("youden")
    np.testing.assert_allclose(differences["sensitivity_difference"],
                               youden_ours["sensitivity"] - compared.table(TXV, "youden")["sensitivity"])


# --------------------------------------------------------------------------- paired differences


def _films_of(patient_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The patients in sorted order (as the bootstrap numbers them) and each one's film positions."""
    patients = np.unique(patient_ids)
    return patients, [np.flatnonzero(patient_ids == p) for p in patients]


def _resample(films: list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    return np.concatenate([films[d] for d in draws])


def _fixed_sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest score whose sensitivity (score >= it) reaches ``target``, from the definition."""
    positives = scores[labels == 1]
    for candidate in np.unique(scores)[::-1]:
        if (positives >= candidate).mean() >= target - 1e-12:
            return float(candidate)
    raise AssertionError("unreachable: the lowest score calls every positive")


def test_paired_difference_interval_is_a_paired_patient_bootstrap(test_films, validation, compared) -> None:
    """Draw validation and test patients, re-choose each model's threshold, read both: the percentile interval."""
    _, val_films = _films_of(validation.patient_ids)
    _, test_films_of = _films_of(test_films.patient_ids)
    val_draws = np.random.default_rng(SEED + 1).integers(0, len(val_films), size=(RESAMPLES, len(val_films)))
    test_draws = np.random.default_rng(SEED).integers(0, len(test_films_of), size=(RESAMPLES, len(test_films_of)))
    k = FINDINGS.index("Effusion")
    samples: dict[str, list[float]] = {"youden sensitivity": [], "youden specificity": [],
                                       "sensitivity 0.80 sensitivity": []}
    for val_draw, test_draw in zip(val_draws, test_draws):
        val_rows, test_rows = _resample(val_films, val_draw), _resample(test_films_of, test_draw)
        val_y, test_y = validation.labels[val_rows, k], test_films.labels[test_rows, k] == 1
        figures = {}
        for model, val_scores, test_scores in ((OURS, validation.ours, test_films.ours),
                                               (TXV, validation.txv, test_films.txv)):
            youden = choose_thresholds(val_y[:, None], val_scores[val_rows, k:k + 1], "youden")[0]
            fixed = _fixed_sensitivity_threshold(val_y, val_scores[val_rows, k], 0.80)
            scores = test_scores[test_rows, k]
            figures[model] = {"youden sensitivity": (scores[test_y] >= youden).mean(),
                              "youden specificity": (scores[~test_y] < youden).mean(),
                              "sensitivity 0.80 sensitivity": (scores[test_y] >= fixed).mean()}
        for name in samples:
            samples[name].append(figures[OURS][name] - figures[TXV][name])
    for rule, metric in (("youden", "sensitivity"), ("youden", "specificity"), ("sensitivity 0.80", "sensitivity")):
        row = compared.difference_table(rule).loc["Effusion"]
        low, high = np.quantile(samples[f"{rule} {metric}"], [0.025, 0.975])
        assert row[f"{metric}_difference_ci_low"] == pytest.approx(low), (rule, metric)
        assert row[f"{metric}_difference_ci_high"] == pytest.approx(high), (rule, metric)
        assert row[f"{metric}_difference_resamples"] == RESAMPLES


def test_identical_models_differ_by_exactly_zero_in_every_resample(test_films, validation) -> None:
    same_test = PairedPredictions(test_films.images, test_films.patient_ids, FINDINGS, test_films.labels,
                                  test_films.ours, test_films.ours.copy(), dict(test_films.names))
    same_val = PairedPredictions(validation.images, validation.patient_ids, FINDINGS, validation.labels,
                                 validation.ours, validation.ours.copy(), dict(validation.names))
    differences = compare_operating_points(same_test, same_val, RULES, n_resamples=30, seed=0).differences
    for metric in ("sensitivity", "specificity"):
        assert (differences[f"{metric}_difference"] == 0).all()
        assert (differences[f"{metric}_difference_ci_low"] == 0).all()
        assert (differences[f"{metric}_difference_ci_high"] == 0).all()


def test_a_model_trained_on_nih_films_gets_the_optimistic_threshold_caveat(test_films, validation, compared):
    assert compared.caveat is not None and "optimistic" in compared.caveat
    assert compared.caveat in comparison_caveats("densenet121-res224-nih")  # the one sentence, reused
    clean = compare_operating_points(test_films, validation, RULES[:1], n_resamples=5,
                                     txv_name="densenet121-res224-pc")
    assert clean.caveat is None
    document = json.loads(json.dumps(files.plain(compared.to_document())))
    assert document["rules"] == compared.rule_names and document["txv_thresholds_optimistic"] is True
    assert document["targets"] == {"sensitivity": 0.80, "specificity": 0.90}
    effusion = document["models"][TXV]["sensitivity 0.80"]["Effusion"]
    assert effusion["sensitivity"] == pytest.approx(compared.table(TXV, "sensitivity 0.80").loc["Effusion",
                                                                                                "sensitivity"])
    assert {"val_prevalence", "test_prevalence", "ppv_expected_at_test", "npv"} <= set(effusion)
    assert set(document["differences"]) == set(compared.rule_names)
    assert "PPV" in document["transfer"] and document["bootstrap"]["validation_seed"] == SEED + 1


# --------------------------------------------------------------------------- subgroups


@pytest.fixture(scope="module")
def grouped(test_films):
    rng = np.random.default_rng(5)
    patients = pd.unique(test_films.patient_ids)
    sex = dict(zip(patients, rng.choice(["F", "M"], patients.size)))
    metadata = pd.DataFrame({"image": test_films.images, "sex": [sex[p] for p in test_films.patient_ids],
                             "view": rng.choice(["AP", "PA"], len(test_films), p=[0.25, 0.75])})
    return metadata


def _holm_by_hand(p_values: list[float]) -> list[float]:
    """Holm's step-down: sort, multiply the i-th smallest by (m - i), keep the running maximum, cap at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_subgroup_cells_are_compare_auroc_on_the_groups_films_with_holm_over_the_grid(test_films, grouped):
    minimum = 12  # the AP group's positives come from 11 patients per finding: its cells stay empty
    subgroups = subgroup_comparison(test_films, grouped, n_resamples=40, seed=2, min_positive_patients=minimum)
    grid = subgroup_difference_grid(subgroups, minimum)
    assert MEAN_ROW not in set(grid["finding"]) and len(grid) == 2 * 2 * len(FINDINGS)
    tested = grid[grid["p_value"].notna()]
    assert len(tested) == 6 and grid.attrs["tests"] == 6 and grid.attrs["exploratory"] is True
    assert (grid.loc[grid["p_value"].isna(), "value"] == "AP").all()
    assert f"{len(tested)} DeLong tests" in grid.attrs["family"] and "sex, view" in grid.attrs["family"]
    for row in grid.itertuples():
        mask = grouped[row.subgroup].to_numpy() == row.value
        k = FINDINGS.index(row.finding)
        positive = test_films.labels[mask, k] == 1
        assert row.positives == positive.sum()
        assert row.positive_patients == pd.unique(test_films.patient_ids[mask][positive]).size
        if row.positive_patients < minimum:
            assert np.isnan(row.difference) and np.isnan(row.p_holm)
            assert f"from {row.positive_patients} patient(s)" in row.note and f"fewer than {minimum}" in row.note
            continue
        alone = compare_auroc(test_films.subset(mask), n_resamples=40, seed=2,
                              min_positive_patients=minimum).table.loc[row.finding]
        assert row.difference == pytest.approx(alone["difference"])
        assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx((alone["diff_ci_low"], alone["diff_ci_high"]))
        assert row.p_value == pytest.approx(alone["p_value"]) and row.note == ""
    np.testing.assert_allclose(tested["p_holm"], _holm_by_hand(tested["p_value"].tolist()))
    # A stricter minimum empties cells and says why; the family shrinks with them.
    strict = subgroup_difference_grid(subgroup_comparison(test_films, grouped, n_resamples=10, seed=2,
                                                          min_positive_patients=40), 40)
    assert strict.attrs["tests"] < len(tested)
    assert strict["note"].str.contains("fewer than 40").any()


def test_the_view_labels_the_grid_exploratory_and_the_thresholds_optimistic(test_films, validation, grouped,
                                                                            compared) -> None:
    from cxrutils.compare.run import ModelComparison
    from cxrutils.show import comparison_view as view

    comparison = ModelComparison(
        model=SimpleNamespace(name="densenet121-res224-nih", random_init=False), test=test_films,
        validation=validation, auroc=compare_auroc(test_films, n_resamples=20), classification=pd.DataFrame(),
        subgroups=subgroup_comparison(test_films, grouped, n_resamples=10, min_positive_patients=6), split="test",
        threshold_method="youden", subgroup_min_positive_patients=6, operating=compared, synthetic=True)
    page = view.sensitivity_specificity_display(comparison).to_html()
    assert "validation-chosen thresholds are optimistic" in page and "SYNTHETIC" in page
    assert "prevalence (val)" in page and "prevalence (test)" in page
    effusion = compared.difference_table("youden").loc["Effusion"]
    assert f"{effusion['sensitivity_difference']:+.3f} [{effusion['sensitivity_difference_ci_low']:+.3f}" in page
    values = view.predictive_values_display(comparison).to_html()
    assert "PPV expected at test prevalence" in values and "prevalence (val)" in values
    grid = view.subgroup_differences_display(comparison).to_html()
    assert "Exploratory" in grid and "every compared cell of this grid together" in grid
    assert "p (Holm, whole grid)" in grid and "positive patients" in grid
    document = comparison._subgroup_differences_document()
    assert document["exploratory"] is True and document["adjustment"] == "holm"
    assert document["variables"] == ["sex", "view"] and len(document["table"]) == 2 * 2 * len(FINDINGS)


def test_the_comparison_takes_the_evaluations_operating_and_subgroup_defaults() -> None:
    from cxrutils.compare.run import compare_run

    defaults = {name: p.default for name, p in inspect.signature(compare_run).parameters.items()}
    evaluation = EvaluationSettings()
    for name in ("subgroup_min_positive_patients", "target_sensitivity", "target_specificity"):
        assert defaults[name] == getattr(evaluation, name), name
    for name, wrong in (("target_sensitivity", 1.0), ("target_specificity", 0.0)):
        with pytest.raises(ValueError, match=f"{name} must lie strictly between 0 and 1"):
            compare_run("runs/none", **{name: wrong})  # refused before any file is read

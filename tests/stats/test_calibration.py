"""Calibration figures against independent computations: scikit-learn, scipy, numpy and their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from cxrutils.stats.calibration import (
    calibration_summary,
    equal_mass_bin_index,
    equal_mass_edges,
    equal_mass_reliability,
    fit_recalibration,
    fit_temperature,
    intercept_at_slope_1,
    logistic_recalibration,
    logit,
)


def _miscalibrated(n: int = 3000, classes: int = 2, seed: int = 0):
    """Probabilities whose true log-odds are 0.4 + 0.7 logit(p): too extreme and too low."""
    rng = np.random.default_rng(seed)
    probs = expit(1.5 * rng.normal(size=(n, classes)) - 2.0)
    labels = (rng.random((n, classes)) < expit(0.4 + 0.7 * logit(probs))).astype(np.int8)
    patients = rng.integers(0, n // 4, n)
    return labels, probs, patients


def test_slope_and_intercept_are_scikit_learns_unpenalised_logistic_regression_on_logit_p():
    labels, probs, _ = _miscalibrated()
    for k in range(2):
        intercept, slope = logistic_recalibration(labels[:, k], probs[:, k])
        reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(logit(probs[:, [k]]), labels[:, k])
        assert intercept == pytest.approx(reference.intercept_[0], abs=1e-6)
        assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-6)
        assert 0.5 < slope < 0.9  # the simulated 0.7, found


def test_intercept_at_slope_1_maximises_the_likelihood_with_logit_p_as_an_offset():
    labels, probs, _ = _miscalibrated(seed=1)
    y, offset = labels[:, 0], logit(probs[:, 0])

    def negative_log_likelihood(a: float) -> float:
        p = expit(a + offset)
        return -np.sum(y * np.log(p) + (1 - y) * np.log1p(-p))

    expected = minimize_scalar(negative_log_likelihood, bounds=(-5, 5), method="bounded",
                               options={"xatol": 1e-10}).x
    assert intercept_at_slope_1(y, probs[:, 0]) == pytest.approx(expected, abs=1e-6)


def test_temperature_and_platt_fits_are_scipys_minimum_of_the_validation_log_loss():
    labels, probs, _ = _miscalibrated(seed=2)
    y, x = labels[:, 0].astype(float), logit(probs[:, 0])

    def log_loss(p: np.ndarray) -> float:
        return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))

    temperature = minimize_scalar(lambda t: log_loss(expit(x / t)), bounds=(0.05, 20), method="bounded",
                                  options={"xatol": 1e-10}).x
    assert fit_temperature(y, probs[:, 0]) == pytest.approx(temperature, rel=1e-5)
    platt = minimize(lambda ab: log_loss(expit(ab[0] + ab[1] * x)), x0=[0.0, 1.0], method="Nelder-Mead",
                     options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20_000}).x
    fitted = fit_recalibration(labels, probs, "platt", class_names=["a", "b"])
    assert (fitted.intercept[0], fitted.slope[0]) == pytest.approx(tuple(platt), abs=1e-5)
    recalibrated = fitted.apply(probs)
    assert recalibrated[:, 0] == pytest.approx(expit(platt[0] + platt[1] * x), abs=1e-5)
    scaled = fit_recalibration(labels, probs, "temperature", class_names=["a", "b"])
    assert scaled.temperature[0] == pytest.approx(temperature, rel=1e-5)
    assert scaled.to_document()["per_class"]["a"]["temperature"] == pytest.approx(temperature, rel=1e-5)


def test_a_finding_with_one_label_value_in_validation_keeps_its_raw_probabilities():
    labels, probs, _ = _miscalibrated(seed=3)
    labels[:, 1] = 0
    fitted = fit_recalibration(labels, probs, "platt", class_names=["a", "b"])
    assert np.isnan(fitted.slope[1])
    np.testing.assert_array_equal(fitted.apply(probs)[:, 1], probs[:, 1])
    with pytest.raises(ValueError, match="platt"):
        fit_recalibration(labels, probs, "isotonic")


def test_equal_mass_bins_are_numpys_quantiles_and_hold_equal_shares():
    probs = np.random.default_rng(4).beta(0.5, 8, size=1000)
    np.testing.assert_array_equal(equal_mass_edges(probs, 10), np.quantile(probs, np.linspace(0, 1, 11)))
    counts = np.bincount(equal_mass_bin_index(probs, 10), minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 99 and counts.max() <= 101
    # an equal-width bin [0, 0.1) would hold most of these films
    assert (probs < 0.1).mean() > 0.7


def test_summary_figures_follow_their_definitions_and_carry_intervals():
    labels, probs, patients = _miscalibrated(seed=5)
    table = calibration_summary(labels, probs, patients, n_bins=10, n_resamples=100, class_names=["a", "b"])
    for k, name in enumerate("ab"):
        y, p = labels[:, k], probs[:, k]
        row = table.loc[name]
        assert row["observed_expected"] == pytest.approx(y.sum() / p.sum())
        brier = brier_score_loss(y, p)
        assert row["brier"] == pytest.approx(brier)
        assert row["scaled_brier"] == pytest.approx(1 - brier / brier_score_loss(y, np.full(y.size, y.mean())))
        bins = np.clip(np.searchsorted(np.quantile(p, np.linspace(0, 1, 11)), p, side="right") - 1, 0, 9)
        ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean() for b in range(10))
        assert row["ece"] == pytest.approx(ece)
        assert (row["intercept"], row["slope"]) == pytest.approx(logistic_recalibration(y, p))
        assert row["intercept_at_slope_1"] == pytest.approx(intercept_at_slope_1(y, p))
        for figure in ("observed_expected", "scaled_brier", "slope", "intercept", "intercept_at_slope_1", "ece"):
            assert row[f"{figure}_ci_low"] < row[figure] < row[f"{figure}_ci_high"], figure
        assert row["observed_expected"] > 1  # these probabilities are too low on average


def test_reliability_points_are_each_bins_rates_with_a_patient_bootstrap_interval():
    labels, probs, patients = _miscalibrated(seed=6)
    points = equal_mass_reliability(labels, probs, patients, n_bins=8, n_resamples=100, class_names=["a", "b"])
    part = points[points["finding"] == "a"]
    assert len(part) == 8 and part["films"].sum() == len(labels)
    bins = equal_mass_bin_index(probs[:, 0], 8)
    for row in part.itertuples():
        assert row.fraction_positive == pytest.approx(labels[bins == row.bin, 0].mean())
        assert row.mean_probability == pytest.approx(probs[bins == row.bin, 0].mean())
        assert row.ci_low <= row.fraction_positive <= row.ci_high


def test_the_one_step_resample_fits_are_close_to_full_fits_of_the_same_resamples():
    from cxrutils.stats.calibration import _figures
    from cxrutils.stats.metrics import _patient_draw_chunks

    labels, probs, patients = _miscalibrated(n=4000, classes=1, seed=7)
    y, p = labels[:, 0].astype(float), probs[:, 0]
    bins = equal_mass_bin_index(p, 10)
    full = _figures(y, p, patients, np.ones((1, patients.max() + 1)), bins, 10)
    fitted = (full["intercept"][0], full["slope"][0], full["intercept_at_slope_1"][0])
    counts = next(_patient_draw_chunks(patients.max() + 1, 40, seed=0))
    one_step = _figures(y, p, patients, counts, bins, 10, fitted)
    exact = _figures(y, p, patients, counts, bins, 10)  # every resample fitted to convergence
    for figure in ("slope", "intercept", "intercept_at_slope_1"):
        spread = exact[figure].std()
        assert np.abs(one_step[figure] - exact[figure]).max() < 0.15 * spread, figure
    np.testing.assert_allclose(one_step["observed_expected"], exact["observed_expected"])

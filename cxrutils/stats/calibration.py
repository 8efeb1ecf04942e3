"""Calibration read properly: equal-mass reliability bins, slope and intercept, O/E, scaled Brier, with intervals.

Equal-width bins put nearly every film of a rare finding into [0, 0.1), so their ECE is
small by construction. Here:

- **Equal-mass bins**: each bin holds about the same number of films (edges at the
  quantiles of the predicted probability), so every bin says something.
- **Calibration slope and intercept**: the logistic recalibration
  ``logit P(y=1) = intercept + slope * logit(p)``. A slope below 1 means predictions
  too extreme (overfitting), above 1 too timid. ``intercept_at_slope_1`` (slope fixed
  at 1, "calibration in the large") is negative when the model over-predicts.
- **Observed / expected** (O/E): positives over the sum of predicted probabilities;
  below 1 is over-prediction, above 1 under-prediction.
- **Scaled Brier**: 1 - Brier / Brier of always predicting the prevalence of the scored
  films (prevalence x (1 - prevalence)): 0 is no better than the prevalence, 1 perfect.
  The raw Brier score of a rare finding mostly reflects its prevalence.

Intervals come from a patient bootstrap (the same draws as the AUROC's for the same
seed); each resample's slope and intercepts are one Newton step from the full-set fit (a
linearised bootstrap), so a resample costs one product over patients, not a fit over films. A model trained with ``pos_weight`` (as ``nih_partial`` is) over-predicts by
design: the weight multiplies the odds of each positive, so its raw probabilities run
high. On the official split the test prevalence is 1.5-3.4 times validation's, so a
model calibrated on validation under-predicts on test: that is the prevalence shift,
not a defect of the model.

**Recalibration** (``fit_recalibration``): Platt scaling (``intercept + slope *
logit(p)``) or temperature scaling (``logit(p) / T``), one per finding, fitted on
validation predictions only and reported beside the raw model, never in place of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from cxrutils.settings import RECALIBRATION_METHODS
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import (
    _check_inputs,
    _check_probabilities,
    _class_names,
    _patient_codes,
    _patient_draw_chunks,
)

# logit(p) of a probability of exactly 0 or 1 is infinite: probabilities are clipped to [EPS, 1 - EPS] first.
EPS = 1e-6
_NEWTON_ITERATIONS = 50


def logit(probs: Any) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- logistic fits


def _newton(x: np.ndarray, y: np.ndarray, weights: np.ndarray, start: np.ndarray, iterations: int,
            fit_slope: bool = True, offset: np.ndarray | None = None) -> np.ndarray:
    """(R, 2) (intercept, slope) maximising the weighted Bernoulli likelihood of ``y`` on ``x``, per weight row.

    ``fit_slope=False`` keeps the slope at ``start``'s and fits the intercept alone (with
    ``offset`` added to the linear predictor). Rows whose fit does not exist (no positive or
    no negative weight, or a separable sample) come back NaN.
    """
    params = np.array(start, dtype=np.float64, copy=True)
    base = np.zeros_like(x) if offset is None else offset
    for _ in range(iterations):
        eta = params[:, :1] + params[:, 1:] * x[None, :] + base[None, :]
        p = expit(eta)
        residual = weights * (y[None, :] - p)
        curvature = weights * p * (1 - p)
        g0 = residual.sum(axis=1)
        h00 = curvature.sum(axis=1)
        if fit_slope:
            g1, h01, h11 = residual @ x, curvature @ x, curvature @ (x * x)
            det = h00 * h11 - h01 ** 2
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.c_[(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.c_[g0 / h00, np.zeros(len(params))]
        params += step
        moving = np.isfinite(step) & (np.abs(step) > 1e-10 * (1 + np.abs(params)))
        if not moving.any():  # converged (or failed: NaN) on every row
            break
    positives, negatives = weights @ y, weights @ (1 - y)
    bad = (positives <= 0) | (negatives <= 0) | ~np.isfinite(params).all(axis=1) | (np.abs(params) > 1e6).any(axis=1)
    params[bad] = np.nan
    return params


def logistic_recalibration(labels: Any, probs: Any) -> tuple[float, float]:
    """(intercept, slope) of the logistic regression of ``labels`` on logit(``probs``), unpenalised."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = logit(probs).reshape(-1)
    start = np.array([[np.log((y.mean() + EPS) / (1 - y.mean() + EPS)), 0.0]])
    intercept, slope = _newton(x, y, np.ones((1, y.size)), start, _NEWTON_ITERATIONS)[0]
    return float(intercept), float(slope)


def intercept_at_slope_1(labels: Any, probs: Any) -> float:
    """Calibration in the large: the intercept a of ``logit P(y=1) = a + logit(p)``; 0 when calibrated on average."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = logit(probs).reshape(-1)
    return float(_newton(np.zeros_like(x), y, np.ones((1, y.size)), np.zeros((1, 2)), _NEWTON_ITERATIONS,
                         fit_slope=False, offset=x)[0, 0])


# --------------------------------------------------------------------------- bins


def equal_mass_edges(probs: Any, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` edges at the quantiles of ``probs`` (numpy's default rule); ties can merge bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return np.quantile(np.asarray(probs, dtype=np.float64).reshape(-1), np.linspace(0.0, 1.0, n_bins + 1))


def equal_mass_bin_index(probs: Any, n_bins: int) -> np.ndarray:
    """Each film's bin (0 .. n_bins - 1) between ``equal_mass_edges``: bin b is [edge b, edge b+1), the last closed."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    edges = equal_mass_edges(p, n_bins)
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)


# --------------------------------------------------------------------------- figures of one class


def _figures(y: np.ndarray, p: np.ndarray, codes: np.ndarray, counts: np.ndarray, bins: np.ndarray, n_bins: int,
             fitted: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """Per row of patient draw ``counts`` (R, patients): O/E, Brier, scaled Brier, equal-mass ECE, slope, intercepts.

    Every figure is a sum over films, so it goes through per-patient (and per patient and
    bin) totals: a resample costs a (R, patients) product, whatever its films. Without
    ``fitted`` the logistic fits run to convergence on the films (the point estimate).
    With ``fitted`` (intercept, slope, intercept at slope 1 of the full set) each
    resample's fit is one Newton step from them, whose score and information are sums
    over films too: the one-step (linearised) bootstrap of Moulton and Zeger (1991).
    Its error is of order 1/n against a sampling spread of order 1/sqrt(n).
    """
    n_patients = counts.shape[1]

    def per_patient(values: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=values, minlength=n_patients)

    total = counts @ per_patient(np.ones_like(y))
    positives = counts @ per_patient(y)
    expected = counts @ per_patient(p)
    brier = (counts @ per_patient((p - y) ** 2)) / total
    prevalence = positives / total
    cell = codes * n_bins + bins
    by_bin_y = np.bincount(cell, weights=y, minlength=n_patients * n_bins).reshape(n_patients, n_bins)
    by_bin_p = np.bincount(cell, weights=p, minlength=n_patients * n_bins).reshape(n_patients, n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed_expected = positives / expected
        scaled_brier = 1.0 - brier / (prevalence * (1 - prevalence))
        ece = np.abs(counts @ by_bin_y - counts @ by_bin_p).sum(axis=1) / total
    x = logit(p)
    if fitted is None:
        weights = counts[:, codes]
        start = np.tile([np.log((y.mean() + EPS) / (1 - y.mean() + EPS)), 0.0], (len(counts), 1))
        joint = _newton(x, y, weights, start, _NEWTON_ITERATIONS)
        large = _newton(np.zeros_like(x), y, weights, np.c_[start[:, :1], np.zeros(len(counts))],
                        _NEWTON_ITERATIONS, fit_slope=False, offset=x)[:, 0]
    else:
        intercept, slope, at_slope_1 = fitted
        fitted_p = expit(intercept + slope * x)
        residual, curvature = y - fitted_p, fitted_p * (1 - fitted_p)
        sums = np.stack([per_patient(v) for v in (residual, residual * x, curvature, curvature * x,
                                                  curvature * x * x)], axis=1)
        g0, g1, h00, h01, h11 = (counts @ sums).T
        offset_p = expit(at_slope_1 + x)
        g_large = counts @ per_patient(y - offset_p)
        h_large = counts @ per_patient(offset_p * (1 - offset_p))
        with np.errstate(divide="ignore", invalid="ignore"):
            det = h00 * h11 - h01 ** 2
            joint = np.c_[intercept + (h11 * g0 - h01 * g1) / det, slope + (h00 * g1 - h01 * g0) / det]
            large = at_slope_1 + g_large / h_large
        joint[~(det > 0)] = np.nan
    # O/E, ECE and Brier exist whatever the labels; the fits and the scaled Brier need positives and negatives
    both = (positives > 0) & (positives < total)
    figures = {"observed_expected": observed_expected, "brier": brier, "ece": ece}
    figures |= {name: np.where(both, value, np.nan) for name, value in (
        ("scaled_brier", scaled_brier), ("slope", joint[:, 1]), ("intercept", joint[:, 0]),
        ("intercept_at_slope_1", large))}
    return figures


CALIBRATION_FIGURES: tuple[str, ...] = ("observed_expected", "scaled_brier", "slope", "intercept",
                                        "intercept_at_slope_1", "ece", "brier")


def calibration_summary(
    labels: Any, probs: Any, patient_ids: Any, n_bins: int = 10, n_resamples: int = 1000, seed: int = 0,
    confidence: float = CONFIDENCE, class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per class: O/E, scaled Brier, slope, intercept, intercept at slope 1, equal-mass ECE and Brier, with intervals.

    Columns: each figure then ``<figure>_ci_low`` and ``<figure>_ci_high`` (patient
    bootstrap, ``n_resamples`` draws from ``seed``: the AUROC bootstrap's draws), then
    mean_probability, prevalence, films. The equal-mass bins are fixed on the full set
    and kept in every resample. NaN for a class with one label value only.
    """
    y_all, p_all = _check_inputs(labels, probs)
    _check_probabilities(p_all)
    names = _class_names(y_all.shape[1], class_names)
    codes, n_patients = _patient_codes(patient_ids, y_all.shape[0])
    n_classes = y_all.shape[1]
    # the full set is the draw that takes each patient once
    once = np.ones((1, n_patients))
    bins = [equal_mass_bin_index(p_all[:, k], n_bins) for k in range(n_classes)]
    points = [_figures(y_all[:, k].astype(np.float64), p_all[:, k], codes, once, bins[k], n_bins)
              for k in range(n_classes)]
    samples = {name: np.full((n_resamples, n_classes), np.nan) for name in CALIBRATION_FIGURES}
    row = 0
    for counts in _patient_draw_chunks(n_patients, n_resamples, seed):
        for k in range(n_classes):
            point = points[k]  # without a fit (one label value) the resampled fits are NaN, the rest is computed
            fitted = (point["intercept"][0], point["slope"][0], point["intercept_at_slope_1"][0])
            for name, values in _figures(y_all[:, k].astype(np.float64), p_all[:, k], codes, counts, bins[k], n_bins,
                                         fitted).items():
                samples[name][row:row + len(counts), k] = values
        row += len(counts)
    rows = []
    for k, name in enumerate(names):
        entry: dict[str, Any] = {"finding": name}
        for figure in CALIBRATION_FIGURES:
            low, high, _ = percentile_interval(samples[figure][:, k], confidence)
            entry |= {figure: float(points[k][figure][0]), f"{figure}_ci_low": low, f"{figure}_ci_high": high}
        entry |= {"mean_probability": float(p_all[:, k].mean()), "prevalence": float(y_all[:, k].mean()),
                  "films": int(y_all.shape[0])}
        rows.append(entry)
    table = pd.DataFrame(rows).set_index("finding")
    table.attrs.update({"n_bins": n_bins, "bins": "equal mass", "confidence": confidence, "n_resamples": n_resamples,
                        "seed": seed})
    return table


def equal_mass_reliability(
    labels: Any, probs: Any, patient_ids: Any, n_bins: int = 10, n_resamples: int = 1000, seed: int = 0,
    confidence: float = CONFIDENCE, class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Reliability-diagram points in equal-mass bins, with a patient-bootstrap interval on each observed rate.

    Long format: finding, bin, low, high (the bin's probability range), mean_probability,
    fraction_positive, ci_low, ci_high, films. Empty bins (ties merged them) have no row.
    """
    y_all, p_all = _check_inputs(labels, probs)
    _check_probabilities(p_all)
    names = _class_names(y_all.shape[1], class_names)
    codes, n_patients = _patient_codes(patient_ids, y_all.shape[0])
    frames = []
    for k, name in enumerate(names):
        y, p = y_all[:, k].astype(np.float64), p_all[:, k]
        edges = equal_mass_edges(p, n_bins)
        bins = equal_mass_bin_index(p, n_bins)
        # per (patient, bin): films and positives, so each resample's rates are two matrix products
        films = np.zeros((n_patients, n_bins))
        positives = np.zeros((n_patients, n_bins))
        np.add.at(films, (codes, bins), 1.0)
        np.add.at(positives, (codes, bins), y)
        rates = np.full((n_resamples, n_bins), np.nan)
        row = 0
        for counts in _patient_draw_chunks(n_patients, n_resamples, seed):
            with np.errstate(divide="ignore", invalid="ignore"):
                rates[row:row + len(counts)] = (counts @ positives) / (counts @ films)
            row += len(counts)
        for b in range(n_bins):
            in_bin = bins == b
            if not in_bin.any():
                continue
            low, high, _ = percentile_interval(rates[:, b], confidence)
            frames.append({"finding": name, "bin": b, "low": edges[b], "high": edges[b + 1],
                           "mean_probability": float(p[in_bin].mean()), "fraction_positive": float(y[in_bin].mean()),
                           "ci_low": low, "ci_high": high, "films": int(in_bin.sum())})
    columns = ["finding", "bin", "low", "high", "mean_probability", "fraction_positive", "ci_low", "ci_high", "films"]
    table = pd.DataFrame(frames, columns=columns)
    table.attrs.update({"n_bins": n_bins, "confidence": confidence, "n_resamples": n_resamples})
    return table


# --------------------------------------------------------------------------- recalibration


@dataclass(frozen=True)
class Recalibration:
    """Per finding, fitted on validation: Platt's (intercept, slope) or a temperature; NaN where it could not be."""

    method: str
    intercept: np.ndarray  # Platt: a; temperature: 0
    slope: np.ndarray  # Platt: b; temperature: 1 / T
    class_names: tuple[str, ...]

    @property
    def temperature(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return 1.0 / self.slope

    def apply(self, probs: Any) -> np.ndarray:
        """expit(intercept + slope * logit(p)) per column; a finding without a fit keeps its raw probabilities."""
        p = np.asarray(probs, dtype=np.float64)
        fitted = np.isfinite(self.intercept) & np.isfinite(self.slope)
        recalibrated = expit(np.where(fitted, self.intercept, 0.0) + np.where(fitted, self.slope, 1.0) * logit(p))
        return np.where(fitted[None, :], recalibrated, p)

    def to_document(self) -> dict[str, Any]:
        return {"method": self.method, "fitted_on": "validation predictions (predictions_val.csv) only",
                "per_class": {name: ({"intercept": float(a), "slope": float(b)} if self.method == "platt" else
                                     {"temperature": float(1.0 / b) if np.isfinite(b) and b != 0 else None})
                              for name, a, b in zip(self.class_names, self.intercept, self.slope)}}


def fit_temperature(labels: Any, probs: Any) -> float:
    """T minimising the Bernoulli log-loss of expit(logit(p) / T) (Newton on 1 / T, no intercept); NaN if none."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = logit(probs).reshape(-1)
    if y.min() == y.max():
        return float("nan")
    inverse = np.ones(1)
    for _ in range(_NEWTON_ITERATIONS):
        p = expit(inverse * x)
        gradient = x @ (y - p)
        curvature = (x * x) @ (p * (1 - p))
        if curvature <= 0:
            return float("nan")
        inverse = inverse + gradient / curvature
    return float(1.0 / inverse[0]) if np.isfinite(inverse[0]) and inverse[0] > 0 else float("nan")


def fit_recalibration(val_labels: Any, val_probs: Any, method: str,
                      class_names: Sequence[str] | None = None) -> Recalibration:
    """Platt or temperature scaling per finding, on validation predictions only."""
    if method not in RECALIBRATION_METHODS or method == "none":
        raise ValueError(f"recalibration method must be one of {RECALIBRATION_METHODS[1:]}, got {method!r}")
    y, p = _check_inputs(val_labels, val_probs)
    _check_probabilities(p)
    names = tuple(_class_names(y.shape[1], class_names))
    intercept = np.full(y.shape[1], np.nan)
    slope = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if y[:, k].min() == y[:, k].max():
            continue
        if method == "platt":
            intercept[k], slope[k] = logistic_recalibration(y[:, k], p[:, k])
        else:
            temperature = fit_temperature(y[:, k], p[:, k])
            intercept[k], slope[k] = (0.0, 1.0 / temperature) if np.isfinite(temperature) else (np.nan, np.nan)
    return Recalibration(method, intercept, slope, names)

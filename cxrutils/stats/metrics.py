"""Evaluation metrics: per-class scores with patient-bootstrap intervals, thresholded
reports, calibration, subgroups, and the published numbers to compare against.

scikit-learn computes the point metrics. What it lacks is written here:

- **Patient bootstrap.** NIH patients have several films each (3.6 on average over
  the dataset, about 9 on the official test list, where a tenth of the patients hold
  over half the films: ``cxrutils.stats.cohort`` gives the figures of the films
  scored), and one patient's films are far more alike than two patients'. Resampling images would treat them
  as independent and give intervals that are too narrow, so whole patients are
  drawn with replacement. Each resample becomes an image multiplicity (how often
  its patient was drawn), and AUROC is the Mann-Whitney statistic with those
  multiplicities as weights: one sort per class, then two sparse products per
  batch of resamples, instead of thousands of ``roc_auc_score`` calls (1000
  resamples x 14 classes x 25k images take about a second).
- **Thresholds** are inputs. They are chosen on validation predictions by
  ``cxrutils.stats.thresholds.choose_thresholds``; nothing here looks at the labels it
  scores to pick one. A class whose threshold is NaN (validation had no positives
  or no negatives) is reported as such, never given a made-up threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

from cxrutils.labels import FINDINGS
from cxrutils.progress import progress_bar
from cxrutils.stats.intervals import percentile_interval

MEAN_ROW = "mean"
# When a finding is scorable at all: the one rule for metrics, subgroups and the comparison. Clustered
# variances divide by (patients - 1) on each side, so both sides need two patients, not just two films.
MIN_POSITIVES = 2
MIN_NEGATIVES = 2
MIN_PATIENTS_PER_SIDE = 2
NOT_SCORABLE_NOTE = "not scored: fewer than 2 positive or 2 negative films, or from fewer than 2 patients each"
NO_THRESHOLD_NOTE = "no threshold: validation had only one label value for this class"
# Resamples are drawn and scored this many at a time, which bounds memory at a few
# (chunk x patients) and (chunk x 2 positives) float64 arrays whatever n_resamples is.
_RESAMPLE_CHUNK = 128


# --------------------------------------------------------------------------- inputs


def _as_2d(values: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be (n_images,) or (n_images, n_classes); got shape {array.shape}")
    return array


def _check_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) labels in {0, 1} and finite (n, k) scores, or an error saying what is wrong."""
    y = _as_2d(labels, "labels")
    s = _as_2d(scores, "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; found {np.unique(y[~np.isin(y, (0, 1))])[:5]}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite values")
    return y.astype(np.int8), s


def _class_names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} columns")
        return list(class_names)
    if n_classes == len(FINDINGS):
        return list(FINDINGS)
    raise ValueError(f"{n_classes} columns are not the 14 findings: pass class_names")


def _check_thresholds(thresholds: Any, n_classes: int) -> np.ndarray:
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size != n_classes:
        raise ValueError(f"{values.size} thresholds for {n_classes} classes")
    return values


def threshold_array(by_finding: Mapping[str, float | None], class_names: Sequence[str] = FINDINGS) -> np.ndarray:
    """One method's entry of a run's ``thresholds.json`` (finding -> value or null) as an array.

    ``null`` (no threshold could be chosen on validation) becomes NaN, which the
    thresholded reports below show as excluded.
    """
    missing = [name for name in class_names if name not in by_finding]
    if missing:
        raise KeyError(f"thresholds have no entry for {missing}; they hold {sorted(by_finding)}")
    return np.array([np.nan if by_finding[n] is None else float(by_finding[n]) for n in class_names])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- point metrics


def scorable(labels: Any, patient_ids: Any, min_positives: int = MIN_POSITIVES,
             min_positive_patients: int = MIN_PATIENTS_PER_SIDE) -> np.ndarray:
    """Per class: whether an AUROC (and an interval, and a DeLong test) can be given at all.

    At least ``min_positives`` (never fewer than 2) positive films and 2 negative ones,
    from at least ``min_positive_patients`` (never fewer than 2) patients with a positive
    film and 2 with a negative one. Subgroup figures pass a larger
    ``min_positive_patients`` (the setting ``subgroup_min_positive_patients``): a
    group's positives from a handful of patients are a handful of observations.
    """
    y = _as_2d(labels, "labels")
    ids = np.asarray(patient_ids).reshape(-1)
    if ids.size != y.shape[0]:
        raise ValueError(f"{ids.size} patient ids for {y.shape[0]} images")
    codes = pd.factorize(ids)[0]
    positive, negative = y == 1, y == 0
    patients_with = {}
    for side, mask in (("positive", positive), ("negative", negative)):
        counts = np.zeros(y.shape[1], dtype=int)
        for k in range(y.shape[1]):
            counts[k] = np.unique(codes[mask[:, k]]).size
        patients_with[side] = counts
    return (
        (positive.sum(axis=0) >= max(min_positives, MIN_POSITIVES))
        & (negative.sum(axis=0) >= MIN_NEGATIVES)
        & (patients_with["positive"] >= max(min_positive_patients, MIN_PATIENTS_PER_SIDE))
        & (patients_with["negative"] >= MIN_PATIENTS_PER_SIDE)
    )


def positive_patients(labels: Any, patient_ids: Any) -> np.ndarray:
    """Per class: how many patients have at least one positive film."""
    y = _as_2d(labels, "labels")
    ids = np.asarray(patient_ids).reshape(-1)
    if ids.size != y.shape[0]:
        raise ValueError(f"{ids.size} patient ids for {y.shape[0]} images")
    codes = pd.factorize(ids)[0]
    return np.array([np.unique(codes[y[:, k] == 1]).size for k in range(y.shape[1])], dtype=int)


def per_class_auroc(labels: Any, scores: Any) -> np.ndarray:
    """ROC AUC per column; NaN where a column has only one label value (AUROC is undefined)."""
    y, s = _check_inputs(labels, scores)
    values = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if y[:, k].min() != y[:, k].max():
            values[k] = roc_auc_score(y[:, k], s[:, k])
    return values


def per_class_average_precision(labels: Any, scores: Any) -> np.ndarray:
    """Average precision (area under the PR curve, sklearn's step rule) per column.

    NaN where a column has no positives: precision is then undefined, and sklearn's
    fallback value would be read as a real score. Unlike AUROC, AP depends on
    prevalence, so compare it with the prevalence, not with 0.5.
    """
    y, s = _check_inputs(labels, scores)
    values = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if y[:, k].any():
            values[k] = average_precision_score(y[:, k], s[:, k])
    return values


# --------------------------------------------------------------------------- weighted Mann-Whitney


@dataclass(frozen=True)
class _RankedClass:
    """One class's images as sparse count matrices over weight units (patients, or images).

    Mann-Whitney needs, for each positive image, the negative weight scoring below
    it and the negative weight tied with it. Only the ranks where some positive sits
    matter, so the negatives are grouped into the segments between those ranks
    (``negatives``: unit x segment counts) and each positive points at two segment
    boundaries (``positive_boundaries``: unit x boundary counts). A resample's
    multiplicities then turn into AUROC with two sparse products and a short
    cumulative sum, computed once per class and reused by every resample.
    """

    negatives: sparse.csr_matrix  # (units, boundaries): negatives of each unit per segment below a boundary
    positive_boundaries: sparse.csr_matrix  # (units, boundaries): positives' "below" plus "not above" boundaries
    positives_per_unit: np.ndarray
    negatives_per_unit: np.ndarray


def _rank_class(positive: np.ndarray, scores: np.ndarray, unit: np.ndarray, n_units: int,
                image_weights: np.ndarray | None = None) -> _RankedClass:
    """``image_weights`` (default 1): what each image adds to its unit's counts, e.g. 1 / its patient's films."""
    weight = np.ones(scores.size) if image_weights is None else np.asarray(image_weights, dtype=np.float64)
    negative_scores = scores[~positive]
    order = np.argsort(negative_scores, kind="stable")
    ascending = negative_scores[order]
    positive_scores = scores[positive]
    below = np.searchsorted(ascending, positive_scores, side="left")  # negatives scoring lower
    not_above = np.searchsorted(ascending, positive_scores, side="right")  # lower or tied
    boundaries = np.unique(np.r_[below, not_above])
    # The negative of rank j counts below boundary k exactly when j < boundaries[k],
    # that is when its segment (boundaries <= j) is at most k.
    segment = np.searchsorted(boundaries, np.arange(ascending.size), side="right")
    counted = segment < boundaries.size
    shape = (n_units, boundaries.size)
    negatives = sparse.csr_matrix(
        (weight[~positive][order][counted], (unit[~positive][order][counted], segment[counted])), shape=shape
    )
    positive_unit = unit[positive]
    positive_boundaries = sparse.csr_matrix(
        (
            np.r_[weight[positive], weight[positive]],
            (
                np.r_[positive_unit, positive_unit],
                np.r_[np.searchsorted(boundaries, below), np.searchsorted(boundaries, not_above)],
            ),
        ),
        shape=shape,
    )
    return _RankedClass(
        negatives=negatives,
        positive_boundaries=positive_boundaries,
        positives_per_unit=np.bincount(positive_unit, weights=weight[positive], minlength=n_units),
        negatives_per_unit=np.bincount(unit[~positive], weights=weight[~positive], minlength=n_units),
    )


def _weighted_aurocs(weights: np.ndarray, ranked: _RankedClass) -> np.ndarray:
    """AUROC for each row of ``weights`` (R, units): Mann-Whitney with multiplicities.

    The weighted share of (positive, negative) pairs in which the positive scores
    higher, ties counting one half: twice that count is each positive's weight times
    (negative weight strictly below + negative weight below or tied). With integer
    multiplicities every sum is an exact float64 integer. NaN for rows with no
    positive or no negative weight.
    """
    weights = np.asarray(weights, dtype=np.float64)
    pairs = (weights @ ranked.positives_per_unit) * (weights @ ranked.negatives_per_unit)
    if ranked.negatives.shape[1] == 0:
        return np.full(weights.shape[0], np.nan)
    negative_below = np.cumsum(np.asarray(ranked.negatives.T @ weights.T).T, axis=1)
    positive_at = np.asarray(ranked.positive_boundaries.T @ weights.T).T
    twice_wins = (negative_below * positive_at).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        aurocs = np.where(pairs > 0, twice_wins / (2.0 * np.where(pairs > 0, pairs, 1.0)), np.nan)
    return np.clip(aurocs, 0.0, 1.0)  # fractional weights (1 / films) can round a perfect ranking past 1


def weighted_auroc(labels: Any, scores: Any, weights: Any | None = None) -> float:
    """AUROC where image i counts ``weights[i]`` times, by the same code as the bootstrap.

    Equals ``roc_auc_score`` on the sample with each image repeated ``weights[i]``
    times; NaN without positive or negative weight.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    w = np.ones(s.size) if weights is None else np.asarray(weights).reshape(-1)
    if not (y.size == s.size == w.size):
        raise ValueError(f"labels ({y.size}), scores ({s.size}) and weights ({w.size}) differ in length")
    if (w < 0).any():
        raise ValueError("weights must not be negative")
    return float(_weighted_aurocs(w[None, :], _rank_class(y, s, np.arange(s.size), s.size))[0])


# --------------------------------------------------------------------------- patient bootstrap


def _patient_codes(patient_ids: Any, n_images: int) -> tuple[np.ndarray, int]:
    ids = np.asarray(patient_ids).reshape(-1)
    if ids.size != n_images:
        raise ValueError(f"{ids.size} patient ids for {n_images} images")
    if pd.isna(pd.Series(ids)).any():
        raise ValueError("patient_ids hold missing values; every image needs its patient to resample by patient")
    codes, uniques = pd.factorize(ids, sort=True)  # by patient id: the same resamples whatever the row order
    return codes.astype(np.int64), len(uniques)


def _patient_draw_chunks(n_patients: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n_patients) draw counts: how often each patient is in each resample."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _RESAMPLE_CHUNK):
        rows = min(_RESAMPLE_CHUNK, n_resamples - start)
        draws = rng.integers(0, n_patients, size=(rows, n_patients))
        offsets = (np.arange(rows) * n_patients)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=rows * n_patients)
        yield counts.reshape(rows, n_patients).astype(np.float64)


def bootstrap_resample_aurocs(
    labels: Any, scores: Any, patient_ids: Any, n_resamples: int = 1000, seed: int = 0, progress: str | None = None,
    image_weights: Any | None = None,
) -> np.ndarray:
    """(n_resamples, n_classes) AUROCs of patient-bootstrap resamples (NaN: no positives or negatives).

    Each resample draws as many patients as there are, with replacement, and takes
    all images of each drawn patient; same ``seed``, same resamples (the draws depend
    on the patients, not on the images or ``image_weights``). ``image_weights`` (default
    1) weigh each image inside every resample, e.g. 1 / its patient's films.
    ``progress`` names a transient progress bar over the resamples (none by default).
    """
    y, s = _check_inputs(labels, scores)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    codes, n_patients = _patient_codes(patient_ids, y.shape[0])
    weights = None
    if image_weights is not None:
        weights = np.asarray(image_weights, dtype=np.float64).reshape(-1)
        if weights.size != y.shape[0] or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"image_weights must be {y.shape[0]} finite, non-negative numbers")
    ranked = [_rank_class(y[:, k].astype(bool), s[:, k], codes, n_patients, weights) for k in range(y.shape[1])]
    aurocs = np.empty((n_resamples, y.shape[1]))
    row = 0
    bar = progress_bar(total=n_resamples, desc=progress, unit="resample", disable=progress is None, leave=False,
                       done=False)
    for counts in _patient_draw_chunks(n_patients, n_resamples, seed):
        for k, ranked_class in enumerate(ranked):
            aurocs[row : row + len(counts), k] = _weighted_aurocs(counts, ranked_class)
        row += len(counts)
        bar.update(len(counts))
    bar.close()
    return aurocs


def bootstrap_auroc(
    labels: Any,
    scores: Any,
    patient_ids: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    class_names: Sequence[str] | None = None,
    mean_over: Sequence[str] | None = None,
    progress: str | None = None,
) -> pd.DataFrame:
    """AUROC per class with a patient-bootstrap percentile interval, and their mean (``progress``: a bar's name).

    Rows: one per class, then ``"mean"``. Columns: ``auroc`` (on the full set),
    ``ci_low``, ``ci_high``, ``positives``, ``negatives``, ``n_resamples`` (the
    resamples that count for the row: those without a positive or a negative are
    skipped for that class).

    A class that is not ``scorable`` here (too few positive or negative films or
    patients) gets no AUROC (NaN), its note says why, and it stays out of the mean.

    The mean's interval comes from the mean computed inside each resample, so it
    reflects that the classes share patients. It averages ``mean_over`` (default:
    every scorable class); resamples where one of those classes is undefined are
    skipped for the mean, so it always averages the same classes.
    ``table.attrs["mean_over"]`` names them.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    point = np.where(scorable(y, patient_ids), per_class_auroc(y, s), np.nan)
    resampled = bootstrap_resample_aurocs(y, s, patient_ids, n_resamples=n_resamples, seed=seed, progress=progress)
    if mean_over is None:
        in_mean = np.isfinite(point)
    else:
        unknown = sorted(set(mean_over) - set(names))
        if unknown:
            raise ValueError(f"mean_over names {unknown}, which are not among the classes {names}")
        in_mean = np.isin(names, list(mean_over))
        undefined = [n for n, defined in zip(names, np.isfinite(point)) if n in mean_over and not defined]
        if undefined:
            raise ValueError(f"mean_over includes {undefined}, whose AUROC is undefined on these labels")
    rows = []
    for k, name in enumerate(names):
        low, high, _ = percentile_interval(resampled[:, k], confidence)
        rows.append(
            {
                "finding": name,
                "auroc": point[k],
                "ci_low": low,
                "ci_high": high,
                "positives": int(y[:, k].sum()),
                "negatives": int((1 - y[:, k]).sum()),
                "n_resamples": int(np.isfinite(resampled[:, k]).sum()),
            }
        )
    if in_mean.any():
        mean_samples = resampled[:, in_mean].mean(axis=1)  # NaN where any included class is undefined
        low, high, _ = percentile_interval(mean_samples, confidence)
        mean_point, used = float(point[in_mean].mean()), int(np.isfinite(mean_samples).sum())
    else:
        mean_point, low, high, used = np.nan, np.nan, np.nan, 0
    rows.append(
        {
            "finding": MEAN_ROW,
            "auroc": mean_point,
            "ci_low": low,
            "ci_high": high,
            "positives": pd.NA,
            "negatives": pd.NA,
            "n_resamples": used,
        }
    )
    table = pd.DataFrame(rows).set_index("finding")
    table[["positives", "negatives"]] = table[["positives", "negatives"]].astype("Int64")
    table.attrs.update(
        {
            "mean_over": [n for n, m in zip(names, in_mean) if m],
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            "resampling": "patients, with replacement",
        }
    )
    return table


# --------------------------------------------------------------------------- thresholded reports


def binarise(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Positive where score >= threshold: the rule the threshold was chosen under."""
    return (scores >= thresholds[None, :]).astype(np.int8)


def classification_report_table(
    labels: Any,
    scores: Any,
    thresholds: Any,
    class_names: Sequence[str] | None = None,
    zero_division: float = np.nan,
) -> pd.DataFrame:
    """sklearn's ``classification_report(output_dict=True)`` at the given thresholds, as a frame.

    Rows: each class, then micro/macro/weighted/samples averages; columns
    precision, recall, f1-score, support, note. A class whose threshold is NaN is
    left out of the binarised predictions and of every average (its row shows its
    support, NaN metrics and a note saying why); the averages' notes say how many
    classes they cover. ``zero_division=nan`` shows a precision with no predicted
    positives as undefined rather than 0.
    """
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    cut = _check_thresholds(thresholds, y.shape[1])
    usable = np.isfinite(cut)
    if not usable.any():
        raise ValueError("every threshold is NaN: there is nothing to binarise")
    kept = [n for n, u in zip(names, usable) if u]
    predicted = binarise(s[:, usable], cut[usable])
    if len(kept) > 1:
        report = classification_report(
            y[:, usable], predicted, target_names=kept, output_dict=True, zero_division=zero_division
        )
    else:  # one column is not a multilabel problem to sklearn: score it as binary, positives as the class
        report = classification_report(
            y[:, usable][:, 0],
            predicted[:, 0],
            labels=[1],
            target_names=kept,
            output_dict=True,
            zero_division=zero_division,
        )
        report["samples avg"] = dict.fromkeys(("precision", "recall", "f1-score"), np.nan) | {
            "support": int(y[:, usable].sum())
        }
    rows: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        if usable[k]:
            rows[name] = {**report[name], "note": ""}
        else:
            rows[name] = {
                "precision": np.nan,
                "recall": np.nan,
                "f1-score": np.nan,
                "support": float(y[:, k].sum()),
                "note": NO_THRESHOLD_NOTE,
            }
    coverage = f"over {len(kept)} of {len(names)} classes" + (
        f" (without {', '.join(n for n, u in zip(names, usable) if not u)})" if len(kept) < len(names) else ""
    )
    for average in ("micro avg", "macro avg", "weighted avg", "samples avg"):
        rows[average] = {**report[average], "note": coverage}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["support"] = table["support"].astype(int)
    table.attrs["excluded"] = [n for n, u in zip(names, usable) if not u]
    table.attrs["thresholds"] = dict(zip(names, cut.tolist()))
    return table


def operating_points(
    labels: Any, scores: Any, thresholds: Any, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per class at its threshold: TP, FP, TN, FN, sensitivity, specificity, PPV, NPV.

    Counts come from sklearn's confusion matrix; a ratio with an empty denominator is
    NaN. A class with a NaN threshold gets NaN everywhere and a note.
    """
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    cut = _check_thresholds(thresholds, y.shape[1])
    rows = []
    for k, name in enumerate(names):
        row: dict[str, Any] = {
            "finding": name,
            "threshold": cut[k],
            "positives": int(y[:, k].sum()),
            "negatives": int((1 - y[:, k]).sum()),
        }
        if not np.isfinite(cut[k]):
            rows.append(
                {
                    **row,
                    **dict.fromkeys(("tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv"), np.nan),
                    "note": NO_THRESHOLD_NOTE,
                }
            )
            continue
        predicted = (s[:, k] >= cut[k]).astype(np.int8)
        tn, fp, fn, tp = confusion_matrix(y[:, k], predicted, labels=[0, 1]).ravel()
        row.update(
            {
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
                "sensitivity": _ratio(tp, tp + fn),
                "specificity": _ratio(tn, tn + fp),
                "ppv": _ratio(tp, tp + fp),
                "npv": _ratio(tn, tn + fn),
                "note": "",
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("finding")
    for column in ("tp", "fp", "tn", "fn"):
        table[column] = table[column].astype("Int64")
    return table


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else np.nan


# --------------------------------------------------------------------------- calibration


def _check_probabilities(probs: np.ndarray) -> None:
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"probabilities must lie in [0, 1]; got [{probs.min():.4g}, {probs.max():.4g}] "
            "(pass sigmoid outputs, not logits)"
        )


def _bin_index(probs: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1], edges assigned as sklearn's ``calibration_curve`` does."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], probs)


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (share of images) x |positive rate - mean probability|."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    _check_probabilities(p)
    bins = _bin_index(p, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins))
    return float(gap.sum() / max(count.sum(), 1))  # sum_b n_b/n |mean_y - mean_p| = sum_b |sum_y - sum_p| / n


def calibration_table(
    labels: Any, probs: Any, n_bins: int = 10, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per class: ECE (``n_bins`` equal-width bins), Brier score, mean probability, prevalence.

    Calibration matters once a probability is read as a risk; AUROC is blind to
    it. The Brier score mixes calibration with discrimination, so read it beside
    ECE and the reliability diagram (``reliability_curves``).
    """
    y, p = _check_inputs(labels, probs)
    _check_probabilities(p)
    names = _class_names(y.shape[1], class_names)
    rows = []
    for k, name in enumerate(names):
        rows.append(
            {
                "finding": name,
                "ece": expected_calibration_error(y[:, k], p[:, k], n_bins),
                "brier": float(brier_score_loss(y[:, k], p[:, k], labels=[0, 1])),
                "mean_probability": float(p[:, k].mean()),
                "prevalence": float(y[:, k].mean()),
                "images": int(y.shape[0]),
            }
        )
    table = pd.DataFrame(rows).set_index("finding")
    table.attrs["n_bins"] = n_bins
    return table


def reliability_curves(
    labels: Any, probs: Any, n_bins: int = 10, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Reliability-diagram points (sklearn ``calibration_curve``, uniform bins), long format.

    Columns: finding, mean_probability, fraction_positive, images (in the bin).
    Empty bins have no row.
    """
    y, p = _check_inputs(labels, probs)
    _check_probabilities(p)
    names = _class_names(y.shape[1], class_names)
    frames = []
    for k, name in enumerate(names):
        fraction, mean_probability = calibration_curve(y[:, k], p[:, k], n_bins=n_bins, strategy="uniform")
        counts = np.bincount(_bin_index(p[:, k], n_bins), minlength=n_bins)
        frames.append(
            pd.DataFrame(
                {
                    "finding": name,
                    "mean_probability": mean_probability,
                    "fraction_positive": fraction,
                    "images": counts[counts > 0],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- subgroups

def subgroup_auroc(
    labels: Any,
    scores: Any,
    patient_ids: Any,
    groups: pd.Series,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    class_names: Sequence[str] | None = None,
    min_positives: int = MIN_POSITIVES,
    progress: bool = False,
    min_positive_patients: int = MIN_PATIENTS_PER_SIDE,
) -> pd.DataFrame:
    """AUROC with a patient-bootstrap interval per (group value, class), plus the mean per group.

    ``groups`` gives each image's group (sex, ``metadata.age_band(...)``, view), in the same
    row order as ``labels``. Within a group, its patients are resampled and their
    images in that group are taken. A class that is not ``scorable`` in a group
    (``min_positives`` positive films from ``min_positive_patients`` patients, 2 negative
    films from 2 patients) gets NaN there. The per-group mean
    averages only the classes that are scored in every group, so group means
    compare like with like (``attrs["mean_over"]``). Images without a group value
    are left out and counted in ``attrs["images_without_group"]``.

    Long format: subgroup (``groups.name``), value, finding, auroc, ci_low, ci_high,
    images, patients, positives, positive_patients (patients with a positive film in
    the group; on the mean row, the fewest of the findings it averages), n_resamples.
    """
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    values = pd.Series(groups).reset_index(drop=True)
    if len(values) != y.shape[0]:
        raise ValueError(f"groups has {len(values)} values for {y.shape[0]} images")
    ids = np.asarray(patient_ids).reshape(-1)
    present = values.notna().to_numpy()
    levels = [
        v
        for v in (
            values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else pd.unique(values[present])
        )
        if (values == v).any()
    ]
    masks = {level: (values == level).to_numpy() for level in levels}

    scored_by_level = {level: scorable(y[mask], ids[mask], min_positives, min_positive_patients)
                       for level, mask in masks.items()}
    common = np.logical_and.reduce(list(scored_by_level.values())) if levels else np.zeros(len(names), bool)
    mean_over = [n for n, c in zip(names, common) if c]
    frames = []
    for level, mask in masks.items():
        s_group = s[mask].copy()
        table = bootstrap_auroc(
            y[mask],
            s_group,
            ids[mask],
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
            class_names=names,
            mean_over=mean_over or None,
            progress=f"bootstrap {values.name or 'group'} = {level}" if progress else None,
        )
        unscored = [n for n, ok in zip(names, scored_by_level[level]) if not ok]
        table.loc[unscored, ["auroc", "ci_low", "ci_high"]] = np.nan
        if not mean_over:
            table.loc[MEAN_ROW, ["auroc", "ci_low", "ci_high"]] = np.nan
        with_positive = pd.Series(positive_patients(y[mask], ids[mask]), index=names)
        table["positive_patients"] = with_positive.reindex(table.index).astype("Int64")
        table.loc[MEAN_ROW, "positive_patients"] = (int(with_positive[mean_over].min()) if mean_over else pd.NA)
        table = table.reset_index()
        table.insert(0, "value", level)
        table.insert(0, "subgroup", values.name or "group")
        table["images"] = int(mask.sum())
        table["patients"] = int(pd.unique(ids[mask]).size)
        frames.append(table)
    columns = [
        "subgroup",
        "value",
        "finding",
        "auroc",
        "ci_low",
        "ci_high",
        "images",
        "patients",
        "positives",
        "positive_patients",
        "n_resamples",
    ]
    result = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    result.attrs.update(
        {
            "min_positive_patients": max(min_positive_patients, MIN_PATIENTS_PER_SIDE),
            "mean_over": mean_over,
            "images_without_group": int((~present).sum()),
            "confidence": confidence,
            "n_resamples": n_resamples,
        }
    )
    return result


# --------------------------------------------------------------------------- published context


def reference_results() -> pd.DataFrame:
    """Published mean AUROCs over the 14 findings, each labelled with the split it used.

    Only ``official`` rows are comparable with a model scored on the official test
    list. Random patient splits have a healthier test set (Pneumothorax 3.0% of
    train_val vs 10.4% of the official test) and run about 0.03 higher.
    """
    rows = [
        ("DenseNet121, ImageNet init", "224 px", 0.822, "official", "Xiao et al., WACV 2023"),
        ("ViT-B, MAE pretrained on chest X-rays", "", 0.830, "official", "Xiao et al., WACV 2023"),
        ("ResNet-50", "", 0.745, "official", "Wang et al. 2017, later arXiv version"),
        ("CheXNet", "", 0.841, "random patient split", "Rajpurkar et al. 2017"),
        ("reimplementation of CheXNet", "", 0.847, "random patient split", "arnoweng/CheXNet"),
    ]
    table = pd.DataFrame(rows, columns=["model", "input", "mean_auroc", "split", "source"])
    table["comparable_to_official_split"] = table["split"] == "official"
    return table


def wang2017_localization() -> pd.Series:
    """Wang et al. 2017 (ChestX-ray8), T(IoBB) = 0.1 localization accuracy for the 8 boxed findings."""
    accuracy = {
        "Atelectasis": 0.728,
        "Cardiomegaly": 0.993,
        "Effusion": 0.712,
        "Infiltration": 0.789,
        "Mass": 0.435,
        "Nodule": 0.165,
        "Pneumonia": 0.750,
        "Pneumothorax": 0.459,
    }
    series = pd.Series(accuracy, name="t_iobb_0.1")
    series.index.name = "finding"
    return series

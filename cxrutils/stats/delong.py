"""DeLong's test for AUROCs: the variance of one, and the paired test of two on the same images.

Fast DeLong (Sun & Xu, IEEE Signal Processing Letters 2014): the structural
components

    V10[i] = mean over negatives j of psi(X_i, Y_j)   (one per positive image)
    V01[j] = mean over positives i of psi(X_i, Y_j)   (one per negative image)

with psi = 1 if the positive scores higher, 1/2 on a tie, 0 otherwise, come from
three midrank vectors instead of the m x n pair table, so the cost is one sort:
O(n log n). AUROC is the mean of V10 (or of V01), and

    var(AUROC) = var(V10) / m + var(V01) / n        (DeLong et al., Biometrics 1988)

with sample variances. Two models scored on the same images have a covariance
from the same formula, which gives the paired test of their difference.

**Patients as clusters.** DeLong treats images as independent. NIH patients have
several films each (3.6 on average over the dataset, about 9 on the official test
list) and a patient's films are alike, so image-level variances are too small.
With ``clusters`` (patient ids) the variance is Obuchowski's (Biometrics 1997,
53:567-578) clustered form of the same statistic. Per patient i, with m_i
positive and n_i negative films, sum the structural components of its films:

    A_i = sum over its positives of (V10 - AUROC)
    B_i = sum over its negatives of (V01 - AUROC)

and, with M positives and N negatives in all, I patients, I10 of them with a
positive film and I01 with a negative one,

    S10 = I10 / ((I10 - 1) M) * sum A_i^2
    S01 = I01 / ((I01 - 1) N) * sum B_i^2
    S11 = I / (I - 1) * sum A_i B_i
    var(AUROC) = S10 / M + S01 / N + 2 S11 / (M N)

Each sum has its own small-sample correction. With one film per patient every A_i
B_i is 0 and I10 = M, I01 = N, so this is DeLong's variance exactly. Two models'
covariance replaces each product by the product of their components (the cross term
by both orders, A^a B^b + A^b B^a), which gives the paired test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrutils.stats.metrics import scorable

AdjustMethod = Literal["holm", "bh"]


# --------------------------------------------------------------------------- structural components


def midrank(values: Any) -> np.ndarray:
    """1-based ranks of ``values`` with ties given the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], x.size]  # exclusive
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _check_labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) as bool and scores as (k, n) float64, or an error saying what is wrong."""
    y = np.asarray(labels).reshape(-1)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; found {np.unique(y[~np.isin(y, (0, 1))])[:5]}")
    s = np.asarray(scores, dtype=np.float64)
    s = s[None, :] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[1] != y.size:
        raise ValueError(f"scores must be (n_images,) or (n_models, n_images) with n_images={y.size}; "
                         f"got shape {np.shape(scores)}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite values")
    y = y.astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUROC needs positives and negatives; got {positives} positives and {negatives} negatives")
    return y, s


def structural_components(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs (k,), V10 (k, m) over positives and V01 (k, n) over negatives, by midranks.

    ``scores`` is (n_images,) for one model or (k, n_images) for k models on the
    same images. Positives and negatives keep their order in ``labels``.
    """
    y, s = _check_labels_scores(labels, scores)
    m, n = int(y.sum()), int((~y).sum())
    k = s.shape[0]
    v10, v01 = np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        positive, negative = s[r, y], s[r, ~y]
        rank_all = midrank(s[r])
        # A positive's rank among everything minus its rank among positives counts
        # the negatives below it (ties as 1/2); symmetrically for negatives.
        v10[r] = (rank_all[y] - midrank(positive)) / n
        v01[r] = 1.0 - (rank_all[~y] - midrank(negative)) / m
    return v10.mean(axis=1), v10, v01


def _covariance(
    labels: np.ndarray, aurocs: np.ndarray, v10: np.ndarray, v01: np.ndarray, clusters: Any | None
) -> np.ndarray:
    """(k, k) covariance of the AUROC estimates, image-level (DeLong) or patient-clustered."""
    m, n = v10.shape[1], v01.shape[1]
    if clusters is None:
        if m < 2 or n < 2:
            raise ValueError(f"DeLong's variance needs at least 2 positives and 2 negatives; got {m} and {n}")
        return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    ids = np.asarray(clusters).reshape(-1)
    if ids.size != labels.size:
        raise ValueError(f"{ids.size} cluster ids for {labels.size} images")
    if pd.isna(pd.Series(ids)).any():
        raise ValueError("cluster ids hold missing values; every image needs its patient")
    codes, uniques = pd.factorize(ids)
    clusters_all = len(uniques)
    with_positive = np.unique(codes[labels]).size  # I10
    with_negative = np.unique(codes[~labels]).size  # I01
    if with_positive < 2 or with_negative < 2:
        raise ValueError(f"the clustered variance needs positive films from at least 2 patients and negative films "
                         f"from at least 2; got {with_positive} and {with_negative}")
    # Per patient, the sums of its films' centred structural components (Obuchowski's A_i and B_i).
    a = np.stack([np.bincount(codes[labels], weights=v10[r] - aurocs[r], minlength=clusters_all)
                  for r in range(aurocs.size)])
    b = np.stack([np.bincount(codes[~labels], weights=v01[r] - aurocs[r], minlength=clusters_all)
                  for r in range(aurocs.size)])
    s10 = with_positive / ((with_positive - 1) * m) * (a @ a.T)
    s01 = with_negative / ((with_negative - 1) * n) * (b @ b.T)
    s11 = clusters_all / (clusters_all - 1) * (a @ b.T)
    return s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def delong_covariance(labels: Any, scores: Any, clusters: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their (k, k) covariance matrix for k models on the same images.

    ``clusters`` (e.g. patient ids, one per image) switches to the patient-clustered
    variance; without it images are taken as independent (DeLong 1988).
    """
    y, _ = _check_labels_scores(labels, scores)
    aurocs, v10, v01 = structural_components(labels, scores)
    return aurocs, _covariance(y, aurocs, v10, v01, clusters)


def _z_quantile(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def two_sided_p(z: float) -> float:
    """Two-sided normal p-value of ``z`` (1 at z = 0, 0 at infinite z)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# --------------------------------------------------------------------------- one AUROC


@dataclass(frozen=True)
class AurocEstimate:
    """One AUROC with its DeLong variance and a normal interval clipped to [0, 1]."""

    auroc: float
    variance: float
    ci_low: float
    ci_high: float
    positives: int
    negatives: int


def delong_auroc(
    labels: Any, scores: Any, clusters: Any | None = None, confidence: float = 0.95
) -> AurocEstimate:
    """AUROC of one score vector with its DeLong (or patient-clustered) variance."""
    y, _ = _check_labels_scores(labels, scores)
    aurocs, covariance = delong_covariance(labels, scores, clusters)
    auroc, variance = float(aurocs[0]), float(covariance[0, 0])
    half = _z_quantile(confidence) * math.sqrt(max(variance, 0.0))
    return AurocEstimate(auroc, variance, max(0.0, auroc - half), min(1.0, auroc + half),
                         int(y.sum()), int((~y).sum()))


# --------------------------------------------------------------------------- paired test


@dataclass(frozen=True)
class PairedTest:
    """DeLong's paired test of AUROC(a) - AUROC(b) on the same images."""

    auroc_a: float
    auroc_b: float
    difference: float  # a - b
    variance: float  # of the difference
    z: float
    p_value: float  # two-sided
    ci_low: float
    ci_high: float
    positives: int
    negatives: int


def delong_paired_test(
    labels: Any, scores_a: Any, scores_b: Any, clusters: Any | None = None, confidence: float = 0.95
) -> PairedTest:
    """Two-sided test of equal AUROCs for two models scored on the same images.

    The variance of the difference is computed from the difference of the two
    models' structural components (equal to var_a + var_b - 2 cov_ab, without the
    cancellation), so models that rank every image alike get exactly zero: then
    the difference is 0 and p = 1.
    """
    y, both = _check_labels_scores(labels, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
    aurocs, v10, v01 = structural_components(y, both)
    difference_components = (aurocs[:1] - aurocs[1:], v10[:1] - v10[1:], v01[:1] - v01[1:])
    variance = float(_covariance(y, *difference_components, clusters)[0, 0])
    difference = float(aurocs[0] - aurocs[1])
    if variance > 0:
        z = difference / math.sqrt(variance)
        p_value = two_sided_p(z)
    else:  # identical rankings: no evidence of a difference (and the difference is 0)
        z, p_value = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    half = _z_quantile(confidence) * math.sqrt(max(variance, 0.0))
    return PairedTest(float(aurocs[0]), float(aurocs[1]), difference, variance, z, p_value,
                      difference - half, difference + half, int(y.sum()), int((~y).sum()))


def delong_per_class(
    labels: Any,
    scores_a: Any,
    scores_b: Any,
    class_names: Sequence[str],
    clusters: Any | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The paired test for each column of (n_images, n_classes) labels and scores.

    Rows: one per class. Columns: auroc_a, auroc_b, difference, ci_low, ci_high
    (normal interval of the difference), z, p_value, positives, negatives, note.
    A class that is not ``metrics.scorable`` (2 positive and 2 negative films, from 2
    patients each, the patients being the images without ``clusters``) gets NaN and a note.
    """
    y = np.asarray(labels)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if not (y.ndim == 2 and y.shape == a.shape == b.shape and y.shape[1] == len(class_names)):
        raise ValueError(f"labels {y.shape}, scores_a {a.shape} and scores_b {b.shape} must all be "
                         f"(n_images, {len(class_names)})")
    units = np.arange(y.shape[0]) if clusters is None else np.asarray(clusters).reshape(-1)
    tested = scorable(y, units)
    rows = []
    for k, name in enumerate(class_names):
        positives, negatives = int((y[:, k] == 1).sum()), int((y[:, k] == 0).sum())
        row: dict[str, Any] = {"finding": name, "positives": positives, "negatives": negatives, "note": ""}
        if not tested[k]:
            row.update(dict.fromkeys(("auroc_a", "auroc_b", "difference", "ci_low", "ci_high", "z", "p_value"),
                                     np.nan), note=f"not tested: {positives} positives, {negatives} negatives")
        else:
            test = delong_paired_test(y[:, k], a[:, k], b[:, k], clusters=clusters, confidence=confidence)
            row.update(auroc_a=test.auroc_a, auroc_b=test.auroc_b, difference=test.difference,
                       ci_low=test.ci_low, ci_high=test.ci_high, z=test.z, p_value=test.p_value)
        rows.append(row)
    columns = ["finding", "auroc_a", "auroc_b", "difference", "ci_low", "ci_high", "z", "p_value",
               "positives", "negatives", "note"]
    table = pd.DataFrame(rows)[columns].set_index("finding")
    table.attrs.update(confidence=confidence, variance="patient-clustered (Obuchowski 1997)"
                       if clusters is not None else "images independent (DeLong 1988)")
    return table


# --------------------------------------------------------------------------- multiplicity


def adjust_p_values(p_values: Any, method: AdjustMethod = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values, in the input order; NaN entries stay NaN and do not count.

    - ``holm``: Holm's step-down, controls the family-wise error rate.
    - ``bh``: Benjamini-Hochberg step-up, controls the false discovery rate
      (independent or positively dependent tests).
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    tested = np.isfinite(p)
    if ((p[tested] < 0) | (p[tested] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {p[tested][(p[tested] < 0) | (p[tested] > 1)][:5]}")
    adjusted = np.full(p.shape, np.nan)
    values = p[tested]
    m = values.size
    if m == 0:
        return adjusted
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    if method == "holm":
        stepped = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        stepped = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"unknown adjustment {method!r}; choose 'holm' or 'bh'")
    result = np.empty(m)
    result[order] = np.minimum(stepped, 1.0)
    adjusted[tested] = result
    return adjusted

"""AUROC counted by patient, not by film: a sensitivity analysis beside the film-level headline.

The headline AUROC weighs every film equally, so a patient followed up 100 times
counts 100 times as much as one seen once. On NIH's official test list a tenth of
the patients hold over half the films, so the film-level figure leans towards how
the model does on a few frequently imaged (mostly very sick) patients. Two views that
weigh patients instead, per finding and their mean:

- **first film:** each patient's first film only (lowest follow-up number), one film
  per patient, so films are independent; the labels are those of that film.
- **1/n weighted:** every film weighs 1 / (its patient's films), so each patient
  weighs as much as any other, and no film is dropped. It equals scikit-learn's
  ``roc_auc_score`` with ``sample_weight``.

Intervals come from the same patient bootstrap as the film-level ones (the same
seed draws the same patients). Neither view is "the" right one: they answer "how
well does it rank films" and "how well does it rank patients' films when every
patient counts once". A large gap says the film-level figure depends on a few
patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import (
    MEAN_ROW,
    _check_inputs,
    _class_names,
    bootstrap_resample_aurocs,
    per_class_auroc,
    scorable,
    weighted_auroc,
)


def first_film_mask(patient_ids: Any, follow_up: Any, images: Any | None = None) -> np.ndarray:
    """True on each patient's first film: the lowest follow-up number (ties: the first image name, then row)."""
    ids = np.asarray(patient_ids).reshape(-1)
    numbers = pd.to_numeric(pd.Series(np.asarray(follow_up).reshape(-1)), errors="raise")
    names = np.arange(ids.size) if images is None else np.asarray(images).reshape(-1)
    if not (numbers.size == names.size == ids.size):
        raise ValueError(f"{ids.size} patient ids, {numbers.size} follow-up numbers and {names.size} image names: "
                         "one of each per film")
    if numbers.isna().any():
        raise ValueError(f"{int(numbers.isna().sum())} films have no follow-up number")
    films = pd.DataFrame({"patient": ids, "follow_up": numbers.to_numpy(), "image": names, "row": np.arange(ids.size)})
    first = films.sort_values(["patient", "follow_up", "image", "row"], kind="stable").drop_duplicates("patient")
    mask = np.zeros(ids.size, dtype=bool)
    mask[first["row"].to_numpy()] = True
    return mask


def patient_weights(patient_ids: Any) -> np.ndarray:
    """1 / (the films of each film's patient): every patient's films sum to 1."""
    ids = pd.Series(np.asarray(patient_ids).reshape(-1))
    return 1.0 / ids.map(ids.value_counts()).to_numpy(dtype=np.float64)


def patient_level_auroc(
    labels: Any,
    scores: Any,
    patient_ids: Any,
    follow_up: Any,
    images: Any | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per finding, then the mean: film-level AUROC, first-film AUROC and 1/n-weighted AUROC with intervals.

    Columns: ``auroc_films`` (every film equally, as the headline), ``auroc_first_film``,
    ``first_ci_low``, ``first_ci_high``, ``first_film_positives``, ``first_film_negatives``,
    ``auroc_weighted``, ``weighted_ci_low``, ``weighted_ci_high``. A finding is scored
    (``metrics.scorable``: 2 positive and 2 negative films from 2 patients each) on
    all films and on first films separately; where first films are too few it gets
    NaN there. The mean row averages, in all three columns, the findings scored in
    both (``attrs["mean_over"]``), so the three means compare like with like; its
    intervals come from the mean inside each resample.
    """
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    ids = np.asarray(patient_ids).reshape(-1)
    first = first_film_mask(ids, follow_up, images)
    weights = patient_weights(ids)

    scored_all = scorable(y, ids)
    scored_first = scorable(y[first], ids[first])
    films = np.where(scored_all, per_class_auroc(y, s), np.nan)
    first_point = np.where(scored_first, per_class_auroc(y[first], s[first]), np.nan)
    weighted_point = np.array([weighted_auroc(y[:, k], s[:, k], weights) if scored_all[k] else np.nan
                               for k in range(y.shape[1])])
    # One film per patient: resampling these patients is resampling these films. Sorted patient codes make
    # every draw below the film-level bootstrap's draw of the same patients.
    first_resampled = bootstrap_resample_aurocs(y[first], s[first], ids[first], n_resamples, seed)
    weighted_resampled = bootstrap_resample_aurocs(y, s, ids, n_resamples, seed, image_weights=weights)

    in_mean = scored_all & scored_first
    rows = []
    for k, name in enumerate(names):
        first_low, first_high, _ = percentile_interval(first_resampled[:, k], confidence)
        weighted_low, weighted_high, _ = percentile_interval(weighted_resampled[:, k], confidence)
        rows.append({"finding": name, "auroc_films": films[k], "auroc_first_film": first_point[k],
                     "first_ci_low": first_low if scored_first[k] else np.nan,
                     "first_ci_high": first_high if scored_first[k] else np.nan,
                     "first_film_positives": int(y[first, k].sum()),
                     "first_film_negatives": int((1 - y[first, k]).sum()),
                     "auroc_weighted": weighted_point[k],
                     "weighted_ci_low": weighted_low if scored_all[k] else np.nan,
                     "weighted_ci_high": weighted_high if scored_all[k] else np.nan})
    mean: dict[str, Any] = {"finding": MEAN_ROW, "first_film_positives": pd.NA, "first_film_negatives": pd.NA}
    if in_mean.any():
        first_low, first_high, _ = percentile_interval(first_resampled[:, in_mean].mean(axis=1), confidence)
        weighted_low, weighted_high, _ = percentile_interval(weighted_resampled[:, in_mean].mean(axis=1), confidence)
        mean.update(auroc_films=float(films[in_mean].mean()), auroc_first_film=float(first_point[in_mean].mean()),
                    first_ci_low=first_low, first_ci_high=first_high,
                    auroc_weighted=float(weighted_point[in_mean].mean()), weighted_ci_low=weighted_low,
                    weighted_ci_high=weighted_high)
    rows.append(mean)
    columns = ["auroc_films", "auroc_first_film", "first_ci_low", "first_ci_high", "first_film_positives",
               "first_film_negatives", "auroc_weighted", "weighted_ci_low", "weighted_ci_high"]
    table = pd.DataFrame(rows).set_index("finding").reindex(columns=columns)
    for column in columns:
        table[column] = table[column].astype("Int64" if column.startswith("first_film_") else np.float64)
    table.attrs.update({"mean_over": [n for n, m in zip(names, in_mean) if m], "patients": int(first.sum()),
                        "films": int(y.shape[0]), "confidence": confidence, "n_resamples": n_resamples,
                        "seed": seed})
    return table

"""Between-group AUROC differences with patient-bootstrap intervals: do two subgroups really differ?

Two 95% intervals that overlap do not show that two groups perform alike, and two that
do not overlap are a cruder test than the difference itself (Schenker & Gentleman, Am
Stat 2001). ``between_group_differences`` gives, per variable (sex, age band, view),
finding and group, the AUROC of the group minus that of a reference group, with:

- **one patient bootstrap for both groups**: every resample draws patients from all the
  scored films' patients and takes each group's films of the drawn patients. A patient
  can sit in two groups (a film at 59 and one at 61; a PA and an AP film), so the two
  groups' AUROCs are correlated; resampling them together keeps that in the interval.
  Implemented as ``metrics.bootstrap_resample_aurocs`` with each group's films weighted
  1 and the others 0: its draws depend on the patients only, so both groups see the
  very same resamples.
- **a bootstrap p-value** (twice the smaller share of resampled differences on either
  side of 0, at most 1) and **Holm's adjustment** over the family stated in ``FAMILY``:
  every (group, finding) difference of one variable, the mean rows excluded. The grid
  stays exploratory: nothing adjusts across the variables.
- the same minimum of positive patients as the subgroup figures: a difference is given
  only where both groups are ``metrics.scorable`` with ``min_positive_patients``.

The reference group is the variable's largest (most films) unless one is named: its
figures are the most precise, and the table says which it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.stats import metrics
from cxrutils.stats.delong import adjust_p_values
from cxrutils.stats.intervals import percentile_interval

FAMILY = ("Holm across every (group, finding) difference of one variable against its reference group; the mean "
          "rows are not in the family. The grid as a whole stays exploratory.")
COLUMNS = ["subgroup", "value", "reference", "finding", "auroc", "reference_auroc", "difference", "ci_low", "ci_high",
           "p_value", "p_holm", "positive_patients", "reference_positive_patients", "n_resamples"]


def bootstrap_p_value(samples: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of a difference: 2 x the smaller tail share at 0, at most 1."""
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan")
    tail = min((finite <= 0).mean(), (finite >= 0).mean())
    return float(min(1.0, 2.0 * tail))


def _reference_level(values: pd.Series, levels: Sequence[Any], reference: Any | None) -> Any:
    if reference is not None:
        if reference not in levels:
            raise ValueError(f"reference group {reference!r} is not among the groups {list(levels)}")
        return reference
    sizes = values.value_counts()
    return max(levels, key=lambda level: (sizes.get(level, 0), -list(levels).index(level)))


def between_group_differences(
    labels: Any,
    scores: Any,
    patient_ids: Any,
    groups: pd.Series,
    reference: Any | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    class_names: Sequence[str] | None = None,
    min_positive_patients: int = metrics.MIN_PATIENTS_PER_SIDE,
) -> pd.DataFrame:
    """AUROC of each group minus the reference group's, per finding and for the mean, long format (``COLUMNS``).

    ``groups`` gives each film's group in the row order of ``labels`` (NaN: no group, left
    out). The mean row averages the findings scorable in every group of the variable
    (as ``metrics.subgroup_auroc``'s mean does) and is computed inside each resample.
    ``attrs``: ``reference``, ``family``, ``mean_over``.
    """
    y, s = metrics._check_inputs(labels, scores)
    names = metrics._class_names(y.shape[1], class_names)
    values = pd.Series(groups).reset_index(drop=True)
    if len(values) != y.shape[0]:
        raise ValueError(f"groups has {len(values)} values for {y.shape[0]} films")
    ids = np.asarray(patient_ids).reshape(-1)
    present = values.notna().to_numpy()
    candidates = (values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype)
                  else pd.unique(values[present]))
    levels = [level for level in candidates if (values == level).any()]
    variable = values.name or "group"
    table = pd.DataFrame(columns=COLUMNS)
    if len(levels) < 2:
        table.attrs.update({"reference": None, "family": FAMILY, "mean_over": []})
        return table
    reference = _reference_level(values[present], levels, reference)
    masks = {level: (values == level).to_numpy() for level in levels}
    scored = {level: metrics.scorable(y[mask], ids[mask], min_positive_patients=min_positive_patients)
              for level, mask in masks.items()}
    in_mean = np.logical_and.reduce(list(scored.values()))
    # Films without a group weigh 0 in every group but still hold their patients' place in the draws.
    resampled = {level: metrics.bootstrap_resample_aurocs(y, s, ids, n_resamples=n_resamples, seed=seed,
                                                          image_weights=mask.astype(np.float64))
                 for level, mask in masks.items()}
    point = {level: metrics.per_class_auroc(y[mask], s[mask]) for level, mask in masks.items()}
    positives = {level: metrics.positive_patients(y[mask], ids[mask]) for level, mask in masks.items()}

    rows = []
    for level in levels:
        if level == reference:
            continue
        both = scored[level] & scored[reference]
        for k, name in enumerate(names):
            row = _row(variable, level, reference, name, positives[level][k], positives[reference][k])
            if both[k]:
                differences = resampled[level][:, k] - resampled[reference][:, k]
                row.update(_difference(point[level][k], point[reference][k], differences, confidence))
            rows.append(row)
        if in_mean.any():
            row = _row(variable, level, reference, metrics.MEAN_ROW, positives[level][in_mean].min(),
                       positives[reference][in_mean].min())
            differences = (resampled[level][:, in_mean].mean(axis=1) - resampled[reference][:, in_mean].mean(axis=1))
            row.update(_difference(point[level][in_mean].mean(), point[reference][in_mean].mean(), differences,
                                   confidence))
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    family = (table["finding"] != metrics.MEAN_ROW) & table["p_value"].notna()
    table.loc[family, "p_holm"] = adjust_p_values(table.loc[family, "p_value"].to_numpy(float), "holm")
    table[["positive_patients", "reference_positive_patients"]] = table[
        ["positive_patients", "reference_positive_patients"]].astype("Int64")
    table.attrs.update({"reference": reference, "family": FAMILY,
                        "mean_over": [n for n, included in zip(names, in_mean) if included]})
    return table


def _row(variable: str, level: Any, reference: Any, finding: str, positive: Any, reference_positive: Any
         ) -> dict[str, Any]:
    return {"subgroup": variable, "value": level, "reference": reference, "finding": finding,
            "auroc": np.nan, "reference_auroc": np.nan, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan,
            "p_value": np.nan, "p_holm": np.nan, "positive_patients": int(positive),
            "reference_positive_patients": int(reference_positive), "n_resamples": 0}


def _difference(auroc: float, reference_auroc: float, differences: np.ndarray, confidence: float
                ) -> dict[str, Any]:
    low, high, used = percentile_interval(differences, confidence)
    return {"auroc": float(auroc), "reference_auroc": float(reference_auroc),
            "difference": float(auroc - reference_auroc), "ci_low": low, "ci_high": high,
            "p_value": bootstrap_p_value(differences), "n_resamples": used}


def differences_by_variable(variables: Mapping[str, pd.Series], labels: Any, scores: Any, patient_ids: Any,
                            **options: Any) -> pd.DataFrame:
    """``between_group_differences`` for each variable (name -> each film's group), stacked.

    ``attrs["reference"]`` maps each variable to its reference group.
    """
    tables = {name: between_group_differences(labels, scores, patient_ids, groups.rename(name), **options)
              for name, groups in variables.items()}
    filled = [table for table in tables.values() if len(table)]
    stacked = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=COLUMNS)
    stacked.attrs.update({"reference": {name: table.attrs["reference"] for name, table in tables.items()},
                          "family": FAMILY})
    return stacked

"""Operating points chosen on validation, with intervals that carry the threshold's own variability.

A sensitivity read on test at a threshold chosen on validation varies for two
reasons: which test patients were scored, and which validation patients chose the
threshold. A patient bootstrap of the test films alone holds the threshold fixed and
misses the second. Here every resample draws validation patients (and re-chooses
the threshold on their films, by the same rule) and, independently, test patients
(and reads the metric at that resample's threshold); the percentile interval of the
metric over resamples covers both. Drawn patients become multiplicities, as in
``cxrutils.stats.metrics``, so a resample's threshold is the rule applied to a
weighted ROC curve: one sort per class and a cumulative sum per batch of resamples.

Four rules, all on validation only: ``youden`` (max sensitivity + specificity - 1),
``max_f1``, ``fixed_sensitivity`` (the highest threshold whose sensitivity reaches
the target: the most specific such point) and ``fixed_specificity`` (the most sensitive point whose specificity reaches the target,
and of those as sensitive the highest threshold).
With unit weights ``youden`` and ``max_f1`` pick what
``cxrutils.stats.thresholds.choose_thresholds`` picks.

**What transfers.** Sensitivity and specificity at a fixed threshold do not depend on
prevalence; PPV, NPV and F1 do, and so does the max-F1 threshold. NIH's validation
films come from train_val, whose prevalence is 1.5-3.4 times lower than the official
test list's, so a PPV read on validation understates the test PPV.
``ppv_at_prevalence`` and ``npv_at_prevalence`` carry a (sensitivity, specificity)
pair to another prevalence by Bayes' rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.progress import progress_bar
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import _check_inputs, _class_names, _patient_codes, _patient_draw_chunks

OPERATING_RULES: tuple[str, ...] = ("youden", "max_f1", "fixed_sensitivity", "fixed_specificity")
OPERATING_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "f1")
# The validation draws use their own stream: seed + this, so they never mirror the test draws.
VALIDATION_SEED_OFFSET = 1
TRANSFER_SENTENCE = (
    "Sensitivity and specificity at a fixed threshold do not depend on prevalence, so they carry from validation "
    "to test (up to sampling and any change in case mix); PPV, NPV and F1 do depend on it, and so does the "
    "threshold that maximises F1. Validation comes from train_val, whose prevalence is lower than the official "
    "test list's for most findings: a PPV read on validation understates the test PPV. The 'PPV expected at test "
    "prevalence' column carries validation's sensitivity and specificity to the test prevalence by Bayes' rule, "
    "sens x pi / (sens x pi + (1 - spec)(1 - pi))."
)


@dataclass(frozen=True)
class OperatingRule:
    """A threshold rule: ``youden``, ``max_f1``, or a fixed sensitivity or specificity with its ``target``."""

    rule: str
    target: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in OPERATING_RULES:
            raise ValueError(f"unknown operating rule {self.rule!r}; choose one of {OPERATING_RULES}")
        fixed = self.rule.startswith("fixed_")
        if fixed and (self.target is None or not 0 < self.target < 1):
            raise ValueError(f"{self.rule} needs a target strictly between 0 and 1, got {self.target}")
        if not fixed and self.target is not None:
            raise ValueError(f"{self.rule} takes no target (got {self.target})")

    @property
    def name(self) -> str:
        """``youden``, ``max_f1``, ``sensitivity 0.90``, ``specificity 0.95``."""
        return self.rule if self.target is None else f"{self.rule.removeprefix('fixed_')} {self.target:.2f}"


# --------------------------------------------------------------------------- weighted curves


@dataclass(frozen=True)
class ResampledCurve:
    """One class's films sorted by score, descending, grouped by distinct score: the ROC curve's skeleton."""

    order: np.ndarray  # film positions, highest score first
    values: np.ndarray  # the distinct scores, descending
    ends: np.ndarray  # where each distinct score's run of films ends, in ``order``
    positive: np.ndarray  # bool, in ``order``

    @classmethod
    def of(cls, positive: np.ndarray, scores: np.ndarray) -> ResampledCurve:
        order = np.argsort(-scores, kind="stable")
        ordered = scores[order]
        ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])
        return cls(order, ordered[ends], ends, positive[order])

    def counts(self, ordered_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R, distinct) weighted positives and negatives scoring at or above each distinct score.

        ``ordered_weights``: (R, films) multiplicities already in ``order``.
        """
        tp = np.cumsum(ordered_weights * self.positive, axis=1)[:, self.ends]
        fp = np.cumsum(ordered_weights, axis=1)[:, self.ends] - tp
        return tp, fp


def thresholds_from_counts(tp: np.ndarray, fp: np.ndarray, values: np.ndarray,
                           rules: Sequence[OperatingRule]) -> dict[str, np.ndarray]:
    """Each rule's threshold per row, on the weighted ROC curve given by ``ResampledCurve.counts``.

    Public so that a paired comparison (``compare.comparison``) re-chooses two models' thresholds
    on the very resamples ``operating_point_intervals`` draws.
    """
    positives, negatives = tp[:, -1], fp[:, -1]
    usable = (positives > 0) & (negatives > 0)
    rows = np.arange(len(tp))
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = tp / positives[:, None]
        fpr = fp / negatives[:, None]
    above_all = np.nextafter(values[0], np.inf)  # nothing is called positive
    # A score whose films all weigh 0 in a row (their patients were not drawn) is no candidate there: its point on
    # the curve repeats the one above it, and a rule that breaks ties downwards would pick it.
    carries = np.diff(tp + fp, axis=1, prepend=0.0) > 0
    chosen: dict[str, np.ndarray] = {}
    for rule in rules:
        if rule.rule == "youden":
            gain = np.where(carries, tpr - fpr, -np.inf)
            best = np.argmax(gain, axis=1)  # the first maximum: the highest threshold, as roc_curve's order gives
            # choose_thresholds keeps roc_curve's "+inf" point (gain 0), clipped to 1: a useless score calls nothing.
            cut = np.where(gain[rows, best] > 0, values[best], 1.0)
        elif rule.rule == "max_f1":
            with np.errstate(divide="ignore", invalid="ignore"):
                f1 = np.where(carries, 2 * tp / (tp + fp + positives[:, None]), -np.inf)
            cut = values[f1.shape[1] - 1 - np.argmax(f1[:, ::-1], axis=1)]  # the last maximum: the lowest, as sklearn
        elif rule.rule == "fixed_sensitivity":
            reached = (tpr >= rule.target - 1e-12) & carries  # type: ignore[operator]
            cut = values[np.argmax(reached, axis=1)]  # the first (highest) threshold reaching the target
        else:
            count = (fpr <= 1 - rule.target + 1e-12).sum(axis=1)  # type: ignore[operator]  # a prefix: fpr only grows
            # The most sensitive point within it, and of the thresholds as sensitive the highest (the most specific):
            # the lowest allowed threshold may sit on a negative film, which adds a false positive and no true one.
            most_sensitive = tp[rows, np.maximum(count - 1, 0)]
            corner = np.argmax((tp >= most_sensitive[:, None]) & carries, axis=1)
            cut = np.where(count > 0, values[corner], above_all)
        chosen[rule.name] = np.where(usable, cut, np.nan)
    return chosen


def weighted_thresholds(labels: Any, scores: Any, weights: Any, rule: OperatingRule) -> np.ndarray:
    """One threshold per row of ``weights`` (R, n images): ``rule`` on the weighted ROC curve of one class.

    A film weighing w counts as w films (a bootstrap multiplicity). Positive means
    score >= threshold. NaN for a row without positive or negative weight.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if not (y.size == s.size == w.shape[1]):
        raise ValueError(f"labels ({y.size}), scores ({s.size}) and weights ({w.shape[1]} columns) differ in length")
    curve = ResampledCurve.of(y, s)
    tp, fp = curve.counts(w[:, curve.order])
    return thresholds_from_counts(tp, fp, curve.values, [rule])[rule.name]


def choose_operating_thresholds(labels: Any, scores: Any, rule: OperatingRule) -> np.ndarray:
    """One threshold per class of (n, classes) validation arrays; NaN for a class with one label value only."""
    y, s = _check_inputs(labels, scores)
    ones = np.ones((1, y.shape[0]))
    return np.array([weighted_thresholds(y[:, k], s[:, k], ones, rule)[0] for k in range(y.shape[1])])


def rates_from_counts(tp: np.ndarray, fp: np.ndarray, values: np.ndarray,
                      thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: sensitivity, specificity, PPV, NPV and F1 at that row's threshold, read off
    ``ResampledCurve.counts``."""
    undefined = ~np.isfinite(thresholds)
    # the distinct scores at or above each threshold: a prefix of the descending ``values``
    called = np.searchsorted(-values, -np.where(undefined, np.inf, thresholds), side="right")
    rows = np.arange(len(tp))
    at = np.maximum(called - 1, 0)
    true_positive = np.where(called > 0, tp[rows, at], 0.0)
    false_positive = np.where(called > 0, fp[rows, at], 0.0)
    positives, negatives = tp[:, -1], fp[:, -1]
    false_negative, true_negative = positives - true_positive, negatives - false_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = {
            "sensitivity": true_positive / positives,
            "specificity": true_negative / negatives,
            "ppv": true_positive / (true_positive + false_positive),
            "npv": true_negative / (true_negative + false_negative),
            "f1": 2 * true_positive / (2 * true_positive + false_positive + false_negative),
        }
    return {name: np.where(undefined | ~np.isfinite(value), np.nan, value) for name, value in rates.items()}


def _weighted_rates(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                    thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of ``weights`` (R, n): sensitivity, specificity, PPV, NPV and F1 at that row's threshold."""
    curve = ResampledCurve.of(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64))
    tp, fp = curve.counts(np.atleast_2d(weights)[:, curve.order])
    return rates_from_counts(tp, fp, curve.values, np.asarray(thresholds, dtype=np.float64))


def rates_at_thresholds(labels: Any, scores: Any, thresholds: Any) -> pd.DataFrame:
    """Per class at its threshold: sensitivity, specificity, PPV, NPV, F1 (NaN where undefined)."""
    y, s = _check_inputs(labels, scores)
    cut = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    ones = np.ones((1, y.shape[0]))
    rows = [{name: float(value[0]) for name, value in
             _weighted_rates(y[:, k].astype(bool), s[:, k], ones, cut[k:k + 1]).items()} for k in range(y.shape[1])]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Bayes' rule


def ppv_at_prevalence(sensitivity: Any, specificity: Any, prevalence: Any) -> Any:
    """PPV where the finding has ``prevalence`` pi: sens pi / (sens pi + (1 - spec)(1 - pi))."""
    sens, spec, pi = (np.asarray(v, dtype=np.float64) for v in (sensitivity, specificity, prevalence))
    with np.errstate(divide="ignore", invalid="ignore"):
        return sens * pi / (sens * pi + (1 - spec) * (1 - pi))


def npv_at_prevalence(sensitivity: Any, specificity: Any, prevalence: Any) -> Any:
    """NPV where the finding has ``prevalence`` pi: spec (1 - pi) / (spec (1 - pi) + (1 - sens) pi)."""
    sens, spec, pi = (np.asarray(v, dtype=np.float64) for v in (sensitivity, specificity, prevalence))
    with np.errstate(divide="ignore", invalid="ignore"):
        return spec * (1 - pi) / (spec * (1 - pi) + (1 - sens) * pi)


# --------------------------------------------------------------------------- the bootstrap


def operating_point_intervals(
    val_labels: Any, val_scores: Any, val_patient_ids: Any,
    test_labels: Any, test_scores: Any, test_patient_ids: Any,
    rules: Sequence[OperatingRule],
    point_thresholds: Mapping[str, Any] | None = None,
    n_resamples: int = 1000, seed: int = 0, confidence: float = CONFIDENCE,
    class_names: Sequence[str] | None = None, progress: str | None = None,
) -> pd.DataFrame:
    """Each rule's threshold (chosen on validation) and the test metrics there, with intervals, long format.

    Rows: one per (rule name, finding). Columns: threshold with its interval (how much
    the validation draw moves it), then sensitivity, specificity, PPV, NPV and F1 on
    test with their intervals, validation's own sensitivity, specificity, PPV and NPV
    at the threshold (``val_*``), both prevalences, and the PPV and NPV that
    validation's sensitivity and specificity imply at the test prevalence
    (``ppv_expected_at_test``, ``npv_expected_at_test``).

    ``point_thresholds`` (rule name -> per-class array) gives the point thresholds of
    rules already chosen elsewhere (the run's ``thresholds.json``); the other rules are
    chosen here on ``val_scores``. Every resample re-chooses every rule's threshold on
    its own validation patients, with the same rule, and reads the test metrics on its
    own test patients; the test draws are those of ``metrics.bootstrap_auroc`` with the
    same ``seed`` (the validation draws use ``seed + 1``). An interval counts only the
    resamples where both its threshold and its metric are defined (``n_resamples``).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    val_y, val_s = _check_inputs(val_labels, val_scores)
    test_y, test_s = _check_inputs(test_labels, test_scores)
    if val_y.shape[1] != test_y.shape[1]:
        raise ValueError(f"validation has {val_y.shape[1]} classes and test {test_y.shape[1]}")
    names = _class_names(test_y.shape[1], class_names)
    n_classes = len(names)
    given = dict(point_thresholds or {})
    point = {rule.name: (np.asarray(given[rule.name], dtype=np.float64).reshape(-1) if rule.name in given
                         else choose_operating_thresholds(val_y, val_s, rule)) for rule in rules}
    for rule_name, values in point.items():
        if values.size != n_classes:
            raise ValueError(f"{values.size} point thresholds for {rule_name}, {n_classes} classes")

    sampled_thresholds = {rule.name: np.full((n_resamples, n_classes), np.nan) for rule in rules}
    sampled = {rule.name: {m: np.full((n_resamples, n_classes), np.nan) for m in OPERATING_METRICS} for rule in rules}
    val_codes, n_val_patients = _patient_codes(val_patient_ids, val_y.shape[0])
    test_codes, n_test_patients = _patient_codes(test_patient_ids, test_y.shape[0])
    val_curves = [ResampledCurve.of(val_y[:, k].astype(bool), val_s[:, k]) for k in range(n_classes)]
    test_curves = [ResampledCurve.of(test_y[:, k].astype(bool), test_s[:, k]) for k in range(n_classes)]
    bar = progress_bar(total=n_resamples, desc=progress, unit="resample", disable=progress is None, leave=False,
                       done=False)
    row = 0
    val_draws = _patient_draw_chunks(n_val_patients, n_resamples, seed + VALIDATION_SEED_OFFSET)
    test_draws = _patient_draw_chunks(n_test_patients, n_resamples, seed)
    block = _cache_sized_rows(max(val_y.shape[0], test_y.shape[0]))
    for val_chunk, test_chunk in zip(val_draws, test_draws):
        for start in range(0, len(val_chunk), block):
            val_counts, test_counts = val_chunk[start:start + block], test_chunk[start:start + block]
            rows = slice(row + start, row + start + len(val_counts))
            for k in range(n_classes):
                # one cumulative sum per class and block on each side, shared by every rule
                val_tp, val_fp = val_curves[k].counts(val_counts[:, val_codes[val_curves[k].order]])
                test_tp, test_fp = test_curves[k].counts(test_counts[:, test_codes[test_curves[k].order]])
                chosen = thresholds_from_counts(val_tp, val_fp, val_curves[k].values, rules)
                for rule in rules:
                    cut = chosen[rule.name]
                    sampled_thresholds[rule.name][rows, k] = cut
                    for metric, values in rates_from_counts(test_tp, test_fp, test_curves[k].values, cut).items():
                        sampled[rule.name][metric][rows, k] = values
        row += len(val_chunk)
        bar.update(len(val_chunk))
    bar.close()

    val_prevalence, test_prevalence = val_y.mean(axis=0), test_y.mean(axis=0)
    frames = []
    for rule in rules:
        cut = point[rule.name]
        on_test = rates_at_thresholds(test_y, test_s, cut)
        on_val = rates_at_thresholds(val_y, val_s, cut)
        frame = pd.DataFrame({"rule": rule.name, "finding": names, "target": rule.target, "threshold": cut})
        low_high = [percentile_interval(sampled_thresholds[rule.name][:, k], confidence)[:2] for k in range(n_classes)]
        frame["threshold_ci_low"], frame["threshold_ci_high"] = zip(*low_high)
        for metric in OPERATING_METRICS:
            intervals = [percentile_interval(sampled[rule.name][metric][:, k], confidence) for k in range(n_classes)]
            frame[metric] = on_test[metric].to_numpy()
            frame[f"{metric}_ci_low"] = [i[0] for i in intervals]
            frame[f"{metric}_ci_high"] = [i[1] for i in intervals]
            frame[f"{metric}_resamples"] = [i[2] for i in intervals]
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            frame[f"val_{metric}"] = on_val[metric].to_numpy()
        frame["val_prevalence"] = val_prevalence
        frame["test_prevalence"] = test_prevalence
        frame["ppv_expected_at_test"] = ppv_at_prevalence(frame["val_sensitivity"], frame["val_specificity"],
                                                          test_prevalence)
        frame["npv_expected_at_test"] = npv_at_prevalence(frame["val_sensitivity"], frame["val_specificity"],
                                                          test_prevalence)
        undefined = ~np.isfinite(cut)
        for column in frame.columns[frame.columns.get_loc("threshold"):]:
            if column != "val_prevalence" and column != "test_prevalence":
                frame.loc[undefined, column] = np.nan
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update({"confidence": confidence, "n_resamples": n_resamples, "seed": seed,
                        "validation_seed": seed + VALIDATION_SEED_OFFSET,
                        "resampling": "validation patients (threshold re-chosen) and test patients, independently, "
                                      "with replacement"})
    return table


# --------------------------------------------------------------------------- average precision


# Resamples x films arrays above a few MB leave the CPU's cache, and each of the curve's steps (gather, cumulative
# sums, precision) then streams them through memory: at the full NIH test split (25,596 films) 128-resample blocks
# took 8x the time of a quarter-size split for 4x the films. Blocks of about this many elements (256 KB of float64)
# stay cache-sized; the draws themselves are unchanged, only the arithmetic is blocked.
_CACHE_BLOCK_ELEMENTS = 1 << 15


def _cache_sized_rows(films: int) -> int:
    """Resamples per block so that a (block, films) float64 array stays about ``_CACHE_BLOCK_ELEMENTS`` elements."""
    return max(1, _CACHE_BLOCK_ELEMENTS // max(1, films))


def _average_precision_from_counts(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step rule) per row of ``ResampledCurve.counts``; NaN without positive weight."""
    positives = tp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)  # NaN only where no weight is called yet, and then no recall step is taken
        recall_step = np.diff(tp, axis=1, prepend=0.0)
        ap = np.nansum(np.where(recall_step > 0, recall_step * precision, 0.0), axis=1) / positives
    return np.where(positives > 0, ap, np.nan)


def weighted_average_precision(labels: Any, scores: Any, weights: Any) -> np.ndarray:
    """Average precision (sklearn's step rule) per row of ``weights`` (R, n); NaN without positive weight."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    curve = ResampledCurve.of(y, s)
    return _average_precision_from_counts(*curve.counts(w[:, curve.order]))


def bootstrap_average_precision(
    labels: Any, scores: Any, patient_ids: Any, n_resamples: int = 1000, seed: int = 0,
    confidence: float = CONFIDENCE, class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """AP per class with a patient-bootstrap percentile interval (the AUROC bootstrap's draws, same ``seed``).

    Columns: average_precision (on every film), ci_low, ci_high, prevalence (AP's chance
    level), n_resamples (the resamples with a positive). NaN without positives.
    """
    y, s = _check_inputs(labels, scores)
    names = _class_names(y.shape[1], class_names)
    ones = np.ones((1, y.shape[0]))
    samples = np.full((n_resamples, y.shape[1]), np.nan)
    codes, n_patients = _patient_codes(patient_ids, y.shape[0])
    curves = [ResampledCurve.of(y[:, k].astype(bool), s[:, k]) for k in range(y.shape[1])]
    row = 0
    block = _cache_sized_rows(y.shape[0])
    for counts in _patient_draw_chunks(n_patients, n_resamples, seed):
        for start in range(0, len(counts), block):
            rows = counts[start:start + block]
            for k, curve in enumerate(curves):
                samples[row + start:row + start + len(rows), k] = _average_precision_from_counts(
                    *curve.counts(rows[:, codes[curve.order]]))
        row += len(counts)
    rows = []
    for k, name in enumerate(names):
        low, high, used = percentile_interval(samples[:, k], confidence)
        rows.append({"finding": name,
                     "average_precision": float(weighted_average_precision(y[:, k], s[:, k], ones)[0]),
                     "ci_low": low, "ci_high": high, "prevalence": float(y[:, k].mean()), "n_resamples": used})
    table = pd.DataFrame(rows).set_index("finding")
    table.attrs.update({"confidence": confidence, "n_resamples": n_resamples, "seed": seed})
    return table

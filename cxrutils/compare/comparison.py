"""What a reader must know before reading a comparison with a TorchXRayVision model, and the figures that pair it with ours.

The statistics are ``cxrutils.stats``'s; this module adds what depends on the
model (its display name and the random-weights label, and the caveats: the leakage
of NIH-trained models into the official test list, the labeller of the others) and
puts the two models side by side:

- ``compare_operating_points``: both models at the evaluation's operating rules (the
  run's threshold method, a fixed sensitivity, a fixed specificity), each model's
  thresholds chosen on our validation films from its own validation scores, with
  ``cxrutils.stats.operating``'s intervals (validation patients resampled for the
  threshold, test patients for the figure), both prevalences, and the difference
  ours - TXV in sensitivity and specificity with a paired interval: both models read
  on the same resamples.
- ``subgroup_difference_grid``: the AUROC difference of each finding in each sex and
  view group (``cxrutils.stats.paired.subgroup_comparison``, DeLong clustered by
  patient), its positives, and Holm's adjustment across the whole grid: an
  exploratory grid, one family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.compare.provenance import NIH_TRAINING_SHARE, provenance
from cxrutils.compare.txv import RANDOM_INIT_LABEL, txv_spec
from cxrutils.stats import operating
from cxrutils.stats.delong import adjust_p_values
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import MEAN_ROW, _patient_codes, _patient_draw_chunks
from cxrutils.stats.paired import OURS, TXV, PairedPredictions, pair_predictions

LEAKAGE_CAVEAT = (
    "TorchXRayVision's released NIH and \"all\" models were trained on random splits of NIH ChestX-ray14, "
    f"which overlap the official test list: a random {NIH_TRAINING_SHARE:.0%} of NIH patients were training "
    f"patients, so about {NIH_TRAINING_SHARE:.0%} of the official test films (the exact films are unknown: the "
    "draw was not published) were in their training data. Their scores on the official test set are therefore "
    "likely optimistic, and a comparison with a model that never saw the test list is tilted in their favour."
)
PATIENT_NOTE = (
    "p-values use the patient-clustered DeLong variance and intervals resample patients: a patient's films "
    "are not independent evidence."
)
# The figures whose difference (ours - TXV) gets a paired interval: those that carry from validation to test.
DIFFERENCE_METRICS: tuple[str, ...] = ("sensitivity", "specificity")
THRESHOLD_SOURCE = ("chosen on our validation films (predictions_val.csv), each model on its own validation scores, "
                    "by the same rule; never on test")
PAIRED_RESAMPLING = ("the same validation and test patient draws for both models (those of "
                     "cxrutils.stats.operating.operating_point_intervals with the same seed), so the interval of a "
                     "difference reflects that the two models read the same patients")
EXPLORATORY_NOTE = (
    "Exploratory: many groups and findings, small groups, and no difference between groups is tested. Read a "
    "small p-value here as a lead to check on other films, not as a finding."
)


def optimistic_thresholds_caveat(txv_name: str) -> str | None:
    """Why a model that trained on NIH films gets flattering validation-chosen thresholds; None for the others."""
    if not provenance(txv_name).nih_films:
        return None
    return (f"{txv_name}'s validation-chosen thresholds are optimistic: the validation films on which both models' "
            f"thresholds are chosen come from train_val, so about {NIH_TRAINING_SHARE:.0%} of them were likely in "
            f"{txv_name}'s training data too, and its thresholds sit where its training scores fell. Its "
            "threshold-dependent figures are optimistic for the same reason.")


def comparison_caveats(txv_name: str, random_init: bool = False) -> list[str]:
    """What a reader must know before reading a comparison with ``txv_name``."""
    spec = txv_spec(txv_name)
    caveats = []
    if random_init:
        caveats.append(f"{RANDOM_INIT_LABEL}: the TorchXRayVision scores come from random weights, for testing "
                       "the pipeline only; they say nothing about the real model.")
    if spec.includes_nih_images:
        caveats.append(f"{LEAKAGE_CAVEAT} {spec.name} was trained on: {spec.trained_on}.")
    else:
        caveats.append(f"{spec.name} never saw an NIH film: it was trained on {spec.trained_on}, a different "
                       "training set with its own recipe. This measures how it transfers to NIH films, not how the "
                       "two architectures compare on the same data, and its labels for the same finding names come "
                       "from another labeller.")
    thresholds = optimistic_thresholds_caveat(txv_name)
    if thresholds:
        caveats.append(thresholds)
    caveats.append(PATIENT_NOTE)
    return caveats


def pair_with_txv(
    ours: pd.DataFrame, txv: pd.DataFrame, *, txv_name: str, random_init: bool = False,
    ours_name: str = "ours",
) -> PairedPredictions:
    """``pair_predictions`` with the TorchXRayVision model's display name and its caveats."""
    display = f"TorchXRayVision {txv_name}" + (f" [{RANDOM_INIT_LABEL}]" if random_init else "")
    return pair_predictions(ours, txv, names={OURS: ours_name, TXV: display},
                            caveats=comparison_caveats(txv_name, random_init))


# --------------------------------------------------------------------------- operating points


def operating_rules(threshold_method: str, target_sensitivity: float,
                    target_specificity: float) -> list[operating.OperatingRule]:
    """The comparison's rules: the run's threshold method, then the evaluation's fixed sensitivity and specificity."""
    return [operating.OperatingRule(threshold_method),
            operating.OperatingRule("fixed_sensitivity", target_sensitivity),
            operating.OperatingRule("fixed_specificity", target_specificity)]


@dataclass
class OperatingComparison:
    """Both models at each rule's validation-chosen thresholds on the same test films, and their paired differences.

    ``points``: ``operating.operating_point_intervals``'s long table for each model, with a
    ``model`` column (``ours`` / ``txv``) in front. ``differences``: per (rule, finding),
    ours - TXV in sensitivity and specificity at the two models' own thresholds, with
    paired intervals (``<metric>_difference``, ``_ci_low``, ``_ci_high``, ``_resamples``).
    """

    points: pd.DataFrame
    differences: pd.DataFrame
    rules: list[operating.OperatingRule]
    names: dict[str, str]
    n_resamples: int
    seed: int
    confidence: float
    caveat: str | None = None  # why TXV's validation-chosen thresholds flatter it (a model that trained on NIH)

    @property
    def rule_names(self) -> list[str]:
        return [rule.name for rule in self.rules]

    @property
    def targets(self) -> dict[str, float | None]:
        fixed = {rule.rule.removeprefix("fixed_"): rule.target for rule in self.rules if rule.target is not None}
        return {"sensitivity": fixed.get("sensitivity"), "specificity": fixed.get("specificity")}

    def table(self, model: str, rule: str) -> pd.DataFrame:
        """One model's (``ours`` or ``txv``) rows at one rule, indexed by finding."""
        part = self.points[(self.points["model"] == model) & (self.points["rule"] == rule)]
        if part.empty:
            raise KeyError(f"no operating points for model {model!r} at rule {rule!r}; rules: {self.rule_names}")
        return part.drop(columns=["model", "rule"]).set_index("finding")

    def difference_table(self, rule: str) -> pd.DataFrame:
        part = self.differences[self.differences["rule"] == rule]
        if part.empty:
            raise KeyError(f"no operating-point differences at rule {rule!r}; rules: {self.rule_names}")
        return part.drop(columns=["rule"]).set_index("finding")

    def to_document(self) -> dict[str, Any]:
        def by_rule(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
            return {rule: {finding: values for finding, values in
                           part.drop(columns=["rule"]).set_index("finding").to_dict(orient="index").items()}
                    for rule, part in frame.groupby("rule", sort=False)}

        return {
            "available": True,
            "rules": self.rule_names,
            "targets": self.targets,
            "threshold_source": THRESHOLD_SOURCE,
            "names": dict(self.names),
            "bootstrap": {"n_resamples": self.n_resamples, "seed": self.seed,
                          "validation_seed": self.seed + operating.VALIDATION_SEED_OFFSET,
                          "confidence": self.confidence,
                          "resampling": self.points.attrs.get("resampling"), "differences": PAIRED_RESAMPLING},
            "models": {model: by_rule(part.drop(columns=["model"]))
                       for model, part in self.points.groupby("model", sort=False)},
            "differences": by_rule(self.differences),
            "txv_thresholds_optimistic": self.caveat is not None,
            "caveat": self.caveat,
            "transfer": operating.TRANSFER_SENTENCE,
        }


def compare_operating_points(
    test: PairedPredictions,
    validation: PairedPredictions,
    rules: Sequence[operating.OperatingRule],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    txv_name: str | None = None,
) -> OperatingComparison:
    """Each model at each rule's thresholds, chosen on ``validation`` from its own scores, read on ``test``.

    Each model's figures are ``operating.operating_point_intervals`` on its own scores
    (the same ``seed``, so the same validation and test patient draws for both); the
    differences come from those same draws, pairing the two models resample by
    resample. ``txv_name`` (the TorchXRayVision model) sets ``caveat`` when its
    provenance says it trained on NIH films.
    """
    if validation.findings != test.findings:
        raise ValueError(f"validation scores {validation.findings} but test scores {test.findings}")
    rules = list(rules)
    frames = []
    for model, val_scores, test_scores in ((OURS, validation.ours, test.ours), (TXV, validation.txv, test.txv)):
        points = operating.operating_point_intervals(
            validation.labels, val_scores, validation.patient_ids, test.labels, test_scores, test.patient_ids, rules,
            n_resamples=n_resamples, seed=seed, confidence=confidence, class_names=test.findings)
        points.insert(0, "model", model)
        frames.append(points)
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update(frames[0].attrs)
    differences = _paired_differences(test, validation, rules, table, n_resamples, seed, confidence)
    return OperatingComparison(points=table, differences=differences, rules=rules, names=dict(test.names),
                               n_resamples=n_resamples, seed=seed, confidence=confidence,
                               caveat=None if txv_name is None else optimistic_thresholds_caveat(txv_name))


def _paired_differences(test: PairedPredictions, validation: PairedPredictions,
                        rules: list[operating.OperatingRule], points: pd.DataFrame, n_resamples: int, seed: int,
                        confidence: float) -> pd.DataFrame:
    """Ours - TXV per (rule, finding) in ``DIFFERENCE_METRICS``, with intervals from the shared resamples.

    The draws and the weighted curves are ``operating_point_intervals``'s own (its seeds,
    its chunks, its ``ResampledCurve``): each resample re-chooses both models' thresholds on the
    same validation patients and reads both on the same test patients.
    """
    n_classes = len(test.findings)
    val_codes, n_val_patients = _patient_codes(validation.patient_ids, len(validation))
    test_codes, n_test_patients = _patient_codes(test.patient_ids, len(test))
    curves = {
        model: ([operating.ResampledCurve.of(validation.labels[:, k].astype(bool), val_scores[:, k]) for k in range(n_classes)],
                [operating.ResampledCurve.of(test.labels[:, k].astype(bool), test_scores[:, k]) for k in range(n_classes)])
        for model, val_scores, test_scores in ((OURS, validation.ours, test.ours), (TXV, validation.txv, test.txv))
    }
    sampled = {(rule.name, metric): np.full((n_resamples, n_classes), np.nan)
               for rule in rules for metric in DIFFERENCE_METRICS}
    row = 0
    val_draws = _patient_draw_chunks(n_val_patients, n_resamples, seed + operating.VALIDATION_SEED_OFFSET)
    test_draws = _patient_draw_chunks(n_test_patients, n_resamples, seed)
    for val_counts, test_counts in zip(val_draws, test_draws):
        rows = slice(row, row + len(val_counts))
        for k in range(n_classes):
            rates = {}
            for model, (val_curves, test_curves) in curves.items():
                val_curve, test_curve = val_curves[k], test_curves[k]
                val_tp, val_fp = val_curve.counts(val_counts[:, val_codes[val_curve.order]])
                test_tp, test_fp = test_curve.counts(test_counts[:, test_codes[test_curve.order]])
                chosen = operating.thresholds_from_counts(val_tp, val_fp, val_curve.values, rules)
                rates[model] = {rule.name: operating.rates_from_counts(test_tp, test_fp, test_curve.values,
                                                                        chosen[rule.name]) for rule in rules}
            for rule in rules:
                for metric in DIFFERENCE_METRICS:
                    sampled[(rule.name, metric)][rows, k] = rates[OURS][rule.name][metric] - rates[TXV][rule.name][
                        metric]
        row += len(val_counts)

    frames = []
    for rule in rules:
        ours = points[(points["model"] == OURS) & (points["rule"] == rule.name)].set_index("finding")
        theirs = points[(points["model"] == TXV) & (points["rule"] == rule.name)].set_index("finding")
        frame = pd.DataFrame({"rule": rule.name, "finding": test.findings, "target": rule.target})
        for metric in DIFFERENCE_METRICS:
            intervals = [percentile_interval(sampled[(rule.name, metric)][:, k], confidence) for k in range(n_classes)]
            frame[f"{metric}_ours"] = ours.loc[test.findings, metric].to_numpy()
            frame[f"{metric}_txv"] = theirs.loc[test.findings, metric].to_numpy()
            frame[f"{metric}_difference"] = frame[f"{metric}_ours"] - frame[f"{metric}_txv"]
            frame[f"{metric}_difference_ci_low"] = [i[0] for i in intervals]
            frame[f"{metric}_difference_ci_high"] = [i[1] for i in intervals]
            frame[f"{metric}_difference_resamples"] = [i[2] for i in intervals]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update({"confidence": confidence, "n_resamples": n_resamples, "seed": seed,
                        "resampling": PAIRED_RESAMPLING})
    return table


# --------------------------------------------------------------------------- subgroups


def subgroup_difference_grid(subgroups: pd.DataFrame, min_positive_patients: int) -> pd.DataFrame:
    """Each finding in each group of ``subgroup_comparison``'s table: positives, the AUROC difference, p, Holm.

    Long format, one row per (subgroup, value, finding): images, patients, positives
    (films), positive_patients, negatives, difference (ours - TXV), diff_ci_low,
    diff_ci_high (paired patient bootstrap within the group), p_value (DeLong's paired
    test within the group, clustered by patient), p_holm (Holm across the family: every
    compared cell of this grid, all variables, groups and findings together) and note
    (why a cell is empty). The group means are left out: they are not tested.
    ``attrs`` say the family and how many tests it holds.
    """
    columns = ["subgroup", "value", "finding", "images", "patients", "positives", "positive_patients", "negatives",
               "difference", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "note"]
    if subgroups.empty:
        grid = pd.DataFrame(columns=columns)
    else:
        grid = subgroups[subgroups["finding"] != MEAN_ROW].reset_index(drop=True)
        grid = grid.assign(p_holm=adjust_p_values(grid["p_value"].to_numpy(dtype=np.float64), "holm"))
        grid["note"] = [_empty_cell_reason(int(films), int(patients), note, min_positive_patients)
                        for films, patients, note in zip(grid["positives"].fillna(0),
                                                         grid["positive_patients"].fillna(0), grid["note"].fillna(""))]
        grid = grid[columns]
    tests = int(np.isfinite(grid["p_value"].to_numpy(dtype=np.float64)).sum())
    variables = list(dict.fromkeys(grid["subgroup"]))
    grid.attrs.update({
        "exploratory": True,
        "adjustment": "holm",
        "family": (f"every compared cell of this grid together ({tests} DeLong tests: each finding in each group of "
                   f"{', '.join(map(str, variables)) or 'no variable'}); the group means are not tested"),
        "tests": tests,
        "min_positive_patients": min_positive_patients,
    })
    return grid


def _empty_cell_reason(positive_films: int, positive_patients: int, note: str, min_positive_patients: int) -> str:
    """Why a cell of the grid has no difference ('' when it has one)."""
    if positive_films == 0:
        return "not compared: no positive film in this group"
    if positive_patients < min_positive_patients:
        return (f"not compared: positive films from {positive_patients} patient(s) in this group, fewer than "
                f"{min_positive_patients}")
    return note.replace("not scored", "not compared") if note else ""

"""A run scored on one of its splits, from predictions to ``metrics.json``: compute, never show.

``evaluate_run(run_dir)`` opens the run folder (``run_folder.open_run``: its settings,
its own split, its data checked against what it trained on), scores the split with the
best checkpoint, takes the decision thresholds from the run's ``thresholds.json``
(chosen on validation at training time: nothing here looks at the scored labels to
pick one) and computes everything the evaluation report shows: who the scored films
come from (films per patient, positive films and patients per finding, children),
AUROC with patient-bootstrap intervals and its patient-level counterparts (first film
per patient, 1/n-weighted), AP with its interval, operating points, the classification
report, operating points of four rules chosen on the run's validation predictions
(``predictions_val.csv``: Youden, max-F1, a fixed sensitivity and a fixed specificity)
with intervals that re-choose the threshold on resampled validation patients, both
splits' prevalences, calibration (equal-width ECE and Brier; equal-mass reliability,
O/E, slope, intercepts and scaled Brier with intervals; a recalibration fitted on
validation, beside the raw model), subgroups, Grad-CAM localization against the boxes
and a random baseline, a gallery of calls, and the published results for context. It returns an
``EvaluationResult``; ``write_metrics`` saves it in the run folder (``run_folder.write_metrics``:
``metrics.json`` for the test split). Notebook 03 and
``cxrutils evaluate`` both call it, so they write the same file.
Display lives in ``cxrutils.show.evaluation_view``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrutils import files
from cxrutils.data.metadata import age_band
from cxrutils.data.radiologist_labels import read_radiologist_labels
from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import gradcam_films_per_pass, gradcam_grid, gradcam_layer_for
from cxrutils.engine.model import BACKBONES
from cxrutils.engine.network_input import denormalize, prepare_batch
from cxrutils.engine.predict import SPLITS, predict_split
from cxrutils.engine.runtime import select_device
from cxrutils.evaluate import localization
from cxrutils.evaluate.radiologist import RadiologistResult, score_against_radiologists
from cxrutils.labels import FINDINGS
from cxrutils.predictions import prediction_arrays
from cxrutils.profiling import stage
from cxrutils.stats import calibration, metrics, operating
from cxrutils.stats.calibration import Recalibration
from cxrutils.stats.cohort import ClusterFacts, cluster_facts, paediatric_counts
from cxrutils.stats.group_differences import differences_by_variable
from cxrutils.stats.intervals import CONFIDENCE
from cxrutils.stats.patient_level import patient_level_auroc
from cxrutils.stats.thresholds import METHODS

CALIBRATION_BINS = 10  # the default of the setting calibration_bins
TARGET_SENSITIVITY = 0.90  # the defaults of the settings target_sensitivity and target_specificity
TARGET_SPECIFICITY = 0.95
POS_WEIGHT_NOTE = (
    "This run trained with class_weighting=pos_weight: each positive film's loss is multiplied by the finding's "
    "negatives-to-positives ratio, which multiplies the predicted odds by about that ratio. Its raw probabilities "
    "are too high by design (O/E below 1), whatever the ranking; read them as scores, or use the recalibrated ones."
)
PREVALENCE_SHIFT_CALIBRATION_NOTE = (
    "A probability calibrated on validation matches validation's prevalence. On the official split the test "
    "prevalence is higher for most findings (validation comes from train_val), so even a recalibrated model "
    "under-predicts on test (O/E above 1): that gap is the prevalence shift, not a defect of the ranking or of the "
    "recalibration."
)
RANDOM_BASELINE_REPEATS = 20
GALLERY_KINDS: dict[str, str] = {"TP": "true positives", "FP": "false positives", "FN": "false negatives"}
SUBGROUP_VARIABLES: tuple[str, ...] = ("sex", "age band", "view")
# The evaluation's age bands: children (<18) apart from young adults, then 18-39, 40-59, 60-79, 80+.
SUBGROUP_AGE_EDGES: tuple[float, ...] = (18.0, 40.0, 60.0, 80.0)
SUBGROUP_MIN_POSITIVE_PATIENTS = 5  # the default of the setting subgroup_min_positive_patients


# --------------------------------------------------------------------------- results


@dataclass
class LocalizationResult:
    """Grad-CAM on the split's boxed images, scored against the boxes and against random heatmaps.

    ``scores`` and ``baseline`` hold, per finding and ``all``, the pointing game, T(IoBB) at
    ``localization.T_IOBB`` and T(IoU) at ``localization.T_IOU`` (Wang et al. 2017, Table 3),
    each with its patient-bootstrap interval (``<key>_ci_low``, ``<key>_ci_high``);
    ``versus_random`` the paired difference Grad-CAM minus random with its interval.
    """

    boxes: pd.DataFrame  # image, finding, x, y, w, h in heatmap pixels, patient_id, pointing_hit, iobb, iou
    heatmaps: np.ndarray  # (boxes, input_size, input_size)
    scores: pd.DataFrame  # localization.localization_intervals(...).scores
    baseline: pd.DataFrame  # localization.localization_intervals(...).baseline (attrs: repeats, seed, grid)
    heatmap_size: int
    outside: pd.DataFrame  # boxes that fall outside their film as stored: reported, not scored
    versus_random: pd.DataFrame | None = None  # localization.localization_intervals(...).versus_random
    random_rates: pd.DataFrame | None = None  # per box: the random heatmaps' hit rate over the draws

    @property
    def metric_keys(self) -> list[str]:
        """The accuracies scored, in Table-3 order: pointing game, T(IoBB) ..., T(IoU) ..."""
        return [key for key in localization.metric_keys() if key in self.scores.columns]

    def keys_of(self, family: str | None = None) -> list[str]:
        """``iobb``: pointing game and T(IoBB); ``iou``: T(IoU); None: all of them."""
        if family is None:
            return self.metric_keys
        if family == "iobb":
            return [k for k in self.metric_keys if not k.startswith("t_iou_")]
        if family == "iou":
            return [k for k in self.metric_keys if k.startswith("t_iou_")]
        raise ValueError(f"family must be 'iobb', 'iou' or None, got {family!r}")

    def table(self, family: str | None = None) -> pd.DataFrame:
        """Wang et al. 2017's Table 3 layout: rows the findings and ``all``, columns (accuracy, source).

        Per accuracy: this model and random heatmaps, each with its patient-bootstrap
        interval, the difference with its interval, and Wang et al. 2017's figure where
        ``metrics.wang2017_localization`` has one (T(IoBB) 0.1).
        """
        findings = list(self.scores.index)
        published = _published_localization()
        difference = self.difference_table()
        columns: dict[tuple[str, str], pd.Series] = {("", "boxes"): self.scores["boxes"]}
        if "patients" in self.scores.columns:
            columns[("", "patients")] = self.scores["patients"]
        for key in self.keys_of(family):
            label = localization.metric_label(key)
            for source, frame in (("this model", self.scores), ("random heatmaps", self.baseline)):
                columns[(label, source)] = frame[key].reindex(findings)
                for bound in ("low", "high"):
                    if f"{key}_ci_{bound}" in frame.columns:
                        columns[(label, f"{source} CI {bound}")] = frame[f"{key}_ci_{bound}"].reindex(findings)
            if difference is not None:
                for column, name in (("difference", "this model - random"), ("ci_low", "difference CI low"),
                                     ("ci_high", "difference CI high")):
                    columns[(label, name)] = difference[column].xs(key, level="metric").reindex(findings)
            if key in published.columns:
                columns[(label, "Wang et al. 2017")] = published[key].reindex(findings)
        table = pd.DataFrame(columns, index=findings)
        table.columns = pd.MultiIndex.from_tuples(table.columns)
        table.index.name = "finding"
        table.attrs["confidence"] = self.scores.attrs.get("confidence", CONFIDENCE)
        return table

    def difference_table(self) -> pd.DataFrame | None:
        """``versus_random`` indexed by (finding, metric); None for a result without intervals."""
        if self.versus_random is None:
            return None
        return self.versus_random.set_index(["finding", "metric"])

    def beats_chance(self, family: str | None = None) -> pd.DataFrame:
        """Rows the findings and ``all``, columns the accuracies: True where the difference's interval is above 0."""
        if self.versus_random is None:
            raise ValueError("this localization result has no comparison with the random baseline")
        table = self.versus_random.pivot(index="finding", columns="metric", values="beats_chance")
        table = table.reindex(index=list(self.scores.index), columns=self.keys_of(family))
        table.index.name = "finding"
        return table

    def to_document(self) -> dict[str, Any]:
        """The scores, the random baseline and the comparison, keyed by row then metric, as plain values."""
        document: dict[str, Any] = {
            "scores": _by_row(self.scores),
            "random_baseline": _by_row(self.baseline),
            "random_baseline_repeats": self.baseline.attrs.get("repeats"),
            "random_baseline_seed": self.baseline.attrs.get("seed"),
            "random_baseline_grid": self.baseline.attrs.get("grid"),
            "metrics": self.metric_keys,
            "thresholds": {"t_iobb": [t for t in localization.T_IOBB if f"t_iobb_{t:g}" in self.scores.columns],
                           "t_iou": [t for t in localization.T_IOU if f"t_iou_{t:g}" in self.scores.columns],
                           "heatmap": localization.HEATMAP_THRESHOLD},
            "definitions": localization.DEFINITIONS,
        }
        if self.versus_random is not None:
            attrs = self.versus_random.attrs
            document["bootstrap"] = {key: attrs.get(key) for key in ("n_resamples", "seed", "confidence",
                                                                      "resampling")}
            fields = ["gradcam", "random", "difference", "ci_low", "ci_high", "p_one_sided", "beats_chance",
                      "resamples"]
            document["versus_random"] = {
                str(finding): {row["metric"]: {field: row[field] for field in fields}
                               for row in part.to_dict(orient="records")}
                for finding, part in self.versus_random.groupby("finding", sort=False)
            }
        return document


def _published_localization() -> pd.DataFrame:
    """``metrics.wang2017_localization`` as a frame with one column per accuracy it gives (now T(IoBB) 0.1)."""
    published = metrics.wang2017_localization()
    return published.to_frame() if isinstance(published, pd.Series) else published


@dataclass
class Gallery:
    """The most confident calls of each kind, with what ``plots.localization_gallery`` draws for them."""

    examples: pd.DataFrame  # kind, image, finding, probability, threshold, x, y, w, h (box in the 1024-px frame)
    images: np.ndarray  # (n, S, S) in [0, 1], the films as the network sees them
    heatmaps: np.ndarray  # (n, S, S) Grad-CAM of each example's finding
    boxes: list[tuple[float, float, float, float] | None]  # in the same S-px frame, None where there is no box
    titles: list[str]

    def of_kind(self, kind: str) -> tuple[np.ndarray, np.ndarray, list[Any], list[str]]:
        """The panels of one kind (TP, FP or FN)."""
        positions = np.flatnonzero(self.examples["kind"].to_numpy() == kind)
        return (self.images[positions], self.heatmaps[positions], [self.boxes[i] for i in positions],
                [self.titles[i] for i in positions])


@dataclass
class EvaluationResult:
    """Everything the evaluation report shows for one run on one split."""

    run: run_folder.Run
    split: str
    tta_hflip: bool
    threshold_method: str
    thresholds_by_finding: dict[str, float | None]  # the run's thresholds.json entry, untouched
    n_bootstrap: int
    bootstrap_seed: int
    gradcam_layer: str  # the stage Grad-CAM read (a dense block for DenseNet121)
    predictions: pd.DataFrame  # cxrutils.predictions layout
    labels: np.ndarray  # (n, 14) int8
    probabilities: np.ndarray  # (n, 14) float64
    patient_ids: np.ndarray
    auroc: pd.DataFrame  # metrics.bootstrap_auroc: the findings, then the mean
    average_precision: np.ndarray
    operating: pd.DataFrame  # metrics.operating_points at the validation thresholds
    report: pd.DataFrame | None  # metrics.classification_report_table; None without any threshold
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    subgroups: pd.DataFrame  # metrics.subgroup_auroc for sex, age band and view (long format)
    # group_differences.between_group_differences: each group's AUROC minus its variable's reference group's
    subgroup_differences: pd.DataFrame
    localization: LocalizationResult | None
    localization_note: str | None  # why there is no localization, when there is none
    gallery: Gallery
    context: pd.DataFrame  # published results with this run, each labelled with its split
    radiologist: RadiologistResult | None  # against Majkowska et al.'s radiologist labels, where films have them
    clusters: ClusterFacts  # films per patient on the scored films, positive films and patients per finding
    patient_level: pd.DataFrame  # patient_level.patient_level_auroc: first film per patient, 1/n-weighted
    paediatric: dict[str, Any]  # cohort.paediatric_counts of the scored films
    subgroup_min_positive_patients: int  # a subgroup figure needs this many positive patients in the group
    average_precision_ci: pd.DataFrame  # operating.bootstrap_average_precision: AP with its patient-bootstrap interval
    # operating.operating_point_intervals for youden, max_f1 and the fixed sensitivity and specificity (long format):
    # thresholds re-chosen on resampled validation patients; None without the run's validation predictions
    operating_intervals: pd.DataFrame | None
    operating_note: str | None  # why there are no operating-point intervals, when there are none
    validation_prevalence: pd.Series | None  # per finding, on the run's validation predictions
    target_sensitivity: float
    target_specificity: float
    calibration_bins: int
    calibration_summary: pd.DataFrame  # calibration.calibration_summary of the raw probabilities (equal-mass bins)
    reliability_equal_mass: pd.DataFrame  # calibration.equal_mass_reliability of the raw probabilities
    recalibration: Recalibration | None  # fitted on validation only; None when off or without validation predictions
    recalibrated_summary: pd.DataFrame | None  # calibration_summary of the recalibrated test probabilities
    recalibrated_reliability: pd.DataFrame | None
    validation_observed_expected: pd.Series | None  # O/E of the raw probabilities on validation
    recalibration_note: str | None  # why there is no recalibration, when there is none

    @property
    def n_images(self) -> int:
        return len(self.predictions)

    @property
    def n_patients(self) -> int:
        return int(pd.unique(self.patient_ids).size)

    @property
    def not_scored(self) -> list[str]:
        return list(self.predictions.attrs.get("not_scored", []))

    @property
    def thresholds(self) -> np.ndarray:
        """The validation thresholds in ``FINDINGS`` order; NaN where validation could not choose one."""
        return metrics.threshold_array(self.thresholds_by_finding)

    @property
    def input_size(self) -> int:
        return int(self.run.config.input_size)

    @property
    def gradcam_grid(self) -> int:
        return gradcam_grid(self.input_size, self.gradcam_layer)

    @property
    def synthetic(self) -> bool:
        return self.run.dataset.synthetic

    @property
    def headline(self) -> str:
        """``mean AUROC 0.812 [0.795, 0.829] (test, n=25,596 images)``, or say that it is undefined."""
        mean = mean_auroc(self.auroc)
        where = f"({self.split}{', hflip TTA' if self.tta_hflip else ''}, n={self.n_images:,} images)"
        if not np.isfinite(mean["auroc"]):
            return f"mean AUROC undefined: no finding has both positives and negatives {where}"
        return f"mean AUROC {mean['auroc']:.3f} [{mean['ci_low']:.3f}, {mean['ci_high']:.3f}] {where}"

    def summary_table(self) -> pd.DataFrame:
        """Per finding: AUROC [CI], AP [CI], both prevalences, validation threshold, sensitivity, specificity,
        positives; then the mean. The prevalences stand beside the threshold: a threshold-dependent figure is read
        at its split's prevalence."""
        auroc, operating = self.auroc, self.operating
        rows = auroc.index  # the findings, then the mean
        validation = (self.validation_prevalence if self.validation_prevalence is not None
                      else pd.Series(np.nan, index=list(FINDINGS)))
        table = pd.DataFrame(
            {
                "AUROC": auroc["auroc"],
                "CI low": auroc["ci_low"],
                "CI high": auroc["ci_high"],
                "AP": pd.Series(self.average_precision, index=list(FINDINGS)).reindex(rows),
                "AP CI low": self.average_precision_ci["ci_low"].reindex(rows),
                "AP CI high": self.average_precision_ci["ci_high"].reindex(rows),
                "prevalence (val)": validation.reindex(rows),
                f"prevalence ({self.split})": pd.Series(self.labels.mean(axis=0), index=list(FINDINGS)).reindex(rows),
                "threshold (val)": operating["threshold"].reindex(rows),
                "sensitivity": operating["sensitivity"].reindex(rows),
                "specificity": operating["specificity"].reindex(rows),
                "positives": auroc["positives"],
            },
            index=rows,
        )
        notes = []
        for finding in table.index:
            if finding == metrics.MEAN_ROW:
                notes.append(f"over {len(auroc.attrs['mean_over'])} scorable findings")
                continue
            parts = []
            if operating.loc[finding, "positives"] == 0:
                parts.append("no positives in this split: AUROC, AP and sensitivity undefined")
            elif operating.loc[finding, "negatives"] == 0:
                parts.append("no negatives in this split")
            elif not np.isfinite(auroc.loc[finding, "auroc"]):
                parts.append(metrics.NOT_SCORABLE_NOTE)
            if not np.isfinite(operating.loc[finding, "threshold"]):
                parts.append("no validation threshold")
            notes.append("; ".join(parts))
        table["note"] = notes
        table.index.name = "finding"
        return table

    def subgroup_means(self) -> pd.DataFrame:
        """The mean-AUROC rows of the subgroups, one per group, with how many findings each mean covers.

        Within one variable (e.g. age band) every group's mean covers the same findings:
        those scorable in every group of that variable.
        """
        mean_over = self.subgroups.attrs.get("mean_over", {})
        means = self.subgroups[self.subgroups["finding"] == metrics.MEAN_ROW].copy()
        means["findings in mean"] = [len(mean_over.get(name, [])) for name in means["subgroup"]]
        means["positive patients (fewest)"] = means["positive_patients"]
        columns = ["subgroup", "value", "auroc", "ci_low", "ci_high", "findings in mean", "images", "patients",
                   "positive patients (fewest)"]
        return means[columns].set_index(["subgroup", "value"])

    @property
    def class_weighting(self) -> str:
        return str(getattr(self.run.config, "class_weighting", "none"))

    @property
    def operating_rules(self) -> list[operating.OperatingRule]:
        """The rules of the operating-point table: the run's two, then the fixed sensitivity and specificity."""
        return [operating.OperatingRule(method) for method in METHODS] + [
            operating.OperatingRule("fixed_sensitivity", self.target_sensitivity),
            operating.OperatingRule("fixed_specificity", self.target_specificity),
        ]

    def operating_table(self, rule: str) -> pd.DataFrame:
        """One rule's operating points per finding: both prevalences, the threshold and the test figures, intervals.

        ``rule`` is an ``OperatingRule.name`` (``youden``, ``sensitivity 0.90``, ...). The
        intervals carry the threshold's own variability (validation patients resampled).
        """
        if self.operating_intervals is None:
            raise ValueError(f"no operating-point intervals: {self.operating_note}")
        part = self.operating_intervals[self.operating_intervals["rule"] == rule].set_index("finding")
        if part.empty:
            raise KeyError(f"no operating rule {rule!r}; the table has {sorted(self.operating_intervals['rule'].unique())}")
        columns = {"val_prevalence": "prevalence (val)", "test_prevalence": f"prevalence ({self.split})",
                   "threshold": "threshold (val)", "threshold_ci_low": "threshold CI low",
                   "threshold_ci_high": "threshold CI high"}
        for metric, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"),
                              ("npv", "NPV"), ("f1", "F1")):
            columns |= {metric: label, f"{metric}_ci_low": f"{label} CI low", f"{metric}_ci_high": f"{label} CI high"}
        columns |= {"val_ppv": "PPV (val)", "ppv_expected_at_test": f"PPV expected at {self.split} prevalence"}
        table = part[list(columns)].rename(columns=columns)
        table.index.name = "finding"
        table.attrs["confidence"] = self.operating_intervals.attrs.get("confidence")
        return table

    def prevalence_shift_table(self, rule: str | None = None) -> pd.DataFrame:
        """Per finding at one rule's thresholds (default: the run's method): what transfers from validation and what not.

        Prevalence on both; sensitivity and specificity on both (they should agree up to
        sampling: they do not depend on prevalence); PPV and NPV on validation, as Bayes'
        rule carries validation's sensitivity and specificity to the scored split's
        prevalence, and as observed there.
        """
        if self.operating_intervals is None:
            raise ValueError(f"no validation predictions: {self.operating_note}")
        rule = rule or self.threshold_method
        part = self.operating_intervals[self.operating_intervals["rule"] == rule].set_index("finding")
        split = self.split
        table = pd.DataFrame({
            "prevalence (val)": part["val_prevalence"],
            f"prevalence ({split})": part["test_prevalence"],
            f"{split} / val": part["test_prevalence"] / part["val_prevalence"].where(part["val_prevalence"] > 0),
            "sensitivity (val)": part["val_sensitivity"],
            f"sensitivity ({split})": part["sensitivity"],
            "specificity (val)": part["val_specificity"],
            f"specificity ({split})": part["specificity"],
            "PPV (val)": part["val_ppv"],
            f"PPV expected at {split} prevalence": part["ppv_expected_at_test"],
            f"PPV ({split})": part["ppv"],
            "NPV (val)": part["val_npv"],
            f"NPV expected at {split} prevalence": part["npv_expected_at_test"],
            f"NPV ({split})": part["npv"],
        })
        table.index.name = "finding"
        return table

    def calibration_figures(self) -> pd.DataFrame:
        """Per finding: O/E, scaled Brier, slope, intercepts and equal-mass ECE of the raw model, with intervals."""
        names = {"observed_expected": "O/E", "scaled_brier": "scaled Brier", "slope": "slope",
                 "intercept": "intercept", "intercept_at_slope_1": "intercept (slope 1)", "ece": "ECE (equal mass)"}
        return _figure_table(self.calibration_summary, names)

    def calibration_shift_table(self) -> pd.DataFrame:
        """Per finding: prevalences and O/E on validation and on the scored split, raw and recalibrated."""
        split = self.split
        table = pd.DataFrame({
            "prevalence (val)": self.validation_prevalence if self.validation_prevalence is not None else np.nan,
            f"prevalence ({split})": self.calibration_summary["prevalence"],
            f"mean probability ({split})": self.calibration_summary["mean_probability"],
            "O/E (val, raw)": (self.validation_observed_expected if self.validation_observed_expected is not None
                               else np.nan),
            f"O/E ({split}, raw)": self.calibration_summary["observed_expected"],
            "O/E CI low": self.calibration_summary["observed_expected_ci_low"],
            "O/E CI high": self.calibration_summary["observed_expected_ci_high"],
        }, index=self.calibration_summary.index)
        if self.recalibrated_summary is not None:
            table[f"O/E ({split}, {self.recalibration.method})"] = self.recalibrated_summary["observed_expected"]  # type: ignore[union-attr]
            table["recalibrated O/E CI low"] = self.recalibrated_summary["observed_expected_ci_low"]
            table["recalibrated O/E CI high"] = self.recalibrated_summary["observed_expected_ci_high"]
        table.index.name = "finding"
        return table

    def recalibrated_figures(self) -> pd.DataFrame | None:
        """The recalibrated model's figures beside the raw ones: slope, O/E, scaled Brier with intervals."""
        if self.recalibrated_summary is None:
            return None
        method = self.recalibration.method  # type: ignore[union-attr]
        columns: dict[str, pd.Series] = {}
        for figure, name in (("slope", "slope"), ("observed_expected", "O/E"), ("scaled_brier", "scaled Brier")):
            for label, summary in (("raw", self.calibration_summary), (method, self.recalibrated_summary)):
                columns[f"{name}, {label}"] = summary[figure]
                columns[f"{name}, {label} CI low"] = summary[f"{figure}_ci_low"]
                columns[f"{name}, {label} CI high"] = summary[f"{figure}_ci_high"]
        table = pd.DataFrame(columns)
        table.index.name = "finding"
        table.attrs["confidence"] = self.calibration_summary.attrs.get("confidence")
        return table

    def to_document(self) -> dict[str, Any]:
        """Everything the report shows, as plain JSON: what ``write_metrics`` saves."""
        mean = mean_auroc(self.auroc)
        per_class = {
            finding: {
                "auroc": self.auroc.loc[finding, "auroc"],
                "ci_low": self.auroc.loc[finding, "ci_low"],
                "ci_high": self.auroc.loc[finding, "ci_high"],
                "average_precision": ap,
                "positives": self.auroc.loc[finding, "positives"],
                "negatives": self.auroc.loc[finding, "negatives"],
                "bootstrap_resamples_used": self.auroc.loc[finding, "n_resamples"],
                "average_precision_ci_low": self.average_precision_ci.loc[finding, "ci_low"],
                "average_precision_ci_high": self.average_precision_ci.loc[finding, "ci_high"],
            }
            for finding, ap in zip(FINDINGS, self.average_precision)
        }
        if self.localization is not None:
            located: dict[str, Any] = {
                "available": True,
                "boxes": len(self.localization.boxes),
                "boxes_outside_film": len(self.localization.outside),
                "outside_film": self.localization.outside,
                "heatmap_size": self.localization.heatmap_size,
                "gradcam_layer": self.gradcam_layer,
                "gradcam_grid": self.gradcam_grid,
                **self.localization.to_document(),
                "wang2017_t_iobb_0.1": metrics.wang2017_localization(),
            }
        else:
            located = {"available": False, "note": self.localization_note}
        document = {
            "run": self.run.name,
            "run_dir": str(self.run.run_dir),
            "checkpoint": {k: self.predictions.attrs.get(k) for k in ("checkpoint", "epoch", "best_epoch",
                                                                       "best_val_auroc_mean")},
            "split": self.split,
            "split_kind": self.run.dataset.split_kind,
            "split_source": self.run.split_source,
            "synthetic": self.synthetic,
            "data_source": self.run.dataset.description,
            "tta_hflip": self.tta_hflip,
            "images_match_training": self.run.images_match_training,
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "not_scored": len(self.not_scored),
            "bootstrap": {"n_resamples": self.n_bootstrap, "seed": self.bootstrap_seed, "confidence": CONFIDENCE,
                          "resampling": self.auroc.attrs.get("resampling")},
            "mean_auroc": {"auroc": mean["auroc"], "ci_low": mean["ci_low"], "ci_high": mean["ci_high"],
                           "over": self.auroc.attrs.get("mean_over"),
                           "bootstrap_resamples_used": int(mean["n_resamples"])},
            "per_class": per_class,
            "thresholds": {
                "method": self.threshold_method,
                "source": f"{run_folder.THRESHOLDS_NAME} in the run folder: chosen on validation predictions at "
                          "training time, used unchanged",
                "values": self.thresholds_by_finding,
            },
            "operating_points": _by_row(self.operating.drop(columns=["note"])),
            "classification_report": None if self.report is None else _by_row(self.report.drop(columns=["note"])),
            "calibration": {
                "n_bins": self.calibration.attrs.get("n_bins"),
                "mean_ece": self.calibration["ece"].mean(),
                "mean_brier": self.calibration["brier"].mean(),
                "per_class": _by_row(self.calibration[["ece", "brier", "mean_probability", "prevalence"]]),
                "equal_mass": {
                    "n_bins": self.calibration_bins,
                    "per_class": _by_row(self.calibration_summary),
                    "reliability": self.reliability_equal_mass.to_dict(orient="records"),
                    "definitions": CALIBRATION_DEFINITIONS,
                },
                "validation_observed_expected": (None if self.validation_observed_expected is None else
                                                 self.validation_observed_expected.to_dict()),
                "recalibration": self._recalibration_document(),
                "class_weighting": self.class_weighting,
                "notes": [*([POS_WEIGHT_NOTE] if self.class_weighting == "pos_weight" else []),
                          PREVALENCE_SHIFT_CALIBRATION_NOTE],
            },
            "prevalence": {
                "validation": (None if self.validation_prevalence is None else self.validation_prevalence.to_dict()),
                self.split: dict(zip(FINDINGS, self.labels.mean(axis=0).tolist())),
            },
            "operating_points_with_intervals": self._operating_document(),
            "subgroups": {
                "table": self.subgroups.to_dict(orient="records"),
                "mean_over": self.subgroups.attrs.get("mean_over"),
                "images_without_group": self.subgroups.attrs.get("images_without_group"),
                "min_positive_patients": self.subgroup_min_positive_patients,
                "age_band_edges": list(SUBGROUP_AGE_EDGES),
                "multiplicity": SUBGROUP_MULTIPLICITY,
                "differences": {
                    "table": self.subgroup_differences.to_dict(orient="records"),
                    "reference": self.subgroup_differences.attrs.get("reference"),
                    "family": self.subgroup_differences.attrs.get("family"),
                    "what": "AUROC of each group minus its variable's reference group (the largest), one patient "
                            "bootstrap for both groups; a two-sided bootstrap p-value and Holm over the stated family",
                },
            },
            "clusters": self.clusters.to_document(),
            "patient_level_auroc": {
                "per_class": _by_row(self.patient_level),
                "mean_over": self.patient_level.attrs.get("mean_over"),
                "patients": self.patient_level.attrs.get("patients"),
                "first_film": "each patient's film with the lowest follow-up number",
                "weighted": "every film weighs 1 / its patient's films in this split",
                "bootstrap": "the same patient resamples as the film-level intervals",
            },
            "paediatric": self.paediatric,
            "localization": located,
            "radiologist_labels": ({"available": False, "films": 0} if self.radiologist is None else
                                   {"available": True, **self.radiologist.to_document()}),
        }
        return files.plain(document)


    def _operating_document(self) -> dict[str, Any]:
        if self.operating_intervals is None:
            return {"available": False, "note": self.operating_note}
        table = self.operating_intervals
        return {
            "available": True,
            "targets": {"sensitivity": self.target_sensitivity, "specificity": self.target_specificity},
            "threshold_sources": {
                **{method: f"{run_folder.THRESHOLDS_NAME} (chosen on validation at training time)" for method in
                   METHODS},
                "fixed sensitivity and specificity": f"chosen on {run_folder.predictions_name('val')} at evaluation",
            },
            "bootstrap": {"n_resamples": table.attrs.get("n_resamples"), "seed": table.attrs.get("seed"),
                          "validation_seed": table.attrs.get("validation_seed"),
                          "confidence": table.attrs.get("confidence"), "resampling": table.attrs.get("resampling")},
            "rules": {rule: {finding: values for finding, values in
                             part.drop(columns=["rule"]).set_index("finding").to_dict(orient="index").items()}
                      for rule, part in table.groupby("rule", sort=False)},
            "transfer": operating.TRANSFER_SENTENCE,
        }

    def _recalibration_document(self) -> dict[str, Any]:
        if self.recalibration is None:
            return {"available": False, "note": self.recalibration_note}
        assert self.recalibrated_summary is not None and self.recalibrated_reliability is not None
        return {"available": True, **self.recalibration.to_document(),
                "per_class": self.recalibration.to_document()["per_class"],
                "figures": _by_row(self.recalibrated_summary),
                "reliability": self.recalibrated_reliability.to_dict(orient="records"),
                "note": "shown beside the raw model, never in its place: every other figure uses raw probabilities"}


CALIBRATION_DEFINITIONS = {
    "observed_expected": "positives / sum of predicted probabilities: below 1 over-predicts, above 1 under-predicts",
    "scaled_brier": "1 - Brier / (prevalence x (1 - prevalence)), the prevalence of the scored films: 0 is no "
                    "better than predicting the prevalence, 1 is perfect",
    "slope": "b of logit P(y) = a + b logit(p), unpenalised: below 1 too extreme, above 1 too timid",
    "intercept": "a of the same fit",
    "intercept_at_slope_1": "a of logit P(y) = a + logit(p) (calibration in the large): negative over-predicts",
    "ece": "sum over equal-mass bins of (share of films) x |positive rate - mean probability|",
}


def _figure_table(summary: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """``calibration_summary`` columns renamed for a report: each figure, then its interval."""
    columns: dict[str, str] = {}
    for figure, label in names.items():
        columns |= {figure: label, f"{figure}_ci_low": f"{label} CI low", f"{figure}_ci_high": f"{label} CI high"}
    table = summary[list(columns)].rename(columns=columns)
    table["prevalence"] = summary["prevalence"]
    table.attrs["confidence"] = summary.attrs.get("confidence")
    return table


def mean_auroc(auroc: pd.DataFrame) -> pd.Series:
    """The mean row's auroc, ci_low, ci_high and n_resamples as floats (NaN where undefined).

    The whole row would be one nullable Float64 series (the table's count columns are Int64),
    in which NaN reads as <NA>: ``np.isfinite`` of it raises instead of saying False.
    """
    return auroc.loc[metrics.MEAN_ROW, ["auroc", "ci_low", "ci_high", "n_resamples"]].astype(np.float64)


def _by_row(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Row label -> {column: value}, each column keeping its own type (counts stay integers)."""
    return {str(index): values for index, values in table.to_dict(orient="index").items()}


# --------------------------------------------------------------------------- the evaluation


def evaluate_run(
    run: run_folder.Run | str | os.PathLike[str],
    split: str = "test",
    threshold_method: str = "youden",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    tta_hflip: bool = False,
    gradcam_layer: str = "auto",
    gallery_per_kind: int = 4,
    subgroup_min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
    target_sensitivity: float = TARGET_SENSITIVITY,
    target_specificity: float = TARGET_SPECIFICITY,
    calibration_bins: int = CALIBRATION_BINS,
    recalibration: str = "platt",
    data_root: str | os.PathLike[str] | None = None,
) -> EvaluationResult:
    """Score ``split`` of a run with its best checkpoint and compute every table of the evaluation report.

    ``run`` is a run folder (or an opened ``Run``); ``data_root`` points at its data where
    it moved. ``gradcam_layer`` "auto" reads the deepest stage whose grid is at
    least 4 x 4 at the run's input size. ``n_bootstrap`` patient resamples (seeded by
    ``bootstrap_seed``) give every interval. A subgroup's figure for a finding needs
    ``subgroup_min_positive_patients`` patients with a positive film in the group.

    The run's validation predictions (``predictions_val.csv``, written at training time)
    give the fixed-sensitivity and fixed-specificity thresholds (``target_sensitivity``,
    ``target_specificity``), the validation side of every operating-point interval (the
    threshold re-chosen on resampled validation patients), the validation prevalences,
    and the ``recalibration`` ("platt", "temperature" or "none") shown beside the raw
    probabilities. Calibration uses ``calibration_bins`` bins, equal-width and equal-mass.
    Predictions go to the run folder
    (``predictions_<split>.csv``); nothing else is written: ``write_metrics`` saves the result.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    if subgroup_min_positive_patients < 1:
        raise ValueError(f"subgroup_min_positive_patients must be at least 1, got {subgroup_min_positive_patients}")
    for name, target in (("target_sensitivity", target_sensitivity), ("target_specificity", target_specificity)):
        if not 0 < target < 1:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {target}")
    if calibration_bins < 2:
        raise ValueError(f"calibration_bins must be at least 2, got {calibration_bins}")
    if recalibration not in calibration.RECALIBRATION_METHODS:
        raise ValueError(f"recalibration must be one of {calibration.RECALIBRATION_METHODS}, got {recalibration!r}")
    run = run if isinstance(run, run_folder.Run) else run_folder.open_run(run, data_root=data_root)
    layer = gradcam_layer_for(run.config.input_size, gradcam_layer, run.config.arch)
    thresholds_by_finding = run.thresholds(threshold_method)
    thresholds = metrics.threshold_array(thresholds_by_finding)  # a finding missing from the file fails before scoring
    predictions = predict_split(run, split, tta_hflip=tta_hflip)
    labels, probabilities, patient_ids = prediction_arrays(predictions)

    with stage("bootstrap AUROC", images=len(predictions), resamples=n_bootstrap):
        auroc = metrics.bootstrap_auroc(labels, probabilities, patient_ids, n_resamples=n_bootstrap,
                                        seed=bootstrap_seed, confidence=CONFIDENCE, progress="bootstrap AUROC")
    average_precision = metrics.per_class_average_precision(labels, probabilities)
    operating_at_thresholds = metrics.operating_points(labels, probabilities, thresholds)
    report = (metrics.classification_report_table(labels, probabilities, thresholds)
              if np.isfinite(thresholds).any() else None)
    calibration_table = metrics.calibration_table(labels, probabilities, n_bins=calibration_bins)
    reliability = metrics.reliability_curves(labels, probabilities, n_bins=calibration_bins)
    with stage("bootstrap AP", images=len(predictions), resamples=n_bootstrap):
        average_precision_ci = operating.bootstrap_average_precision(labels, probabilities, patient_ids,
                                                                     n_resamples=n_bootstrap, seed=bootstrap_seed)
    validation = _validation_predictions(run)
    rules = [operating.OperatingRule(method) for method in METHODS] + [
        operating.OperatingRule("fixed_sensitivity", target_sensitivity),
        operating.OperatingRule("fixed_specificity", target_specificity)]
    operating_intervals = validation_prevalence = validation_observed_expected = None
    operating_note = recalibration_note = None
    if isinstance(validation, str):
        operating_note = recalibration_note = validation
    else:
        val_labels, val_probabilities, val_patient_ids = prediction_arrays(validation)
        validation_prevalence = pd.Series(val_labels.mean(axis=0), index=list(FINDINGS))
        with np.errstate(divide="ignore", invalid="ignore"):
            validation_observed_expected = pd.Series(val_labels.sum(axis=0) / val_probabilities.sum(axis=0),
                                                     index=list(FINDINGS))
        with stage("operating-point intervals", images=len(predictions) + len(validation), resamples=n_bootstrap):
            operating_intervals = operating.operating_point_intervals(
                val_labels, val_probabilities, val_patient_ids, labels, probabilities, patient_ids, rules,
                point_thresholds={method: metrics.threshold_array(run.thresholds(method)) for method in METHODS},
                n_resamples=n_bootstrap, seed=bootstrap_seed, confidence=CONFIDENCE,
                progress="bootstrap operating points")
    with stage("calibration", images=len(predictions), resamples=n_bootstrap):
        calibration_summary = calibration.calibration_summary(labels, probabilities, patient_ids,
                                                              n_bins=calibration_bins, n_resamples=n_bootstrap,
                                                              seed=bootstrap_seed, confidence=CONFIDENCE)
        reliability_equal_mass = calibration.equal_mass_reliability(labels, probabilities, patient_ids,
                                                                    n_bins=calibration_bins, n_resamples=n_bootstrap,
                                                                    seed=bootstrap_seed, confidence=CONFIDENCE)
        recalibrated = recalibrated_summary = recalibrated_reliability = None
        if recalibration == "none":
            recalibration_note = "recalibration is off (the setting recalibration = none)"
        elif not isinstance(validation, str):
            recalibrated = calibration.fit_recalibration(val_labels, val_probabilities, recalibration)
            recalibrated_probabilities = recalibrated.apply(probabilities)
            recalibrated_summary = calibration.calibration_summary(
                labels, recalibrated_probabilities, patient_ids, n_bins=calibration_bins, n_resamples=n_bootstrap,
                seed=bootstrap_seed, confidence=CONFIDENCE)
            recalibrated_reliability = calibration.equal_mass_reliability(
                labels, recalibrated_probabilities, patient_ids, n_bins=calibration_bins, n_resamples=n_bootstrap,
                seed=bootstrap_seed, confidence=CONFIDENCE)
    rows = run.dataset.metadata.set_index("image").loc[predictions["image"]].reset_index()
    clusters = cluster_facts(predictions)
    with stage("patient-level AUROC", images=len(predictions), resamples=n_bootstrap):
        patient_level = patient_level_auroc(labels, probabilities, patient_ids, rows["follow_up"], rows["image"],
                                            n_resamples=n_bootstrap, seed=bootstrap_seed)
    subgroups = subgroup_table(rows, labels, probabilities, patient_ids, n_bootstrap, bootstrap_seed,
                               min_positive_patients=subgroup_min_positive_patients)
    subgroup_differences = subgroup_difference_table(rows, labels, probabilities, patient_ids, n_bootstrap,
                                                     bootstrap_seed, min_positive_patients=subgroup_min_positive_patients)

    boxes = run.dataset.boxes
    boxes = boxes[boxes["image"].isin(set(predictions["image"]))].reset_index(drop=True)
    localization_note = _localization_unavailable(run, split, boxes)
    located = None if localization_note else localize(run, boxes, layer, seed=bootstrap_seed,
                                                      n_bootstrap=n_bootstrap)
    gallery = gallery_panels(run, layer, gallery_examples(predictions, labels, probabilities, thresholds, run.dataset
                                                          .boxes, gallery_per_kind))
    context = context_table(run, split, auroc)
    radiologist = score_against_radiologists(predictions, read_radiologist_labels(), n_bootstrap, bootstrap_seed)
    return EvaluationResult(
        run=run, split=split, tta_hflip=tta_hflip, threshold_method=threshold_method,
        thresholds_by_finding=thresholds_by_finding, n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed,
        gradcam_layer=layer, predictions=predictions, labels=labels, probabilities=probabilities,
        patient_ids=patient_ids, auroc=auroc, average_precision=average_precision, operating=operating_at_thresholds,
        report=report, calibration=calibration_table, reliability=reliability, subgroups=subgroups,
        subgroup_differences=subgroup_differences,
        localization=located, localization_note=localization_note, gallery=gallery, context=context,
        radiologist=radiologist, clusters=clusters, patient_level=patient_level, paediatric=paediatric_counts(rows),
        subgroup_min_positive_patients=subgroup_min_positive_patients,
        average_precision_ci=average_precision_ci, operating_intervals=operating_intervals,
        operating_note=operating_note, validation_prevalence=validation_prevalence,
        target_sensitivity=target_sensitivity, target_specificity=target_specificity,
        calibration_bins=calibration_bins, calibration_summary=calibration_summary,
        reliability_equal_mass=reliability_equal_mass, recalibration=recalibrated,
        recalibrated_summary=recalibrated_summary, recalibrated_reliability=recalibrated_reliability,
        validation_observed_expected=validation_observed_expected, recalibration_note=recalibration_note,
    )


def _validation_predictions(run: run_folder.Run) -> pd.DataFrame | str:
    """The run's validation predictions (best epoch), or a sentence saying why there are none."""
    path = run_folder.predictions_path(run.run_dir, "val")
    if not path.exists():
        return (f"{path} is missing (training writes it at the best epoch): without the validation predictions "
                "there are no fixed-sensitivity or fixed-specificity thresholds, no interval that carries the "
                "threshold's variability, and no recalibration.")
    return run_folder.read_predictions(run.run_dir, "val")


def write_metrics(result: EvaluationResult) -> Path:
    """Save the result into the run folder (atomically) as ``run_folder.metrics_name(split, tta_hflip)``."""
    return run_folder.write_metrics(result.run.run_dir, result.to_document(), result.split, result.tta_hflip)


# --------------------------------------------------------------------------- subgroups

SUBGROUP_MULTIPLICITY = (
    "exploratory: one 95% patient-bootstrap interval per cell (variable x group x finding), none adjusted for "
    "multiplicity. Differences between groups have their own intervals and Holm-adjusted p-values "
    "(subgroups.differences), over the family stated there; nothing adjusts across the three variables"
)


def _subgroup_variables(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Each scored film's sex, age band (``SUBGROUP_AGE_EDGES``) and view, in the order of ``rows``."""
    return {"sex": rows["sex"], "age band": age_band(rows["age_years"], SUBGROUP_AGE_EDGES), "view": rows["view"]}


def subgroup_table(
    rows: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray, patient_ids: np.ndarray, n_resamples: int,
    seed: int, min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
) -> pd.DataFrame:
    """``metrics.subgroup_auroc`` by sex, age band and view (``rows``: the scored films' metadata), long format.

    Age bands: ``SUBGROUP_AGE_EDGES`` (<18, 18-39, 40-59, 60-79, 80+). A finding is
    scored in a group with ``min_positive_patients`` patients with a positive film there.
    """
    groups = _subgroup_variables(rows)
    with stage("subgroups", images=len(rows), resamples=n_resamples):
        tables = [
            metrics.subgroup_auroc(labels, probabilities, patient_ids, values.rename(name), n_resamples=n_resamples,
                                   seed=seed, confidence=CONFIDENCE, progress=True,
                                   min_positive_patients=min_positive_patients)
            for name, values in groups.items()
        ]
    table = pd.concat(tables, ignore_index=True)
    table.attrs["mean_over"] = {t["subgroup"].iloc[0]: t.attrs["mean_over"] for t in tables if len(t)}
    table.attrs["images_without_group"] = {
        t["subgroup"].iloc[0]: t.attrs["images_without_group"] for t in tables if len(t)
    }
    return table


def subgroup_difference_table(
    rows: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray, patient_ids: np.ndarray, n_resamples: int,
    seed: int, min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
) -> pd.DataFrame:
    """Each group's AUROC minus its variable's reference group's (the one with most films), with intervals.

    ``group_differences.between_group_differences`` per variable: one patient bootstrap for both
    groups (a patient can have films in two age bands or views), a bootstrap p-value, Holm over
    ``group_differences.FAMILY``. A difference needs ``min_positive_patients`` in both groups.
    """
    with stage("subgroup differences", images=len(rows), resamples=n_resamples):
        return differences_by_variable(_subgroup_variables(rows), labels, probabilities, patient_ids,
                                       n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE,
                                       min_positive_patients=min_positive_patients)


# --------------------------------------------------------------------------- localization


def _localization_unavailable(run: run_folder.Run, split: str, boxes: pd.DataFrame) -> str | None:
    """Why localization cannot be scored on this split, or None when it can."""
    if run.dataset.boxes.empty:
        return ("No bounding-box file was found under the data root, so localization is not scored "
                "(real NIH: put BBox_List_2017.csv next to Data_Entry_2017.csv).")
    if boxes.empty:
        return (f"None of the {len(run.dataset.boxes):,} bounding boxes lies on a scored image of the "
                f"{split} split (real NIH: the boxes are on official test images), so localization is not scored.")
    return None


def run_box_heatmaps(run: run_folder.Run, boxes: pd.DataFrame, layer: str, desc: str = "Grad-CAM") -> np.ndarray:
    """Grad-CAM of the run's best model at ``layer`` for each row's image and finding (``localization.box_heatmaps``).

    ``boxes`` needs image and finding (boxes in the model frame for scoring). The films
    per pass are inference's (``gradcam_films_per_pass`` at the run's input size: a bound
    on the pixels a pass records for its backward), not the training batch, which says
    nothing of Grad-CAM's memory. What ``localize`` and the gallery draw, and what
    benchmarks/bench_localization.py times.
    """
    model = run.model()
    size = run.config.input_size
    return localization.box_heatmaps(model, run.image_cache(), boxes, size, device=select_device(run.config.device),
                                     batch_size=gradcam_films_per_pass(size), layer=model.stage(layer), desc=desc)


def localize(run: run_folder.Run, boxes: pd.DataFrame, layer: str, seed: int = 0,
             repeats: int = RANDOM_BASELINE_REPEATS, n_bootstrap: int = 1000) -> LocalizationResult:
    """Grad-CAM for each box's image and finding, scored; and the random-heatmap chance level for the same boxes.

    Boxes are in the 1024-px NIH frame; ``localization.place_boxes`` maps them onto each
    film as stored (its size read from the file) and into the square model frame the
    heatmaps live in. Boxes that fall outside their film are set apart
    (``LocalizationResult.outside``), never scored as misses. Every accuracy, and its
    difference from the random heatmaps' (paired by box), gets an interval from
    ``n_bootstrap`` patient resamples seeded by ``seed`` (a patient has several boxes);
    ``seed`` also seeds the ``repeats`` random-heatmap draws.
    """
    assert run.dataset.index is not None  # there are scored images
    size = run.config.input_size
    with stage("Grad-CAM localization", boxes=len(boxes)):
        mapped, outside = localization.place_boxes(boxes, run.dataset.index.paths, size)
        if mapped.empty:
            raise ValueError(f"all {len(boxes)} boxes fall outside their films: the films are not the NIH films the "
                             "boxes were drawn on (or were cropped); nothing to score")
        patient_of = run.dataset.metadata.drop_duplicates("image").set_index("image")["patient_id"]
        unknown = sorted(set(mapped["image"]) - set(patient_of.index))
        if unknown:
            raise KeyError(f"{len(unknown)} boxed images are not in the dataset's metadata, e.g. {unknown[0]}: "
                           "their patient is unknown, so the boxes cannot be resampled by patient")
        heatmaps = run_box_heatmaps(run, mapped, layer)
        grid = gradcam_grid(size, layer)
        scored = localization.score_boxes(heatmaps, mapped)
        scored.insert(scored.columns.get_loc("h") + 1, "patient_id", patient_of.reindex(scored["image"]).to_numpy())
        random_rates = localization.random_baseline_hits(mapped, size, seed=seed, repeats=repeats, grid=grid)
    with stage("localization intervals", boxes=len(scored), resamples=n_bootstrap):
        intervals = localization.localization_intervals(
            localization.box_hits(scored), random_rates, scored["finding"].to_numpy(), scored["patient_id"].to_numpy(),
            n_resamples=n_bootstrap, seed=seed, confidence=CONFIDENCE)
    return LocalizationResult(
        boxes=scored,
        heatmaps=heatmaps,
        scores=intervals.scores,
        baseline=intervals.baseline,
        heatmap_size=size,
        outside=outside,
        versus_random=intervals.versus_random,
        random_rates=random_rates,
    )


# --------------------------------------------------------------------------- gallery


def gallery_examples(
    predictions: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray,
    boxes: pd.DataFrame, per_kind: int,
) -> pd.DataFrame:
    """Up to ``per_kind`` true positives, false positives and false negatives at the validation thresholds.

    The most confident of each kind (TP and FP: highest probability; FN: lowest), one
    finding at a time before any finding repeats; for TP and FN, images with a box for
    the finding come first so the box can be drawn. Columns: kind, image, finding,
    probability, threshold, and the first box of that finding on the image (x, y, w, h
    in the 1024-px NIH frame; NaN when there is none).
    """
    columns = ["kind", "image", "finding", "probability", "threshold", "x", "y", "w", "h"]
    if per_kind < 1:
        return pd.DataFrame(columns=columns)
    images = predictions["image"].to_numpy()
    boxed = boxes.drop_duplicates(["image", "finding"]).set_index(["image", "finding"])
    frames = []
    for k, finding in enumerate(FINDINGS):
        if not np.isfinite(thresholds[k]):
            continue
        positive = labels[:, k] == 1
        flagged = probabilities[:, k] >= thresholds[k]
        for kind, mask in (("TP", positive & flagged), ("FP", ~positive & flagged), ("FN", positive & ~flagged)):
            frames.append(pd.DataFrame({"kind": kind, "image": images[mask], "finding": finding,
                                        "probability": probabilities[mask, k], "threshold": thresholds[k]}))
    candidates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns[:5])
    keys = pd.MultiIndex.from_arrays([candidates["image"], candidates["finding"]])
    candidates["has_box"] = keys.isin(boxed.index)
    picked = []
    for kind in GALLERY_KINDS:
        part = candidates[candidates["kind"] == kind].copy()
        part["confidence"] = part["probability"] if kind != "FN" else -part["probability"]
        by_box = kind != "FP"
        part = part.sort_values(["has_box", "confidence"] if by_box else ["confidence"],
                                ascending=[False, False] if by_box else [False], kind="stable")
        part["repeat"] = part.groupby("finding").cumcount()  # first of each finding before any second
        picked.append(part.sort_values("repeat", kind="stable").head(per_kind))
    examples = pd.concat(picked, ignore_index=True)
    box_values = boxed[["x", "y", "w", "h"]].reindex(pd.MultiIndex.from_arrays([examples["image"],
                                                                                examples["finding"]]))
    examples[["x", "y", "w", "h"]] = box_values.to_numpy(dtype=float)
    return examples[columns]


def model_frame_images(run: run_folder.Run, images: list[str]) -> np.ndarray:
    """(N, input_size, input_size) in [0, 1]: the cached images as the network sees them, before normalization."""
    size = run.config.input_size
    if not images:
        return np.zeros((0, size, size))
    cache = run.image_cache()
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(images)]))[:, None]
    inputs = prepare_batch(pixels, torch.device("cpu"), size, channels_last=False)
    return denormalize(inputs)[:, 0].numpy()


def gallery_panels(run: run_folder.Run, layer: str, examples: pd.DataFrame) -> Gallery:
    """Images, Grad-CAM heatmaps (for each example's finding), boxes and titles, in the square model frame."""
    size = run.config.input_size
    if examples.empty:
        return Gallery(examples, np.zeros((0, size, size)), np.zeros((0, size, size)), [], [])
    with stage("gallery Grad-CAM", images=len(examples)):
        heatmaps = run_box_heatmaps(run, examples[["image", "finding"]], layer, desc="gallery Grad-CAM")
    images = model_frame_images(run, examples["image"].tolist())
    boxes: list[tuple[float, float, float, float] | None] = [None] * len(examples)
    with_box = examples.dropna(subset=["x"])
    if len(with_box):
        assert run.dataset.index is not None
        mapped, _ = localization.place_boxes(with_box, run.dataset.index.paths, size)  # outside: not drawn
        for position, row in zip(mapped.index, mapped[["x", "y", "w", "h"]].itertuples(index=False)):
            boxes[examples.index.get_loc(position)] = tuple(float(v) for v in row)  # type: ignore[assignment]
    titles = [
        f"{row.kind}: {row.finding}\np={row.probability:.2f} (thr {row.threshold:.2f})\n{row.image}"
        for row in examples.itertuples()
    ]
    return Gallery(examples, images, heatmaps, boxes, titles)


# --------------------------------------------------------------------------- published context


def context_table(run: run_folder.Run, split: str, auroc: pd.DataFrame) -> pd.DataFrame:
    """``metrics.reference_results`` with this run added, each row labelled with its split.

    ``comparable with this run``: the same kind of split, this run scored on its test
    split, and real images. Phantoms are comparable with nothing.
    """
    kind = run.dataset.split_kind
    synthetic = run.dataset.synthetic
    this_split = {"official": "official", "random": "random patient split"}.get(kind, kind)
    mean = mean_auroc(auroc)
    this_run = {
        "model": f"this run ({run.name}): {BACKBONES[run.config.arch].title}, {run.config.weights} init",
        "input": f"{run.config.input_size} px",
        "mean_auroc": mean["auroc"],
        "ci_low": mean["ci_low"],
        "ci_high": mean["ci_high"],
        "split": f"{this_split} ({split} images)" + (", SYNTHETIC phantoms" if synthetic else ""),
        "source": "this report",
        "comparable_to_official_split": kind == "official" and split == "test" and not synthetic,
    }
    table = metrics.reference_results()
    comparable = (table["split"] == this_split) & (split == "test") & (not synthetic)
    table["comparable with this run"] = comparable.map({True: "yes, roughly", False: "no"})
    table = pd.concat([pd.DataFrame([{**this_run, "comparable with this run": "-"}]), table], ignore_index=True)
    columns = ["model", "input", "mean_auroc", "ci_low", "ci_high", "split", "comparable_to_official_split",
               "comparable with this run", "source"]
    return table[columns].set_index("model")

"""Two models scored on the same films, compared finding by finding: statistics only.

Both models' predictions tables (``cxrutils.predictions``) are paired by image
(``pair_predictions``). Then:

- ``compare_auroc``: AUROC of each model per shared finding with patient-bootstrap
  intervals, the difference (ours - theirs) with a paired patient-bootstrap interval,
  DeLong's paired test with Holm and Benjamini-Hochberg adjustments across findings,
  and the mean over the shared findings with a paired bootstrap interval. Both models
  are scored on the same bootstrap resamples, so the intervals of the differences
  reflect that the models see the same patients.
- ``classification_comparison``: each model at thresholds chosen on the validation
  films (each model's own validation predictions, same rule); the other model also at
  its published operating points.
- ``subgroup_comparison``: the same AUROC comparison within sex and view, where a
  finding needs ``min_positive_patients`` patients with a positive film in the group.

**Patients.** DeLong's test treats images as independent; NIH patients have several
films each (3.6 on average over the dataset, about 9 on the official test list), which
makes image-level p-values too small. By default the test uses
the patient-clustered DeLong variance (``cxrutils.stats.delong``), matching the
patient bootstrap used for every interval here. Which findings are scored at all is
``metrics.scorable``'s one rule. The models' names and the caveats a reader must
know come from the caller (``cxrutils.compare``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS
from cxrutils.predictions import check_table, probability_column, scored_findings
from cxrutils.stats.delong import adjust_p_values, delong_per_class
from cxrutils.stats.intervals import percentile_interval
from cxrutils.stats.metrics import (
    MEAN_ROW,
    MIN_PATIENTS_PER_SIDE,
    bootstrap_resample_aurocs,
    operating_points,
    positive_patients,
    scorable,
)
from cxrutils.stats.thresholds import ThresholdMethod, choose_thresholds

OURS, TXV = "ours", "txv"
DelongClusters = Literal["patient", "image"]


# --------------------------------------------------------------------------- pairing


@dataclass
class PairedPredictions:
    """Two models' scores on the same images, in one order, for the findings both score."""

    images: np.ndarray
    patient_ids: np.ndarray
    findings: list[str]
    labels: np.ndarray  # (n, k) int8
    ours: np.ndarray  # (n, k) float64
    txv: np.ndarray  # (n, k) float64
    names: dict[str, str]  # "ours" / "txv" -> display name
    caveats: list[str] = field(default_factory=list)

    def subset(self, mask: np.ndarray) -> PairedPredictions:
        return PairedPredictions(self.images[mask], self.patient_ids[mask], list(self.findings), self.labels[mask],
                                 self.ours[mask], self.txv[mask], dict(self.names), list(self.caveats))

    def __len__(self) -> int:
        return len(self.images)


def pair_predictions(
    ours: pd.DataFrame,
    txv: pd.DataFrame,
    *,
    names: dict[str, str],
    caveats: Sequence[str] = (),
) -> PairedPredictions:
    """Pair our predictions with TorchXRayVision's, image by image, in our row order.

    Both frames hold image, patient_id and ``prob_<finding>``; labels come from
    ``ours`` (all 14 columns) and, where ``txv`` has label columns too, must agree.
    The findings are those both score. Raises naming the images that only one
    frame has: a comparison on different images would not be paired.
    """
    check_table(ours, "our")
    check_table(txv, "TorchXRayVision's")
    findings = [f for f in scored_findings(ours) if f in scored_findings(txv)]
    if not findings:
        raise ValueError(f"no finding is scored by both: ours {scored_findings(ours)}, "
                         f"TorchXRayVision {scored_findings(txv)}")
    missing_labels = [f for f in findings if f not in ours.columns]
    if missing_labels:
        raise ValueError(f"our predictions have no label column for {missing_labels}")
    only_ours = ours.loc[~ours["image"].isin(txv["image"]), "image"]
    only_txv = txv.loc[~txv["image"].isin(ours["image"]), "image"]
    if len(only_ours) or len(only_txv):
        raise ValueError(f"the two prediction sets cover different images: {len(only_ours)} only in ours "
                         f"(e.g. {only_ours.head(3).tolist()}), {len(only_txv)} only in TorchXRayVision's "
                         f"(e.g. {only_txv.head(3).tolist()}); predict both on the same images")
    theirs = txv.set_index("image").loc[ours["image"]]
    if not np.array_equal(theirs["patient_id"].astype(str).to_numpy(), ours["patient_id"].astype(str).to_numpy()):
        raise ValueError("the two prediction sets give different patient ids for the same images")
    labels = ours[findings].to_numpy()
    for k, finding in enumerate(findings):
        if finding in theirs.columns:
            disagree = int((theirs[finding].to_numpy() != labels[:, k]).sum())
            if disagree:
                raise ValueError(f"the label {finding} differs between the two prediction sets on {disagree} images")
    scores_ours = ours[[probability_column(f) for f in findings]].to_numpy(dtype=np.float64)
    scores_txv = theirs[[probability_column(f) for f in findings]].to_numpy(dtype=np.float64)
    for which, scores in (("our", scores_ours), ("TorchXRayVision", scores_txv)):
        if not np.isfinite(scores).all():
            raise ValueError(f"the {which} predictions hold {int((~np.isfinite(scores)).sum())} NaN or infinite "
                             "probabilities")
    return PairedPredictions(
        images=ours["image"].to_numpy(),
        patient_ids=ours["patient_id"].to_numpy(),
        findings=findings,
        labels=labels.astype(np.int8),
        ours=scores_ours,
        txv=scores_txv,
        names=dict(names),
        caveats=list(caveats),
    )


# --------------------------------------------------------------------------- AUROC


@dataclass
class AurocComparison:
    """Per-finding table (then a ``mean`` row), with how it was computed and what to keep in mind."""

    table: pd.DataFrame
    names: dict[str, str]
    caveats: list[str]
    mean_over: list[str]
    n_resamples: int
    seed: int
    confidence: float
    delong_clusters: str


def compare_auroc(
    paired: PairedPredictions,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    delong_clusters: DelongClusters = "patient",
    min_positives: int = 2,
    mean_over: Sequence[str] | None = None,
    min_positive_patients: int = MIN_PATIENTS_PER_SIDE,
) -> AurocComparison:
    """AUROC per shared finding for both models, their difference, DeLong's paired test, and the mean.

    Table columns: positives, negatives, auroc_ours, ours_ci_low, ours_ci_high,
    auroc_txv, txv_ci_low, txv_ci_high, difference (ours - txv), diff_ci_low,
    diff_ci_high (paired patient bootstrap), z, p_value (DeLong, two-sided),
    p_holm, p_bh (adjusted across the tested findings), n_resamples, note. The
    ``mean`` row averages ``mean_over`` (default: every tested finding); its
    interval comes from the mean difference inside each resample (resamples where
    one of those findings has no positive are skipped and counted).
    """
    if delong_clusters not in ("patient", "image"):
        raise ValueError(f"delong_clusters must be 'patient' or 'image', got {delong_clusters!r}")
    y, k = paired.labels, len(paired.findings)
    tested = scorable(y, paired.patient_ids, min_positives, min_positive_patients)
    clusters = paired.patient_ids if delong_clusters == "patient" else None
    delong = delong_per_class(y[:, tested], paired.ours[:, tested], paired.txv[:, tested],
                              [f for f, t in zip(paired.findings, tested) if t], clusters=clusters,
                              confidence=confidence) if tested.any() else None
    both = bootstrap_resample_aurocs(np.hstack([y, y]), np.hstack([paired.ours, paired.txv]), paired.patient_ids,
                                     n_resamples=n_resamples, seed=seed)
    boot_ours, boot_txv = both[:, :k], both[:, k:]
    boot_diff = boot_ours - boot_txv

    rows = []
    for j, finding in enumerate(paired.findings):
        row: dict[str, Any] = {"finding": finding, "positives": int(y[:, j].sum()),
                               "negatives": int((1 - y[:, j]).sum())}
        if not tested[j]:
            row["note"] = f"not scored: {row['positives']} positives, {row['negatives']} negatives"
            rows.append(row)
            continue
        test = delong.loc[finding]  # type: ignore[union-attr]
        ours_low, ours_high, _ = percentile_interval(boot_ours[:, j], confidence)
        txv_low, txv_high, _ = percentile_interval(boot_txv[:, j], confidence)
        diff_low, diff_high, used = percentile_interval(boot_diff[:, j], confidence)
        row.update(auroc_ours=test["auroc_a"], ours_ci_low=ours_low, ours_ci_high=ours_high,
                   auroc_txv=test["auroc_b"], txv_ci_low=txv_low, txv_ci_high=txv_high,
                   difference=test["difference"], diff_ci_low=diff_low, diff_ci_high=diff_high,
                   z=test["z"], p_value=test["p_value"], n_resamples=used, note="")
        rows.append(row)
    columns = ["positives", "negatives", "auroc_ours", "ours_ci_low", "ours_ci_high", "auroc_txv", "txv_ci_low",
               "txv_ci_high", "difference", "diff_ci_low", "diff_ci_high", "z", "p_value", "p_holm", "p_bh",
               "n_resamples", "note"]
    table = pd.DataFrame(rows).set_index("finding").reindex(columns=columns)
    table["p_holm"] = adjust_p_values(table["p_value"].to_numpy(), "holm")
    table["p_bh"] = adjust_p_values(table["p_value"].to_numpy(), "bh")

    included = [f for f, t in zip(paired.findings, tested) if t] if mean_over is None else list(mean_over)
    unknown = [f for f in included if f not in paired.findings or not tested[paired.findings.index(f)]]
    if unknown:
        raise ValueError(f"mean_over names findings that are not scored here: {unknown}")
    mean = _mean_row(included, table, paired.findings, boot_ours, boot_txv, confidence)
    table = pd.concat([table, pd.DataFrame([mean], index=pd.Index([MEAN_ROW], name="finding"))])
    numeric = [c for c in columns if c not in ("positives", "negatives", "n_resamples", "note")]
    table[numeric] = table[numeric].astype(np.float64)
    for column in ("positives", "negatives", "n_resamples"):
        table[column] = table[column].astype("Int64")
    table["note"] = table["note"].fillna("").astype(str)
    return AurocComparison(table=table, names=dict(paired.names), caveats=list(paired.caveats),
                           mean_over=included, n_resamples=n_resamples, seed=seed, confidence=confidence,
                           delong_clusters=delong_clusters)


def _mean_row(included: list[str], table: pd.DataFrame, findings: list[str], boot_ours: np.ndarray,
              boot_txv: np.ndarray, confidence: float) -> dict[str, Any]:
    if not included:
        return {"note": "no finding is scored by both models here"}
    columns = [findings.index(f) for f in included]
    mean_ours = boot_ours[:, columns].mean(axis=1)  # NaN where one included finding is undefined
    mean_txv = boot_txv[:, columns].mean(axis=1)
    ours_low, ours_high, _ = percentile_interval(mean_ours, confidence)
    txv_low, txv_high, _ = percentile_interval(mean_txv, confidence)
    diff_low, diff_high, used = percentile_interval(mean_ours - mean_txv, confidence)
    point_ours = float(table.loc[included, "auroc_ours"].mean())
    point_txv = float(table.loc[included, "auroc_txv"].mean())
    return {"auroc_ours": point_ours, "ours_ci_low": ours_low, "ours_ci_high": ours_high,
            "auroc_txv": point_txv, "txv_ci_low": txv_low, "txv_ci_high": txv_high,
            "difference": point_ours - point_txv, "diff_ci_low": diff_low, "diff_ci_high": diff_high,
            "n_resamples": used, "note": f"mean over {len(included)} findings (paired patient bootstrap)"}


# --------------------------------------------------------------------------- thresholds


def classification_comparison(
    test: PairedPredictions,
    validation: PairedPredictions,
    *,
    method: ThresholdMethod = "youden",
    txv_op_thresholds: Mapping[str, float] | pd.Series | None = None,
) -> pd.DataFrame:
    """Both models at thresholds chosen on our validation set; TorchXRayVision also at its own op_threshs.

    Each model's thresholds come from its own predictions on the same validation
    images (``cxrutils.stats.thresholds.choose_thresholds``, ``method``), never from test.
    Long format: model, thresholds, finding, threshold, positives, negatives, tp,
    fp, tn, fn, sensitivity, specificity, ppv, npv, f1, note.
    """
    if validation.findings != test.findings:
        raise ValueError(f"validation scores {validation.findings} but test scores {test.findings}")
    chosen = f"validation {method}"
    settings: list[tuple[str, str, np.ndarray, np.ndarray]] = [
        (test.names[OURS], chosen, test.ours, choose_thresholds(validation.labels, validation.ours, method)),
        (test.names[TXV], chosen, test.txv, choose_thresholds(validation.labels, validation.txv, method)),
    ]
    if txv_op_thresholds is not None:
        published = pd.Series(txv_op_thresholds, dtype=np.float64)
        missing = [f for f in test.findings if f not in published.index]
        if missing:
            raise ValueError(f"txv_op_thresholds has no value for {missing}")
        settings.append((test.names[TXV], "TorchXRayVision op_threshs", test.txv,
                         published[test.findings].to_numpy()))
    frames = []
    for model, source, scores, thresholds in settings:
        points = operating_points(test.labels, scores, thresholds, class_names=test.findings)
        tp, fp, fn = (points[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("tp", "fp", "fn"))
        with np.errstate(invalid="ignore", divide="ignore"):
            points["f1"] = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        points.insert(0, "thresholds", source)
        points.insert(0, "model", model)
        frames.append(points.reset_index())
    columns = ["model", "thresholds", "finding", "threshold", "positives", "negatives", "tp", "fp", "tn", "fn",
               "sensitivity", "specificity", "ppv", "npv", "f1", "note"]
    return pd.concat(frames, ignore_index=True)[columns]


def side_by_side(
    report: pd.DataFrame, metrics: Sequence[str] = ("sensitivity", "specificity", "ppv", "f1")
) -> pd.DataFrame:
    """``classification_comparison``'s long table as finding x (model, thresholds, metric)."""
    wide = report.pivot(index="finding", columns=["model", "thresholds"], values=list(metrics))
    settings = dict.fromkeys(zip(report["model"], report["thresholds"]))  # in the report's order
    order = [(model, source, metric) for model, source in settings for metric in metrics]
    wide = wide.reorder_levels([1, 2, 0], axis=1)[order]
    return wide.reindex([f for f in FINDINGS if f in wide.index])


# --------------------------------------------------------------------------- subgroups


def subgroup_comparison(
    paired: PairedPredictions,
    metadata: pd.DataFrame,
    by: Sequence[str] = ("sex", "view"),
    *,
    n_resamples: int = 500,
    seed: int = 0,
    confidence: float = 0.95,
    min_positive_patients: int = 5,
) -> pd.DataFrame:
    """``compare_auroc`` within each value of each ``by`` column of ``metadata`` (image, sex, view, ...).

    Long format: subgroup, value, images, patients, finding (then ``mean``),
    positive_patients (patients with a positive film in the group; on the mean row,
    the fewest of the findings it averages), and the columns of ``compare_auroc``'s
    table. A finding with positive films from fewer than ``min_positive_patients``
    patients in a group is not scored there. Within one ``by`` column, every group's
    mean averages the same findings (those scored in all its groups), so group means
    compare like with like. p-values are adjusted (Holm, Benjamini-Hochberg) within
    each group, across its findings: not across groups or variables, so the grid as
    a whole is exploratory.
    """
    if "image" not in metadata.columns:
        raise ValueError("metadata needs an image column to match predictions to their sex and view")
    indexed = metadata.drop_duplicates("image").set_index("image")
    absent = [image for image in paired.images if image not in indexed.index]
    if absent:
        raise ValueError(f"{len(absent)} predicted images are not in the metadata (e.g. {absent[:3]})")
    frames = []
    for column in by:
        if column not in indexed.columns:
            raise ValueError(f"metadata has no {column!r} column; it has {list(indexed.columns)}")
        values = indexed.loc[paired.images, column].to_numpy()
        levels = [v for v in pd.unique(values) if not pd.isna(v)]
        masks = {level: values == level for level in sorted(levels, key=str)}
        scored = [scorable(paired.labels[mask], paired.patient_ids[mask], min_positive_patients=min_positive_patients)
                  for mask in masks.values()]
        common = [f for f, ok in zip(paired.findings, np.logical_and.reduce(scored)) if ok] if scored else []
        for level, mask in masks.items():
            result = compare_auroc(paired.subset(mask), n_resamples=n_resamples, seed=seed, confidence=confidence,
                                   min_positive_patients=min_positive_patients, mean_over=common)
            table = result.table.reset_index()
            with_positive = dict(zip(paired.findings, positive_patients(paired.labels[mask],
                                                                        paired.patient_ids[mask]).tolist()))
            fewest = min((with_positive[f] for f in common), default=None)
            table.insert(table.columns.get_loc("positives") + 1, "positive_patients",
                         pd.array([with_positive.get(f, fewest) for f in table["finding"]], dtype="Int64"))
            table.insert(0, "patients", int(pd.unique(paired.patient_ids[mask]).size))
            table.insert(0, "images", int(mask.sum()))
            table.insert(0, "value", level)
            table.insert(0, "subgroup", column)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

"""A model scored against radiologists' labels (Majkowska et al. 2019) as well as NIH's text-mined ones.

On the films of a predictions table that the radiologists labelled, for Pneumothorax,
Nodule or mass and Airspace opacity (``cxrutils.data.radiologist_labels``): AUROC with
a patient-bootstrap interval against the radiologists' labels and against NIH's labels
on the same films, their paired difference with its interval, and how often the two
label sets agree (with Cohen's kappa). A model that scores only some of a finding's NIH
outputs is scored on those it has; a model with a Fracture output (TorchXRayVision's) is
scored on Fracture against the radiologists only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from cxrutils.data.radiologist_labels import (
    AIRSPACE_FINDINGS,
    COMBINATION_RULE,
    MAPPING,
    NOT_SCORED,
    RADIOLOGIST_ONLY_OUTPUTS,
    SOURCE,
)
from cxrutils.predictions import probability_column, scored_findings
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import MEAN_ROW, bootstrap_auroc, bootstrap_resample_aurocs, per_class_auroc, scorable


@dataclass
class RadiologistResult:
    """Per radiologist finding: the films, both label sets' positives, their agreement, and the two AUROCs."""

    table: pd.DataFrame
    films: int
    patients: int
    sets: dict[str, int]  # Google set ("test"/"val") -> films
    heads: pd.DataFrame | None = None  # Airspace opacity scored by each mapped output alone
    source: str = SOURCE

    def to_document(self) -> dict:
        scored_only = [f for f in RADIOLOGIST_ONLY_OUTPUTS if f in self.table.index]
        return {"films": self.films, "patients": self.patients, "sets": self.sets, "source": self.source,
                "not_scored": {f: why for f, why in NOT_SCORED.items() if f not in scored_only},
                "scored_against_radiologists_only": scored_only,
                "mapping": {f: list(s) for f, s in MAPPING.items()}, "combination_rule": COMBINATION_RULE,
                "per_finding": self.table.reset_index().to_dict(orient="records"),
                "airspace_heads": ([] if self.heads is None else self.heads.reset_index().to_dict(orient="records"))}


def label_agreement(metadata: pd.DataFrame, radiologist: pd.DataFrame, set_id: str | None = "test") -> pd.DataFrame:
    """How often NIH's text-mined labels agree with the radiologists' on the films they both label, with Cohen's kappa.

    No model is involved: this is how noisy the reference standard is. ``metadata``:
    NIH rows with ``image`` and the 14 label columns; ``radiologist``:
    ``read_radiologist_labels()``; ``set_id``: Google's ``test`` set (inside the
    official test list), ``val``, or None for both. Per radiologist finding (NIH side:
    the highest of its ``MAPPING`` labels): films, positives under each label set,
    agreement and kappa.
    """
    chosen = radiologist if set_id is None else radiologist[radiologist["set"] == set_id]
    rows = metadata.drop_duplicates("image").set_index("image")
    missing = chosen.index.difference(rows.index)
    if len(missing):
        raise ValueError(f"{len(missing)} radiologist-labelled films are not in the metadata "
                         f"(e.g. {list(missing[:3])})")
    rows = rows.loc[chosen.index]
    table = []
    for finding, outputs in MAPPING.items():
        nih = rows[list(outputs)].max(axis=1).to_numpy(dtype=np.int8)
        panel = chosen[finding].to_numpy(dtype=np.int8)
        both_kinds = len(set(panel)) > 1 or len(set(nih)) > 1
        table.append({"finding": finding, "films": len(chosen), "radiologist positives": int(panel.sum()),
                      "NIH positives": int(nih.sum()), "agreement": float((panel == nih).mean()),
                      "kappa": float(cohen_kappa_score(panel, nih)) if both_kinds else np.nan})
    return pd.DataFrame(table).set_index("finding")


def _paired_difference(radiologist_labels: np.ndarray, nih_labels: np.ndarray, scores: np.ndarray,
                       patients: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_findings, 3): AUROC against the radiologists minus against NIH's labels, and its paired interval.

    Both label sets are scored on the same patient resamples (the draws depend on the
    patients and the seed only), so the interval of the difference counts that the two
    AUROCs share every film and every score.
    """
    point_rad = np.where(scorable(radiologist_labels, patients), per_class_auroc(radiologist_labels, scores), np.nan)
    point_nih = np.where(scorable(nih_labels, patients), per_class_auroc(nih_labels, scores), np.nan)
    resampled_rad = bootstrap_resample_aurocs(radiologist_labels, scores, patients, n_resamples, seed)
    resampled_nih = bootstrap_resample_aurocs(nih_labels, scores, patients, n_resamples, seed)
    rows = []
    for k in range(scores.shape[1]):
        low, high, _ = percentile_interval(resampled_rad[:, k] - resampled_nih[:, k], CONFIDENCE)
        rows.append((point_rad[k] - point_nih[k], low, high))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def score_against_radiologists(
    predictions: pd.DataFrame, radiologist: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
) -> RadiologistResult | None:
    """Score a predictions table on its radiologist-labelled films; None when it has none.

    Per radiologist finding: AUROC against the radiologists and against NIH's labels on the
    same films and scores, and their paired difference. A table with a probability column
    for a radiologist-only output (``RADIOLOGIST_ONLY_OUTPUTS``: TorchXRayVision's
    Fracture) is also scored on it, against the radiologists only. For Airspace opacity,
    each mapped output is also scored alone (``heads``): the combined score is the highest
    of them, and the heads show whether one of them carries it.
    """
    labelled = predictions[predictions["image"].isin(radiologist.index)].reset_index(drop=True)
    if labelled.empty:
        return None
    truth = radiologist.loc[labelled["image"]]
    available = set(scored_findings(labelled))
    findings = list(MAPPING)
    scores = np.full((len(labelled), len(findings)), 0.0)
    radiologist_labels = truth[findings].to_numpy(dtype=np.int8)
    nih_labels = np.zeros_like(radiologist_labels)
    scored_by: dict[str, list[str]] = {}
    for k, finding in enumerate(findings):
        outputs = [name for name in MAPPING[finding] if name in available]
        scored_by[finding] = outputs
        if outputs:
            scores[:, k] = labelled[[probability_column(name) for name in outputs]].max(axis=1).to_numpy()
        nih_labels[:, k] = labelled[list(MAPPING[finding])].max(axis=1).to_numpy()
    patients = labelled["patient_id"].to_numpy()
    against_radiologists = bootstrap_auroc(radiologist_labels, scores, patients, n_resamples=n_resamples, seed=seed,
                                           confidence=CONFIDENCE, class_names=findings)
    against_nih = bootstrap_auroc(nih_labels, scores, patients, n_resamples=n_resamples, seed=seed,
                                  confidence=CONFIDENCE, class_names=findings)
    differences = _paired_difference(radiologist_labels, nih_labels, scores, patients, n_resamples, seed)
    rows = []
    for k, finding in enumerate(findings):
        usable = bool(scored_by[finding])
        agree = radiologist_labels[:, k] == nih_labels[:, k]
        both_kinds = len(set(radiologist_labels[:, k])) > 1 or len(set(nih_labels[:, k])) > 1
        rows.append({
            "finding": finding,
            "scored by": " / ".join(scored_by[finding]) or "no output of this model",
            "films": len(labelled),
            "radiologist positives": int(radiologist_labels[:, k].sum()),
            "NIH positives": int(nih_labels[:, k].sum()),
            "agreement": float(agree.mean()),
            "kappa": float(cohen_kappa_score(radiologist_labels[:, k], nih_labels[:, k])) if both_kinds else np.nan,
            "AUROC (radiologists)": against_radiologists.loc[finding, "auroc"] if usable else np.nan,
            "radiologists CI low": against_radiologists.loc[finding, "ci_low"] if usable else np.nan,
            "radiologists CI high": against_radiologists.loc[finding, "ci_high"] if usable else np.nan,
            "AUROC (NIH labels)": against_nih.loc[finding, "auroc"] if usable else np.nan,
            "NIH CI low": against_nih.loc[finding, "ci_low"] if usable else np.nan,
            "NIH CI high": against_nih.loc[finding, "ci_high"] if usable else np.nan,
            "difference (radiologists - NIH)": differences[k, 0] if usable else np.nan,
            "difference CI low": differences[k, 1] if usable else np.nan,
            "difference CI high": differences[k, 2] if usable else np.nan,
        })
    rows.extend(_radiologist_only_rows(labelled, truth, patients, n_resamples, seed))
    table = pd.DataFrame(rows).set_index("finding")
    sets = {str(k): int(v) for k, v in truth["set"].value_counts().items()}
    heads = _airspace_heads(labelled, truth, nih_labels[:, findings.index("Airspace opacity")], patients,
                            n_resamples, seed)
    return RadiologistResult(table=table, films=len(labelled), patients=int(pd.unique(patients).size), sets=sets,
                             heads=heads)


def _radiologist_only_rows(labelled: pd.DataFrame, truth: pd.DataFrame, patients: np.ndarray, n_resamples: int,
                           seed: int) -> list[dict]:
    """Rows for radiologist findings NIH has no label for, where the table has the model's output for them."""
    rows = []
    for finding, output in RADIOLOGIST_ONLY_OUTPUTS.items():
        column = probability_column(output)
        if column not in labelled.columns:
            continue
        labels = truth[[finding]].to_numpy(dtype=np.int8)
        scored = bootstrap_auroc(labels, labelled[[column]].to_numpy(dtype=np.float64), patients,
                                 n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE, class_names=[finding])
        rows.append({
            "finding": finding, "scored by": f"{output} (no NIH label)", "films": len(labelled),
            "radiologist positives": int(labels.sum()), "NIH positives": np.nan, "agreement": np.nan,
            "kappa": np.nan, "AUROC (radiologists)": scored.loc[finding, "auroc"],
            "radiologists CI low": scored.loc[finding, "ci_low"], "radiologists CI high": scored.loc[finding, "ci_high"],
            "AUROC (NIH labels)": np.nan, "NIH CI low": np.nan, "NIH CI high": np.nan,
            "difference (radiologists - NIH)": np.nan, "difference CI low": np.nan, "difference CI high": np.nan,
        })
    return rows


def _airspace_heads(labelled: pd.DataFrame, truth: pd.DataFrame, nih_airspace: np.ndarray, patients: np.ndarray,
                    n_resamples: int, seed: int) -> pd.DataFrame:
    """Airspace opacity scored by each mapped output alone, against both label sets (the combination's check)."""
    heads = [name for name in AIRSPACE_FINDINGS if probability_column(name) in labelled.columns]
    columns = ["AUROC (radiologists)", "radiologists CI low", "radiologists CI high",
               "AUROC (NIH labels)", "NIH CI low", "NIH CI high"]
    if not heads:
        return pd.DataFrame(columns=columns).rename_axis("output")
    scores = labelled[[probability_column(name) for name in heads]].to_numpy(dtype=np.float64)
    radiologist = np.repeat(truth[["Airspace opacity"]].to_numpy(dtype=np.int8), len(heads), axis=1)
    nih = np.repeat(nih_airspace.reshape(-1, 1), len(heads), axis=1)
    by_radiologists = bootstrap_auroc(radiologist, scores, patients, n_resamples=n_resamples, seed=seed,
                                      confidence=CONFIDENCE, class_names=heads)
    by_nih = bootstrap_auroc(nih, scores, patients, n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE,
                             class_names=heads)
    table = pd.DataFrame({
        "AUROC (radiologists)": by_radiologists["auroc"], "radiologists CI low": by_radiologists["ci_low"],
        "radiologists CI high": by_radiologists["ci_high"], "AUROC (NIH labels)": by_nih["auroc"],
        "NIH CI low": by_nih["ci_low"], "NIH CI high": by_nih["ci_high"],
    }).drop(index=MEAN_ROW)
    return table.rename_axis("output")

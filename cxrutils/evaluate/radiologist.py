"""A model scored against radiologists' labels (Majkowska et al. 2019) as well as NIH's text-mined ones.

On the films of a predictions table that the radiologists labelled, for Pneumothorax,
Nodule or mass and Airspace opacity (``cxrutils.data.radiologist_labels``): AUROC with
a patient-bootstrap interval against the radiologists' labels and against NIH's labels
on the same films, and how often the two label sets agree (with Cohen's kappa). A model
that scores only some of a finding's NIH outputs is scored on those it has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from cxrutils.data.radiologist_labels import MAPPING, NOT_SCORED, SOURCE
from cxrutils.predictions import probability_column, scored_findings
from cxrutils.stats.intervals import CONFIDENCE
from cxrutils.stats.metrics import bootstrap_auroc


@dataclass
class RadiologistResult:
    """Per radiologist finding: the films, both label sets' positives, their agreement, and the two AUROCs."""

    table: pd.DataFrame
    films: int
    patients: int
    sets: dict[str, int]  # Google set ("test"/"val") -> films
    source: str = SOURCE

    def to_document(self) -> dict:
        return {"films": self.films, "patients": self.patients, "sets": self.sets, "source": self.source,
                "not_scored": NOT_SCORED, "mapping": {f: list(s) for f, s in MAPPING.items()},
                "per_finding": self.table.reset_index().to_dict(orient="records")}


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


def score_against_radiologists(
    predictions: pd.DataFrame, radiologist: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
) -> RadiologistResult | None:
    """Score a predictions table on its radiologist-labelled films; None when it has none."""
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
        })
    table = pd.DataFrame(rows).set_index("finding")
    sets = {str(k): int(v) for k, v in truth["set"].value_counts().items()}
    return RadiologistResult(table=table, films=len(labelled), patients=int(pd.unique(patients).size), sets=sets)

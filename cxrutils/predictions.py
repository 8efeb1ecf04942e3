"""The predictions table: one layout for every model's scores on a set of films.

``image``, ``patient_id``, then ``prob_<finding>`` for each finding the model scores
(in ``FINDINGS`` order), then the 14 label columns (0/1). Our runs write it
(``predictions_<split>.csv``), TorchXRayVision's scores use it for the findings they
have, and the comparison pairs two of them by image. Columns are found by name, so
a table whose columns were reordered reads the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS

PROBABILITY_PREFIX = "prob_"


def probability_column(finding: str) -> str:
    return f"{PROBABILITY_PREFIX}{finding}"


def predictions_table(
    images: Sequence[str],
    patient_ids: Sequence[Any],
    probabilities: Any,
    labels: Any = None,
    findings: Sequence[str] = FINDINGS,
) -> pd.DataFrame:
    """The table for ``probabilities`` (n, len(findings)) and, optionally, the (n, 14) labels in ``FINDINGS`` order."""
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.shape != (len(images), len(findings)):
        raise ValueError(f"probabilities {scores.shape} must be (len(images), len(findings)) = "
                         f"({len(images)}, {len(findings)})")
    frame = pd.DataFrame({"image": list(images), "patient_id": list(patient_ids)})
    for k, finding in enumerate(findings):
        frame[probability_column(finding)] = scores[:, k]
    if labels is not None:
        values = labels[list(FINDINGS)].to_numpy() if isinstance(labels, pd.DataFrame) else np.asarray(labels)
        if values.shape != (len(images), len(FINDINGS)):
            raise ValueError(f"labels {values.shape} must be (len(images), {len(FINDINGS)}) in FINDINGS order")
        for k, finding in enumerate(FINDINGS):
            frame[finding] = values[:, k].astype(int)
    return frame


def scored_findings(table: pd.DataFrame) -> list[str]:
    """The findings a predictions table has probabilities for, in ``FINDINGS`` order."""
    return [finding for finding in FINDINGS if probability_column(finding) in table.columns]


def check_table(table: pd.DataFrame, which: str = "the") -> None:
    """Raise naming what is missing or repeated: image and patient_id columns, probabilities, unique images."""
    missing = [column for column in ("image", "patient_id") if column not in table.columns]
    if missing or not scored_findings(table):
        absent = missing + ([] if scored_findings(table) else [f"{PROBABILITY_PREFIX}<finding>"])
        raise ValueError(f"{which} predictions have no {absent} column(s); a predictions table holds image, "
                         f"patient_id, {PROBABILITY_PREFIX}<finding> and the 14 label columns")
    repeated = table["image"][table["image"].duplicated()]
    if not repeated.empty:
        raise ValueError(f"{which} predictions list images twice: {repeated.head(3).tolist()}")


def missing_columns(table: pd.DataFrame, findings: Sequence[str] = FINDINGS) -> list[str]:
    """The columns of the layout for ``findings`` (image, patient_id, labels, probabilities) that ``table`` lacks."""
    expected = ["image", "patient_id", *findings, *(probability_column(f) for f in findings)]
    return [column for column in expected if column not in table.columns]


def prediction_arrays(
    table: pd.DataFrame, findings: Sequence[str] = FINDINGS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int8, probabilities float64, patient ids) with columns in ``findings`` order, found by name."""
    probability_columns = [probability_column(f) for f in findings]
    missing = [c for c in missing_columns(table, findings) if c != "image"]
    if missing:
        raise KeyError(f"the predictions table lacks columns {missing}; expected cxrutils.predictions' layout")
    return (
        table[list(findings)].to_numpy(dtype=np.int8),
        table[probability_columns].to_numpy(dtype=np.float64),
        table["patient_id"].to_numpy(),
    )

"""Who the scored films come from: films per patient, how concentrated they are, and the children among them.

Every interval in the reports resamples patients, because one patient's films are
alike. How much that matters depends on the films scored, not on the dataset as a
whole: NIH averages 3.6 films per patient, but its official test list holds sicker
patients followed up more often (about 9 films each, up to 184, a tenth of the
patients holding over half the films). ``cluster_facts`` measures this on the films
of the split being evaluated; ``paediatric_counts`` counts the patients under 18 among
them. Plain results, no display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS

TOP_SHARE = 0.10  # "the top decile": the 10% of patients with the most films
PAEDIATRIC_AGE_YEARS = 18.0  # under 18 at the film: a child


@dataclass(frozen=True)
class ClusterFacts:
    """Films per patient on one set of films, and per finding the positive films and patients."""

    films: int
    patients: int
    films_per_patient_mean: float
    films_per_patient_median: float
    films_per_patient_max: int
    top_decile_patients: int  # ceil(10% of the patients): those with the most films
    top_decile_share: float  # the share of the films that they hold
    per_finding: pd.DataFrame  # index finding: positive films, positive patients

    def to_document(self) -> dict[str, Any]:
        """Plain JSON: the figures, and per finding its positive films and patients."""
        return {
            "films": self.films,
            "patients": self.patients,
            "films_per_patient": {"mean": self.films_per_patient_mean, "median": self.films_per_patient_median,
                                  "max": self.films_per_patient_max},
            "top_decile": {"patients": self.top_decile_patients, "share_of_films": self.top_decile_share,
                           "definition": f"the ceil({TOP_SHARE:.0%}) of patients with the most films"},
            "per_finding": {finding: {"positive_films": int(row["positive films"]),
                                      "positive_patients": int(row["positive patients"])}
                            for finding, row in self.per_finding.iterrows()},
        }

    def sentence(self, what: str = "films") -> str:
        """One sentence for a report: these figures, and why intervals resample patients."""
        if self.films == 0:
            return f"There are no {what} to describe."
        return (
            f"These {self.films:,} {what} come from {self.patients:,} patients: "
            f"{self.films_per_patient_mean:.2f} films per patient on average "
            f"(median {self.films_per_patient_median:g}, up to {self.films_per_patient_max:,}), and the {self.top_decile_patients:,} patients with the most films "
            f"(the top tenth) hold {self.top_decile_share:.0%} of them. A patient's films are alike, so they are "
            "not independent evidence: every interval resamples patients, not films."
        )


def cluster_facts(table: pd.DataFrame) -> ClusterFacts:
    """Films per patient, the share held by the top decile of patients, and positives per finding.

    ``table``: one row per film with ``patient_id`` and 0/1 columns named after the
    findings (a predictions table, or metadata rows); the findings present are
    described, in ``FINDINGS`` order. The top decile is the ceil(10%) of patients with
    the most films (ties between them change no sum).
    """
    if "patient_id" not in table.columns:
        raise ValueError(f"the table needs a patient_id column; it has {list(table.columns)}")
    if table["patient_id"].isna().any():
        raise ValueError(f"{int(table['patient_id'].isna().sum())} films have no patient_id")
    findings = [finding for finding in FINDINGS if finding in table.columns]
    films_per_patient = table.groupby("patient_id", sort=False).size().sort_values(ascending=False)
    films, patients = len(table), int(films_per_patient.size)
    top = math.ceil(TOP_SHARE * patients)
    per_finding = pd.DataFrame(
        {"positive films": [int((table[f] == 1).sum()) for f in findings],
         "positive patients": [int(table.loc[table[f] == 1, "patient_id"].nunique()) for f in findings]},
        index=pd.Index(findings, name="finding"),
    )
    if not films:
        return ClusterFacts(0, 0, np.nan, np.nan, 0, 0, np.nan, per_finding)
    return ClusterFacts(
        films=films,
        patients=patients,
        films_per_patient_mean=films / patients,
        films_per_patient_median=float(films_per_patient.median()),
        films_per_patient_max=int(films_per_patient.iloc[0]),
        top_decile_patients=top,
        top_decile_share=float(films_per_patient.iloc[:top].sum() / films),
        per_finding=per_finding,
    )


def paediatric_counts(rows: pd.DataFrame, under_years: float = PAEDIATRIC_AGE_YEARS) -> dict[str, Any]:
    """Films and patients younger than ``under_years`` at the film (``age_years``), of all films with an age.

    Missing ages count in neither; ages above 120 (the Kaggle copy's data errors) are
    not under 18 and are left as recorded.
    """
    for column in ("patient_id", "age_years"):
        if column not in rows.columns:
            raise ValueError(f"the table needs a {column} column; it has {list(rows.columns)}")
    ages = pd.to_numeric(rows["age_years"], errors="coerce")
    young = (ages < under_years).to_numpy()
    return {
        "under_years": under_years,
        "films": int(young.sum()),
        "patients": int(rows.loc[young, "patient_id"].nunique()),
        "films_with_age": int(ages.notna().sum()),
        "share_of_films": float(young.sum() / len(rows)) if len(rows) else float("nan"),
    }

"""Patient-disjoint train / val / test splits.

With the official lists, test is ``test_list.txt`` and validation is carved out of
``train_val_list.txt`` by patient. Without them (the Kaggle sample, ad-hoc data),
all three are drawn by patient. Every split is checked: a patient in two splits is
an error, because the dataset averages 3.6 films per patient and a leak inflates
every metric.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS

TRAIN, VAL, TEST = "train", "val", "test"
SPLIT_ORDER = (TRAIN, VAL, TEST)
# The official lists' sizes (train_val_list.txt and test_list.txt of the NIH release; the README's "Download"
# section): what a full download's split table must show.
OFFICIAL_TRAIN_VAL_IMAGES, OFFICIAL_TRAIN_VAL_PATIENTS = 86_524, 28_008
OFFICIAL_TEST_IMAGES, OFFICIAL_TEST_PATIENTS = 25_596, 2_797


class PatientOverlapError(ValueError):
    """The same patient appears in more than one split."""


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Image names, one per line (the real files have no final newline)."""
    lines = Path(path).read_text().splitlines()
    names = [line.strip() for line in lines if line.strip()]
    duplicated = pd.Index(names)[pd.Index(names).duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: image(s) listed twice: {list(duplicated[:5])}")
    return names


def write_split_list(names: list[str], path: str | os.PathLike[str]) -> None:
    """Write names the way NIH does: newline-separated, no newline after the last."""
    Path(path).write_text("\n".join(names))


def assign_official(
    metadata: pd.DataFrame,
    train_val: list[str],
    test: list[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pd.Series:
    """Each metadata row's split from the official lists, validation carved from train_val by patient.

    The result is aligned with ``metadata`` (its index), to be stored as its ``split`` column.
    """
    listed = pd.Index(train_val).append(pd.Index(test))
    in_both = pd.Index(train_val).intersection(pd.Index(test))
    if len(in_both):
        raise ValueError(f"{len(in_both)} image(s) are in both split lists, e.g. {list(in_both[:3])}")
    unknown = listed.difference(pd.Index(metadata["image"]))
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} image(s) in the split lists are not in the metadata, "
            f"e.g. {list(unknown[:3])}: do the lists and the CSV come from the same release?"
        )
    images = metadata["image"]
    # The official lists name all 112,120 films: a film in neither would be cached, never trained on and never
    # scored, so it is an error, not a silent third side.
    unlisted = images[~images.isin(listed)]
    if len(unlisted):
        raise ValueError(
            f"{len(unlisted):,} image(s) in the metadata are in neither split list (train_val_list.txt, "
            f"test_list.txt), e.g. {unlisted.head(3).tolist()}: do the lists and the CSV come from the same release? "
            "Add them to one list, remove their rows from the metadata CSV, or remove both lists to split by patient"
        )
    side = np.full(len(metadata), TRAIN, dtype=object)
    side[images.isin(test).to_numpy()] = TEST
    in_train_val = images.isin(train_val).to_numpy()
    val_patients = _draw_patients(metadata.loc[in_train_val, "patient_id"].unique(), val_fraction, seed)
    side[metadata["patient_id"].isin(val_patients).to_numpy() & in_train_val] = VAL
    split = pd.Series(side, index=metadata.index, name="split")
    assert_patient_disjoint(metadata.assign(split=split))
    return split


def assign_random(
    metadata: pd.DataFrame,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> pd.Series:
    """Each metadata row's split drawn by patient, for data without official lists (aligned with ``metadata``).

    Fractions are of patients, so image counts vary a little with patients' sizes.
    """
    if not 0 < val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in (0, 1), got {val_fraction + test_fraction}")
    patients = metadata["patient_id"].unique()
    test_patients = _draw_patients(patients, test_fraction, seed)
    remaining = np.setdiff1d(patients, test_patients)
    val_patients = _draw_patients(remaining, val_fraction / (1 - test_fraction), seed + 1)
    side = np.full(len(metadata), TRAIN, dtype=object)
    side[metadata["patient_id"].isin(test_patients).to_numpy()] = TEST
    side[metadata["patient_id"].isin(val_patients).to_numpy()] = VAL
    split = pd.Series(side, index=metadata.index, name="split")
    assert_patient_disjoint(metadata.assign(split=split))
    return split


def _draw_patients(patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded draw of round(fraction * n) patients, independent of input order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    ordered = np.sort(np.asarray(patients))
    n_drawn = int(round(fraction * ordered.size))
    return np.random.default_rng(seed).choice(ordered, size=n_drawn, replace=False)


def assert_patient_disjoint(metadata: pd.DataFrame) -> None:
    """Raise ``PatientOverlapError`` naming patients that fall in two splits (``metadata["split"]``)."""
    sides = metadata.loc[metadata["split"].isin(SPLIT_ORDER), ["patient_id", "split"]]
    per_patient = sides.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if not leaking.empty:
        raise PatientOverlapError(
            f"{leaking.size} patient(s) appear in more than one split, e.g. patient_id {list(leaking.index[:5])}"
        )


def patient_overlap(metadata: pd.DataFrame) -> pd.DataFrame:
    """Patients shared by each pair of splits (all zero for a valid split)."""
    patients_in = {name: set(metadata.loc[metadata["split"] == name, "patient_id"]) for name in SPLIT_ORDER}
    return pd.DataFrame(
        [[len(patients_in[a] & patients_in[b]) if a != b else 0 for b in SPLIT_ORDER] for a in SPLIT_ORDER],
        index=list(SPLIT_ORDER),
        columns=list(SPLIT_ORDER),
    )


OFFICIAL_TRAIN_VAL_ROW = "train_val (official list)"
OFFICIAL_TEST_ROW = "test (official list)"


def split_summary(metadata: pd.DataFrame, official: bool = False) -> pd.DataFrame:
    """Images and patients per split, and the patients each shares with the others.

    With ``official`` lists, two more rows give the lists' own totals (train_val is
    train + val; with the real lists 86,524 images of 28,008 patients, and test
    25,596 of 2,797), so they can be checked against the published sizes.
    """
    side = metadata["split"].to_numpy()
    overlap = patient_overlap(metadata)
    rows = []
    for name in [*SPLIT_ORDER, *sorted(set(side) - set(SPLIT_ORDER))]:
        members = metadata[side == name]
        shared = int(overlap.loc[name].sum()) if name in overlap.index else 0
        rows.append(
            {
                "split": name,
                "images": len(members),
                "patients": members["patient_id"].nunique(),
                "patients_shared_with_other_splits": shared,
            }
        )
    if official:
        train_val_patients = set(metadata.loc[np.isin(side, [TRAIN, VAL]), "patient_id"])
        test_patients = set(metadata.loc[side == TEST, "patient_id"])
        shared = len(train_val_patients & test_patients)
        for name, members, patients in (
            (OFFICIAL_TRAIN_VAL_ROW, np.isin(side, [TRAIN, VAL]), train_val_patients),
            (OFFICIAL_TEST_ROW, side == TEST, test_patients),
        ):
            rows.append({"split": name, "images": int(members.sum()), "patients": len(patients),
                         "patients_shared_with_other_splits": shared})
    return pd.DataFrame(rows).set_index("split")


def split_prevalence(metadata: pd.DataFrame) -> pd.DataFrame:
    """Percentage of images with each finding, one column per split."""
    columns = [*FINDINGS, "no_finding"]
    table = metadata[columns].groupby(metadata["split"].to_numpy()).mean().T * 100
    return table[[name for name in SPLIT_ORDER if name in table.columns]]

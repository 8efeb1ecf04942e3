"""CheXpert (Irvin et al. 2019): ``CheXpert-v1.0(-small)/{train,valid}.csv`` and ``{train,valid}/patientX/studyY/viewZ_*.jpg``.

As published: the root (or the folder above it) holds ``CheXpert-v1.0-small/`` (8-bit JPEGs,
about 390 x 320) or ``CheXpert-v1.0/`` (full size), each with ``train.csv`` and ``valid.csv``
whose ``Path`` column starts with that folder's name. TorchXRayVision ships ``train.csv``
as ``chexpert_train.csv.gz`` (``CheX_Dataset`` reads it the same way; valid.csv is not shipped).

- **Frontal**: the collection's ``Frontal/Lateral`` field is ``Frontal``; ``view`` is its
  ``AP/PA`` (AP, PA, and 17 frontal films marked LL / RL, kept as the first field says).
- **Patient / study**: ``patientNNNNN`` and ``patientNNNNN/studyN`` from ``Path``.
- **Sex / age**: ``Sex`` Male / Female (Unknown -> ""); ``Age`` 0 is CheXpert's unknown (NaN),
  as ``CheX_Dataset`` intends.
- **Labels**: ``cxrutils.data.external.label_maps.CHEXPERT_LABEL_MAP``. Blank is negative (the
  labeler found no mention; Irvin et al. 2019 train on it as 0); -1.0 follows
  ``ExternalOptions.uncertain``: ``exclude`` (default: NaN, the film is left out of that
  finding's scoring, the paper's U-Ignore), ``positive`` (U-Ones) or ``negative`` (U-Zeros).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrutils.data.external.common import (
    CollectionReader,
    ExternalDataError,
    ExternalOptions,
    age_years,
    assemble,
    join_inside,
    read_text_csv,
    sex_code,
)
from cxrutils.data.external.label_maps import CHEXPERT_LABEL_MAP
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "chexpert_train.csv.gz"
FOLDER_NAMES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
CSV_NAMES = (("train.csv", "train"), ("valid.csv", "valid"))
LABEL_COLUMNS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                 "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                 "Fracture", "Support Devices")
REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABEL_COLUMNS)
_IDS = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")
_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "": 0.0}
_UNCERTAIN = ("-1.0", "-1")
UNCERTAIN_VALUE = {"exclude": np.nan, "positive": 1.0, "negative": 0.0}


def read_raw(path: Path | None = None) -> pd.DataFrame:
    """A CheXpert CSV as published (every field text); None: the train.csv shipped in torchxrayvision."""
    return read_text_csv(path or shipped_data_file(SHIPPED_NAME), "CheXpert metadata", REQUIRED)


def label_values(column: pd.Series, uncertain: str, source: str) -> pd.Series:
    """One CheXpert label column as 1 / 0 / NaN under the uncertain policy; an unknown value stops with its row."""
    text = column.str.strip()
    values = text.map(_VALUES)
    values[text.isin(_UNCERTAIN)] = UNCERTAIN_VALUE[uncertain]
    unknown = ~text.isin([*_VALUES, *_UNCERTAIN])
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ExternalDataError(f"{source}: column {column.name!r} row {row + 2} holds {text.iloc[row]!r}; CheXpert "
                                "labels are 1.0, 0.0, -1.0 or blank")
    return values.astype(float)


def to_frame(raw: pd.DataFrame, options: ExternalOptions, source_split: str = "train") -> pd.DataFrame:
    source = raw.attrs.get("source", "CheXpert metadata")
    ids = raw["Path"].str.extract(_IDS)
    if ids[0].isna().any():
        row = int(np.flatnonzero(ids[0].isna().to_numpy())[0])
        raise ExternalDataError(f"{source}: row {row + 2} Path {raw['Path'].iloc[row]!r} is not "
                                "CheXpert-v1.0*/<split>/patientN/studyN/<view>.jpg")
    frontal = raw["Frontal/Lateral"].str.strip() == "Frontal"
    ages = age_years(raw["Age"])
    base = {
        "film": raw["Path"], "source_split": source_split, "patient_id": ids[0], "study_id": ids[0] + "/" + ids[1],
        "sex": sex_code(raw["Sex"], "Male", "Female"), "age_years": ages.where(ages > 0),
        "view": raw["AP/PA"].where(frontal, raw["Frontal/Lateral"]), "frontal": frontal, "labelled": True,
    }
    label_map = CHEXPERT_LABEL_MAP
    labels = pd.DataFrame({finding: label_values(raw[label_map[finding].source_terms[0]], options.uncertain, source)
                           for finding in label_map.mapped}, index=raw.index)
    return assemble("chexpert", base, labels, raw[list(LABEL_COLUMNS)])


def dataset_folder(root: Path) -> Path:
    """The ``CheXpert-v1.0(-small)`` folder: ``root`` itself or the one inside it."""
    if root.name in FOLDER_NAMES or any((root / name).is_file() for name, _ in CSV_NAMES):
        return root
    for name in FOLDER_NAMES:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root}: no {' or '.join(FOLDER_NAMES)} folder (CheXpert's layout: "
                            f"<root>/{FOLDER_NAMES[0]}/train.csv and train/patientN/studyN/viewN_frontal.jpg)")


def metadata_files(root: Path) -> list[tuple[Path, str]]:
    folder = dataset_folder(root)
    files = [(folder / name, split) for name, split in CSV_NAMES if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: neither train.csv nor valid.csv is there")
    return files


def film_paths(root: Path, frame: pd.DataFrame) -> pd.Series:
    """``Path`` below the dataset folder (its first component names the folder, whichever version the user has)."""
    folder = dataset_folder(root)
    inside = frame["film"].str.split("/", n=1).str[1].fillna("")
    return pd.Series([join_inside(folder, part) for part in inside], index=frame.index, dtype=object)


READER = CollectionReader(
    name="chexpert", title="CheXpert", shipped_name=SHIPPED_NAME, metadata_name=f"{FOLDER_NAMES[0]}/train.csv",
    label_map=CHEXPERT_LABEL_MAP, read_raw=read_raw, to_frame=to_frame, metadata_files=metadata_files,
    film_paths=film_paths, dicom=False, frontal_note="Frontal/Lateral == 'Frontal'", film_column="Path",
)

"""SIIM-ACR Pneumothorax (2019): ``train-rle.csv`` and ``dicom-images-train/<study>/<series>/<ImageId>.dcm``.

As published for the Kaggle challenge: one row per mask component, ``ImageId, EncodedPixels``
(the second header starts with a space; ``-1`` is a film without pneumothorax), and the
DICOMs nested in study and series folders named by UID, so a film is found by walking the
folder (as TorchXRayVision's ``SIIM_Pneumothorax_Dataset`` does). Shipped as
``siim-pneumothorax-train-rle.csv.gz``.

- **Films and patients**: ``ImageId`` is the film's SOP Instance UID. The CSV names no
  patient: each film is its own patient unless its DICOM header gives a ``PatientID``
  (``ExternalOptions.read_headers``), which also gives sex, age and the view. The films are
  NIH ChestX-ray14 films: a model trained on NIH is not external on this collection.
- **Frontal**: frontal by construction; a header saying lateral drops the film.
- **Labels**: ``label_maps.SIIM_LABEL_MAP``: Pneumothorax only; ``raw:mask_components`` keeps
  the number of mask rows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrutils.data.external.common import (
    CollectionReader,
    ExternalDataError,
    ExternalOptions,
    assemble,
    read_text_csv,
    walk_files,
)
from cxrutils.data.external.label_maps import SIIM_LABEL_MAP
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "siim-pneumothorax-train-rle.csv.gz"
METADATA_NAME = "train-rle.csv"
IMAGES_FOLDER = "dicom-images-train"
SUFFIX = ".dcm"


def read_raw(path: Path | None = None) -> pd.DataFrame:
    """train-rle.csv as published (every field text); None: the copy shipped in torchxrayvision."""
    raw = read_text_csv(path or shipped_data_file(SHIPPED_NAME), "SIIM-ACR masks", ("ImageId",))
    if encoded_column(raw) is None:
        raise ExternalDataError(f"{raw.attrs['source']}: no EncodedPixels column; it has {list(raw.columns)}")
    return raw


def encoded_column(raw: pd.DataFrame) -> str | None:
    """The mask column's name as written (' EncodedPixels' in the published file)."""
    return next((column for column in raw.columns if column.strip() == "EncodedPixels"), None)


def to_frame(raw: pd.DataFrame, options: ExternalOptions, source_split: str = "train") -> pd.DataFrame:
    column = encoded_column(raw)
    assert column is not None
    has_mask = raw[column].str.strip() != "-1"
    per_film = has_mask.groupby(raw["ImageId"], sort=False)
    films = pd.Series(pd.unique(raw["ImageId"]), dtype=object)
    films.index = films
    base = {"film": films, "source_split": source_split, "patient_id": films, "study_id": "", "sex": "",
            "age_years": float("nan"), "view": "", "frontal": True, "labelled": True}
    labels = pd.DataFrame({"Pneumothorax": per_film.any().reindex(films.index).astype(float)})
    raw_columns = pd.DataFrame({"mask_components": per_film.sum().reindex(films.index).astype(int)})
    return assemble("siim", base, labels, raw_columns)


def metadata_files(root: Path) -> list[tuple[Path, str]]:
    if not (root / METADATA_NAME).is_file():
        raise FileNotFoundError(f"{root}: no {METADATA_NAME}; the SIIM-ACR layout is that CSV beside "
                                f"{IMAGES_FOLDER}/<study>/<series>/<ImageId>{SUFFIX}")
    return [(root / METADATA_NAME, "train")]


def film_paths(root: Path, frame: pd.DataFrame) -> pd.Series:
    """Found by walking ``dicom-images-train`` (the study and series folders are not in the CSV); "" when absent."""
    folder = root / IMAGES_FOLDER
    found = walk_files(folder, (SUFFIX,)) if folder.is_dir() else {}
    return pd.Series([found.get(film, "") for film in frame["film"]], index=frame.index, dtype=object)


READER = CollectionReader(
    name="siim", title="SIIM-ACR Pneumothorax", shipped_name=SHIPPED_NAME, metadata_name=METADATA_NAME,
    label_map=SIIM_LABEL_MAP, read_raw=read_raw, to_frame=to_frame, metadata_files=metadata_files,
    film_paths=film_paths, dicom=True,
    frontal_note="frontal by construction; a DICOM header saying otherwise is left out", film_column="ImageId",
)

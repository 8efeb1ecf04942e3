"""VinDr-CXR (Nguyen et al. 2022), its Kaggle release: ``train.csv`` and ``train/<image_id>.dicom``.

As published for the VinBigData challenge: ``train.csv`` holds one row per box (or one
'No finding' row) per radiologist, ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``;
the films are DICOMs named ``<image_id>.dicom`` in ``train/``. TorchXRayVision ships the CSV
as ``vinbigdata-train.csv.gz`` (15,000 films, 3 readers each, 17 readers in all).

- **Readers combined**: a class is positive when at least ``ExternalOptions.min_readers`` of
  the film's readers drew it (default 2: a majority of the 3). A single reader's box is the
  disagreement a majority rule is there to overrule; ``min_readers=1`` ("any reader", what
  TorchXRayVision's ``VinDr_Dataset`` does) gives the most sensitive reference. Each
  reader counts once per class however many boxes they drew; ``raw:<class>`` keeps the count
  of readers per class, ``raw:readers`` the film's readers.
- **Frontal**: the CSV has no view field; the collection holds posteroanterior chest films
  by construction. When the DICOM headers are read, a film whose header says lateral,
  oblique or decubitus is left out (``ExternalFilms.dropped_views``).
- **Patient**: the release has no patient identifier, so each film is its own patient
  unless its DICOM header gives a ``PatientID``; sex and age come from the header as well.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrutils.data.external.common import CollectionReader, ExternalOptions, assemble, join_inside, read_text_csv
from cxrutils.data.external.label_maps import VINDR_LABEL_MAP
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "vinbigdata-train.csv.gz"
METADATA_NAME = "train.csv"
IMAGES_FOLDER = "train"
SUFFIX = ".dicom"
CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
           "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
           "Pneumothorax", "Pulmonary fibrosis", "No finding")
REQUIRED = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def read_raw(path: Path | None = None) -> pd.DataFrame:
    """VinDr's train.csv as published (every field text); None: the copy shipped in torchxrayvision."""
    return read_text_csv(path or shipped_data_file(SHIPPED_NAME), "VinDr-CXR metadata", REQUIRED)


def reader_counts(raw: pd.DataFrame) -> pd.DataFrame:
    """Film x class: how many distinct readers drew the class (every class of ``CLASSES``, and any other seen)."""
    counts = raw.groupby(["image_id", "class_name"], sort=False)["rad_id"].nunique().unstack(fill_value=0)
    columns = [*CLASSES, *sorted(set(counts.columns) - set(CLASSES))]
    films = pd.unique(raw["image_id"])
    return counts.reindex(index=films, columns=columns, fill_value=0).astype(int)


def to_frame(raw: pd.DataFrame, options: ExternalOptions, source_split: str = "train") -> pd.DataFrame:
    counts = reader_counts(raw)
    readers = raw.groupby("image_id", sort=False)["rad_id"].nunique().reindex(counts.index)
    labels = pd.DataFrame({
        finding: (counts[VINDR_LABEL_MAP[finding].source_terms[0]] >= options.min_readers).astype(float)
        for finding in VINDR_LABEL_MAP.mapped
    }, index=counts.index)
    films = counts.index.to_series(index=counts.index)
    base = {"film": films, "source_split": source_split, "patient_id": films, "study_id": films, "sex": "",
            "age_years": float("nan"), "view": "", "frontal": True, "labelled": True}
    raw_columns = counts.copy()
    raw_columns["readers"] = readers
    return assemble("vindr", base, labels, raw_columns)


def metadata_files(root: Path) -> list[tuple[Path, str]]:
    if not (root / METADATA_NAME).is_file():
        raise FileNotFoundError(f"{root}: no {METADATA_NAME}; VinDr-CXR's Kaggle layout is train.csv beside "
                                f"{IMAGES_FOLDER}/<image_id>{SUFFIX}")
    return [(root / METADATA_NAME, "train")]


def film_paths(root: Path, frame: pd.DataFrame) -> pd.Series:
    return pd.Series([join_inside(root, IMAGES_FOLDER, film + SUFFIX) for film in frame["film"]],
                     index=frame.index, dtype=object)


READER = CollectionReader(
    name="vindr", title="VinDr-CXR", shipped_name=SHIPPED_NAME, metadata_name=METADATA_NAME,
    label_map=VINDR_LABEL_MAP, read_raw=read_raw, to_frame=to_frame, metadata_files=metadata_files,
    film_paths=film_paths, dicom=True,
    frontal_note="no view field: PA films by construction; a DICOM header saying otherwise is left out", film_column="image_id",
)

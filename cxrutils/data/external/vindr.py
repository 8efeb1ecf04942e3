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
- **Boxes** (``boxes``): in each DICOM's own pixel frame (the CSV does not give the film's
  size). Each reader's box is kept on its own with its ``rad_id`` (``REGION_RULE`` says
  which are scored, and why); a row whose coordinates are not numbers, or that draws an
  empty or negative box, is set apart and counted, never read as a number. A phantom root
  written with films (``cxrutils.demo.external_roots``) has its boxes already scaled from the
  real films' pixels onto its phantom films (``scale_vindr_boxes``), so they are in the
  phantom film's own pixels as the real ones are in the real film's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
NO_FINDING = "No finding"
BOX_FIELDS = ("x_min", "y_min", "x_max", "y_max")
REGION_RULE = (
    "each reader's box scored on its own (rad_id kept), for the findings the film is positive for by the "
    "min_readers rule, the label its AUROC uses; a box whose class too few readers drew is on a film negative for "
    "that finding and is not scored. Readers' boxes are not fused: a consensus box (union, intersection, weighted "
    "fusion) is a choice the collection did not make. Nodule/Mass boxes count for both NIH Mass and Nodule")


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


def boxes(raw: pd.DataFrame, options: ExternalOptions = ExternalOptions()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(regions, set apart): each box of a mapped class, per NIH finding it feeds, in the DICOM's own pixel frame.

    ``regions``: ``film``, ``finding`` (NIH), ``source_class``, ``rad_id``, ``kind`` ("box"),
    ``x``, ``y``, ``w``, ``h`` (float, the film's stored pixels: the frame is the film's own,
    so ``frame_width`` / ``frame_height`` are NaN), ``encodings`` (""), ``row`` (the CSV
    line), and ``positive``: the film is positive for the finding by ``options.min_readers``
    (``reader_counts``, the same count as the labels: a reader whose box is malformed still
    drew the class). ``set_apart``: ``row``, ``film``, ``field``, ``value`` (as written: text),
    ``reason``, ``malformed`` (False for a box of a class no NIH finding maps from).
    """
    counts = reader_counts(raw)
    mapped = pd.DataFrame([(VINDR_LABEL_MAP[f].source_terms[0], f) for f in VINDR_LABEL_MAP.mapped],
                          columns=["class_name", "finding"])
    coordinates = raw[list(BOX_FIELDS)]
    drawn = (coordinates.apply(lambda column: column.str.strip()) != "").any(axis=1).to_numpy()
    numbers = coordinates.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    class_name = raw["class_name"].to_numpy()
    looked_at = drawn | (class_name != NO_FINDING)
    good = (looked_at & np.isin(class_name, mapped["class_name"]) & np.isfinite(numbers).all(axis=1)
            & (numbers[:, 0] >= 0) & (numbers[:, 1] >= 0) & (numbers[:, 2] > numbers[:, 0])
            & (numbers[:, 3] > numbers[:, 1]))
    records = raw.to_dict(orient="records")
    set_apart = []
    for position in np.flatnonzero(looked_at & ~good):  # the rare malformed rows, and unmapped classes
        problem = _box_problem(records[position], numbers[position], class_name[position])
        if problem is None:  # cannot happen: a row the vectorised test refused has a reason
            continue
        field, value, reason, malformed = problem
        set_apart.append({"row": int(position) + 2, "film": records[position]["image_id"], "field": field,
                          "value": value, "reason": reason, "malformed": malformed})  # the header is line 1
    kept = pd.DataFrame({"film": raw["image_id"].to_numpy()[good], "source_class": class_name[good],
                         "rad_id": raw["rad_id"].to_numpy()[good], "kind": "box", "x": numbers[good, 0],
                         "y": numbers[good, 1], "w": numbers[good, 2] - numbers[good, 0],
                         "h": numbers[good, 3] - numbers[good, 1], "frame_width": np.nan, "frame_height": np.nan,
                         "encodings": "", "row": np.flatnonzero(good) + 2})
    kept = kept.merge(mapped.rename(columns={"class_name": "source_class"}), on="source_class", how="inner",
                      sort=False).sort_values(["row", "finding"], kind="stable")
    drew = counts.stack()
    kept["positive"] = drew.reindex(pd.MultiIndex.from_arrays([kept["film"], kept["source_class"]])).to_numpy() \
        >= options.min_readers
    return region_frame(kept.to_dict(orient="records")), set_apart_frame(set_apart)


def _box_problem(row: dict[str, str], numbers: np.ndarray, class_name: str) -> tuple[str, str, str, bool] | None:
    """(field, value as written, reason, malformed) when a row gives no box to score; None for a good box."""
    if class_name not in CLASSES:
        return "class_name", class_name, "not one of VinDr-CXR's 15 classes", True
    if class_name == NO_FINDING:
        return "x_min", row["x_min"], "a 'No finding' row with coordinates", True
    for field, value in zip(BOX_FIELDS, numbers):
        if not np.isfinite(value):
            return field, row[field], "not a number", True
    x_min, y_min, x_max, y_max = numbers
    if x_min < 0 or y_min < 0:
        return ("x_min" if x_min < 0 else "y_min"), row["x_min" if x_min < 0 else "y_min"], "negative coordinate", True
    if x_max <= x_min or y_max <= y_min:
        field = "x_max" if x_max <= x_min else "y_max"
        return field, row[field], "an empty box (max not above min)", True
    if not any(VINDR_LABEL_MAP[f].source_terms[0] == class_name for f in VINDR_LABEL_MAP.mapped):
        return "class_name", class_name, "a class no NIH finding is read from (not scored)", False
    return None


REGION_COLUMNS = ("film", "finding", "source_class", "rad_id", "kind", "x", "y", "w", "h", "frame_width",
                  "frame_height", "encodings", "row", "positive")
SET_APART_COLUMNS = ("row", "film", "field", "value", "reason", "malformed")


def region_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """``REGION_COLUMNS`` from rows (the same shape for boxes and masks of every collection)."""
    frame = pd.DataFrame(rows, columns=list(REGION_COLUMNS))
    for column in ("x", "y", "w", "h", "frame_width", "frame_height"):
        frame[column] = frame[column].astype(float)
    frame["row"] = frame["row"].astype(int)
    frame["positive"] = frame["positive"].astype(bool)
    return frame


def set_apart_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(SET_APART_COLUMNS))
    frame["row"] = frame["row"].astype(int)
    frame["malformed"] = frame["malformed"].astype(bool)
    return frame


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

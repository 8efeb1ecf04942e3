"""RSNA Pneumonia Detection (Shih et al. 2019): ``stage_2_train_labels.csv`` and ``stage_2_train_images/<patientId>.dcm``.

As published for the Kaggle challenge: one row per box (``patientId,x,y,width,height,Target``;
a film without a box has one row with blank coordinates and Target 0), beside
``stage_2_detailed_class_info.csv`` (not shipped, not needed) and the DICOM folders.
TorchXRayVision ships the labels as ``kaggle_stage_2_train_labels.csv.zip`` and its own
extraction of the DICOM headers (``PatientSex``, ``PatientAge``, ``ViewPosition``, ...) as
``kaggle_stage_2_train_images_dicom_headers.csv.gz``.

- **Films and patients**: ``patientId`` names a *film* (the challenge anonymised each film as
  its own patient), so each film is its own patient here. The films are NIH ChestX-ray14
  films: a model trained on NIH is not external on this collection.
- **Frontal**: all AP or PA by construction (the shipped headers: PA 14,511, AP 12,173).
  ``view``, ``sex`` and ``age_years`` come from the shipped header table, and from each
  film's own header when ``ExternalOptions.read_headers`` (a header saying lateral drops
  the film).
- **Labels**: ``label_maps.RSNA_LABEL_MAP``: Target -> NIH Pneumonia only.
- **Boxes** (``boxes``): ``x, y, width, height`` in the challenge's 1024 x 1024 frame (every
  film of the challenge is 1024 px square), one region each; a row whose coordinates are
  not numbers, give an empty box or leave the frame is set apart and counted.
"""

from __future__ import annotations

import functools
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
from cxrutils.data.external.label_maps import RSNA_LABEL_MAP
from cxrutils.data.external.vindr import region_frame, set_apart_frame
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "kaggle_stage_2_train_labels.csv.zip"
SHIPPED_HEADERS_NAME = "kaggle_stage_2_train_images_dicom_headers.csv.gz"
METADATA_NAME = "stage_2_train_labels.csv"
IMAGES_FOLDER = "stage_2_train_images"
SUFFIX = ".dcm"
REQUIRED = ("patientId", "x", "y", "width", "height", "Target")
BOX_FIELDS = ("x", "y", "width", "height")
FRAME_PX = 1024  # the challenge's films, and so its boxes' frame
# A box may reach this share of the frame beyond its edge (rounding of a hand-drawn box), as NIH's boxes may.
FRAME_TOLERANCE = 0.01
REGION_RULE = ("each box scored on its own (the challenge drew one per opacity); every box is on a Target 1 film, "
               "so on a film positive for NIH Pneumonia, the finding Target maps to")


def read_raw(path: Path | None = None) -> pd.DataFrame:
    """stage_2_train_labels.csv as published (every field text); None: the copy shipped in torchxrayvision."""
    return read_text_csv(path or shipped_data_file(SHIPPED_NAME), "RSNA Pneumonia labels", REQUIRED)


@functools.lru_cache(maxsize=1)
def shipped_headers() -> pd.DataFrame:
    """TorchXRayVision's table of the challenge films' DICOM headers, by ``PatientID`` (= patientId)."""
    headers = pd.read_csv(shipped_data_file(SHIPPED_HEADERS_NAME), dtype=str, keep_default_na=False,
                          usecols=["PatientID", "PatientSex", "PatientAge", "ViewPosition", "Modality",
                                   "BodyPartExamined"])
    return headers.drop_duplicates("PatientID").set_index("PatientID")


def to_frame(raw: pd.DataFrame, options: ExternalOptions, source_split: str = "train") -> pd.DataFrame:
    source = raw.attrs.get("source", "RSNA labels")
    target = raw["Target"].str.strip()
    if not target.isin(["0", "1"]).all():
        row = int(np.flatnonzero(~target.isin(["0", "1"]).to_numpy())[0])
        raise ExternalDataError(f"{source}: row {row + 2} has Target {target.iloc[row]!r}; expected 0 or 1")
    per_film = pd.DataFrame({"film": raw["patientId"], "target": target.astype(int),
                             "box": raw["x"].str.strip() != ""}).groupby("film", sort=False)
    targets = per_film["target"].agg(["min", "max"])
    if (targets["min"] != targets["max"]).any():
        film = targets.index[targets["min"] != targets["max"]][0]
        raise ExternalDataError(f"{source}: film {film!r} has rows with Target 0 and rows with Target 1")
    films = targets.index.to_series(index=targets.index)
    headers = shipped_headers().reindex(films.index)
    base = {"film": films, "source_split": source_split, "patient_id": films, "study_id": films,
            "sex": sex_code(headers["PatientSex"].fillna(""), "M", "F"),
            "age_years": age_years(headers["PatientAge"].fillna("")), "view": headers["ViewPosition"].fillna(""),
            "frontal": True, "labelled": True}
    labels = pd.DataFrame({"Pneumonia": targets["max"].astype(float)}, index=films.index)
    raw_columns = pd.DataFrame({"Target": targets["max"], "boxes": per_film["box"].sum().astype(int)})
    return assemble("rsna", base, labels, raw_columns)


def boxes(raw: pd.DataFrame, options: ExternalOptions = ExternalOptions()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(regions, set apart): each box of a Target 1 row, for the NIH finding Target maps to, in the 1024-px frame.

    The columns are ``vindr.REGION_COLUMNS`` (``rad_id`` "": the challenge does not name its
    readers; ``frame_width`` = ``frame_height`` = 1024) and ``vindr.SET_APART_COLUMNS``.
    ``options`` is unused (the same call as every collection's).
    """
    findings = [finding for finding in RSNA_LABEL_MAP.mapped if RSNA_LABEL_MAP[finding].source_terms == ("Target",)]
    numbers = raw[list(BOX_FIELDS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    drawn = (raw[list(BOX_FIELDS)].apply(lambda column: column.str.strip()) != "").any(axis=1).to_numpy()
    target = raw["Target"].str.strip().to_numpy()
    kept: list[dict[str, object]] = []
    set_apart: list[dict[str, object]] = []
    records = raw.to_dict(orient="records")
    for position in np.flatnonzero(drawn | (target != "0")):
        row, line = records[position], int(position) + 2  # the header is line 1
        problem = _box_problem(row, numbers[position], target[position])
        if problem is not None:
            field, value, reason = problem
            set_apart.append({"row": line, "film": row["patientId"], "field": field, "value": value, "reason": reason,
                              "malformed": True})
            continue
        x, y, w, h = numbers[position]
        kept.extend({"film": row["patientId"], "finding": finding, "source_class": "Target", "rad_id": "",
                     "kind": "box", "x": x, "y": y, "w": w, "h": h, "frame_width": float(FRAME_PX),
                     "frame_height": float(FRAME_PX), "encodings": "", "row": line, "positive": True}
                    for finding in findings)
    return region_frame(kept), set_apart_frame(set_apart)


def _box_problem(row: dict[str, str], numbers: np.ndarray, target: str) -> tuple[str, str, str] | None:
    """(field, value as written, reason) when a row with a box, or with Target other than 0, gives no box to score."""
    if target not in ("0", "1"):
        return "Target", row["Target"], "Target is neither 0 nor 1"
    if target == "0":
        return "x", row["x"], "a box on a Target 0 row"
    for field, value in zip(BOX_FIELDS, numbers):
        if not np.isfinite(value):
            return field, row[field], "not a number" if row[field].strip() else "Target 1 without a whole box"
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        field = "width" if w <= 0 else "height"
        return field, row[field], "an empty box (width or height not above 0)"
    slack = FRAME_TOLERANCE * FRAME_PX
    if x < -slack or y < -slack or x + w > FRAME_PX + slack or y + h > FRAME_PX + slack:
        return ("x, y, width, height", f"{row['x']} {row['y']} {row['width']} {row['height']}",
                f"beyond the {FRAME_PX}-px frame")
    return None


def metadata_files(root: Path) -> list[tuple[Path, str]]:
    if not (root / METADATA_NAME).is_file():
        raise FileNotFoundError(f"{root}: no {METADATA_NAME}; the RSNA challenge layout is that CSV beside "
                                f"{IMAGES_FOLDER}/<patientId>{SUFFIX}")
    return [(root / METADATA_NAME, "train")]


def film_paths(root: Path, frame: pd.DataFrame) -> pd.Series:
    return pd.Series([join_inside(root, IMAGES_FOLDER, film + SUFFIX) for film in frame["film"]],
                     index=frame.index, dtype=object)


READER = CollectionReader(
    name="rsna", title="RSNA Pneumonia", shipped_name=SHIPPED_NAME, metadata_name=METADATA_NAME,
    label_map=RSNA_LABEL_MAP, read_raw=read_raw, to_frame=to_frame, metadata_files=metadata_files,
    film_paths=film_paths, dicom=True,
    frontal_note="AP / PA by construction (ViewPosition); a DICOM header saying otherwise is left out", film_column="patientId",
)

"""PadChest (Bustos et al. 2020): one CSV and 16-bit PNGs in numbered folders, ``<root>/<ImageDir>/<ImageID>``.

As published by BIMCV: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz`` (read
as ``.csv`` too, once unpacked) beside the folders ``0`` ... ``54`` that its zip archives
unpack to; ``ImageDir`` names the folder of each ``ImageID``. A root holding the films
flat (``<root>/<ImageID>``, as TorchXRayVision's ``PC_Dataset`` reads them) works as well: a
film is looked for in its numbered folder when that folder exists, else at the root.
The CSV's first column has an empty header (a pandas index), kept as published.

- **Frontal**: ``Projection`` PA, AP or AP_horizontal (supine AP); L, COSTAL (rib views),
  EXCLUDE and UNK are left out.
- **Patient / study**: ``PatientID`` / ``StudyID``. **Sex**: ``PatientSex_DICOM`` M / F
  (O and blank -> ""). **Age**: the study's year (``StudyDate_DICOM``) less ``PatientBirth``.
- **Labels**: ``Labels`` is a list of terms (``['pleural effusion', 'cardiomegaly']``), some
  written with a leading space; each is trimmed and matched whole against
  ``label_maps.PADCHEST_TERMS``. A film whose list is blank, ``nan``, empty or holds
  'exclude' has no labels (``labelled`` False, every finding NaN). ``MethodLabel``
  (Physician / RNN_model) is kept as ``raw:MethodLabel`` for a physician-only analysis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrutils.data.external.common import (
    CollectionReader,
    ExternalOptions,
    assemble,
    join_inside,
    read_text_csv,
    sex_code,
)
from cxrutils.data.external.label_maps import PADCHEST_LABEL_MAP, PADCHEST_TERMS, PADCHEST_UNLABELLED_TERMS
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
PUBLISHED_NAMES = (SHIPPED_NAME, SHIPPED_NAME.removesuffix(".gz"))
FRONTAL_PROJECTIONS = ("PA", "AP", "AP_horizontal")
REQUIRED = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "Projection", "MethodLabel", "Labels")
_TERM = r"'([^']*)'"


def read_raw(path: Path | None = None) -> pd.DataFrame:
    """The PadChest CSV as published (every field text); None: the copy shipped in torchxrayvision."""
    return read_text_csv(path or shipped_data_file(SHIPPED_NAME), "PadChest metadata", REQUIRED)


def label_terms(labels: pd.Series) -> pd.Series:
    """Each film's ``Labels`` as a list of trimmed terms, empty ones dropped."""
    return labels.str.findall(_TERM).map(lambda terms: [term.strip() for term in terms if term.strip()])


def to_frame(raw: pd.DataFrame, options: ExternalOptions, source_split: str = "train") -> pd.DataFrame:
    terms = label_terms(raw["Labels"])
    exploded = terms.explode()
    labelled = (terms.str.len() > 0) & ~exploded.isin(PADCHEST_UNLABELLED_TERMS).groupby(level=0).any()
    labels = pd.DataFrame({
        finding: exploded.isin(PADCHEST_TERMS[finding]).groupby(level=0).any().astype(float)
        for finding in PADCHEST_LABEL_MAP.mapped
    }, index=raw.index)
    labels[~labelled] = np.nan
    projection = raw["Projection"].str.strip()
    year = pd.to_numeric(raw["StudyDate_DICOM"].str.slice(0, 4), errors="coerce")
    base = {
        "film": raw["ImageID"], "source_split": source_split, "patient_id": raw["PatientID"],
        "study_id": raw["StudyID"], "sex": sex_code(raw["PatientSex_DICOM"], "M", "F"),
        "age_years": year - pd.to_numeric(raw["PatientBirth"], errors="coerce"), "view": projection,
        "frontal": projection.isin(FRONTAL_PROJECTIONS), "labelled": labelled,
    }
    return assemble("padchest", base, labels, raw[["Labels", "MethodLabel", "ImageDir"]])


def metadata_files(root: Path) -> list[tuple[Path, str]]:
    for name in PUBLISHED_NAMES:
        if (root / name).is_file():
            return [(root / name, "train")]
    raise FileNotFoundError(f"{root}: no {PUBLISHED_NAMES[0]} (or its unpacked .csv); PadChest's layout is that CSV "
                            "beside the numbered image folders 0 ... 54")


def film_paths(root: Path, frame: pd.DataFrame) -> pd.Series:
    folders = frame["raw:ImageDir"]
    numbered = {folder: bool(join_inside(root, folder)) and Path(join_inside(root, folder)).is_dir()
                for folder in folders.unique()}
    paths = [join_inside(root, folder, image) if numbered[folder] else join_inside(root, image)
             for folder, image in zip(folders.tolist(), frame["film"].tolist())]
    return pd.Series(paths, index=frame.index, dtype=object)


READER = CollectionReader(
    name="padchest", title="PadChest", shipped_name=SHIPPED_NAME, metadata_name=SHIPPED_NAME,
    label_map=PADCHEST_LABEL_MAP, read_raw=read_raw, to_frame=to_frame, metadata_files=metadata_files,
    film_paths=film_paths, dicom=False, frontal_note="Projection in PA, AP, AP_horizontal", film_column="ImageID",
)

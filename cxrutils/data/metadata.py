"""Read every variant of the NIH metadata CSV into one tidy frame.

Variants (one real-format copy of each in tests/helpers/fixtures; the README's
"Download" table): Kaggle ``Data_Entry_2017.csv`` (trailing comma in the header), NIH
``Data_Entry_2017_v2020.csv``, older zero-padded copies with ``058Y``-style ages, and
Kaggle ``sample_labels.csv``. Without any CSV, the v2020 file shipped inside
torchxrayvision is used.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS, NO_FINDING, canonical_finding

# Raw header -> tidy name. Both the bracketed v2017/v2020 spelling and the
# sample_labels.csv spelling of the geometry columns are listed.
RAW_TO_TIDY: dict[str, str] = {
    "Image Index": "image",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age_years",
    "Patient Gender": "sex",
    "View Position": "view",
    "OriginalImage[Width": "width",
    "Height]": "height",
    "OriginalImagePixelSpacing[x": "pixel_spacing_x",
    "y]": "pixel_spacing_y",
    "OriginalImageWidth": "width",
    "OriginalImageHeight": "height",
    "OriginalImagePixelSpacing_x": "pixel_spacing_x",
    "OriginalImagePixelSpacing_y": "pixel_spacing_y",
}
REQUIRED_TIDY = (
    "image",
    "finding_labels",
    "follow_up",
    "patient_id",
    "age_years",
    "sex",
    "view",
    "width",
    "height",
    "pixel_spacing_x",
    "pixel_spacing_y",
)
TIDY_COLUMNS: tuple[str, ...] = (
    "image",
    "patient_id",
    "follow_up",
    "age_years",
    "age_implausible",
    "sex",
    "view",
    "width",
    "height",
    "pixel_spacing_x",
    "pixel_spacing_y",
    *FINDINGS,
    "no_finding",
)
MAX_PLAUSIBLE_AGE_YEARS = 120.0
_AGE_UNIT_DAYS = {"Y": 365.25, "M": 365.25 / 12, "D": 1.0}
_AGE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMD]?)\s*$", re.IGNORECASE)

SHIPPED_METADATA_NAME = "Data_Entry_2017_v2020.csv.gz"
SHIPPED_BBOX_NAME = "BBox_List_2017.csv.gz"
# Majkowska et al., Radiology 2019: radiologist-adjudicated labels for 4,376 NIH films.
SHIPPED_GOOGLE_LABELS_NAME = "google2019_nih-chest-xray-labels.csv.gz"


class MetadataError(ValueError):
    """A metadata file does not have the shape of any known NIH variant."""


def shipped_data_file(name: str) -> Path:
    """Path of a data file inside the installed torchxrayvision wheel.

    Found without importing torchxrayvision, which would import torch.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed, so its shipped NIH metadata is "
            "unavailable; run `make test` or `pip install -e .` to install it"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the torchxrayvision install")
    return path


def parse_age_years(raw: pd.Series, source: str) -> pd.Series:
    """Ages as float years from integers or strings such as ``058Y``/``011M``/``005D``."""
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype(float)
    text = raw.astype(str)
    parts = text.str.extract(_AGE_PATTERN)
    unparsable = parts[0].isna()
    if unparsable.any():
        examples = ", ".join(repr(v) for v in text[unparsable].unique()[:5])
        raise MetadataError(f"{source}: unreadable 'Patient Age' values: {examples}")
    unit_days = parts[1].str.upper().replace("", "Y").map(_AGE_UNIT_DAYS)
    return parts[0].astype(float) * unit_days / _AGE_UNIT_DAYS["Y"]


def encode_findings(finding_labels: pd.Series, source: str) -> pd.DataFrame:
    """One 0/1 column per finding (``FINDINGS`` order) plus ``no_finding``.

    Vectorised: a one-hot scatter over the exploded labels (pandas' crosstab aggregated
    141k groups in Python, three seconds of every notebook's start on the full dataset).
    """
    label_lists = finding_labels.astype(str).str.split("|")
    labels_per_row = label_lists.str.len().to_numpy()
    row_of_label = np.repeat(np.arange(len(finding_labels)), labels_per_row)
    exploded = label_lists.explode().str.strip()
    unknown = sorted(set(exploded) - set(FINDINGS) - {NO_FINDING})
    if unknown:
        first_row = exploded[exploded.isin(unknown)].index[0]
        # canonical_finding raises the message users see for one unknown label.
        try:
            canonical_finding(unknown[0])
        except ValueError as err:
            raise MetadataError(f"{source}: row {first_row + 2} has {err}; all unknown labels: {unknown}") from None
    is_no_finding = exploded.to_numpy() == NO_FINDING
    has_no_finding = np.bincount(row_of_label[is_no_finding], minlength=len(finding_labels)) > 0
    mixed = has_no_finding & (labels_per_row > 1)
    if mixed.any():
        row = int(np.flatnonzero(mixed)[0]) + 2
        raise MetadataError(f"{source}: row {row} combines '{NO_FINDING}' with findings")
    codes = pd.Index(FINDINGS).get_indexer(exploded.to_numpy())  # No Finding: -1
    onehot = np.zeros((len(finding_labels), len(FINDINGS)), dtype=np.uint8)
    onehot[row_of_label[codes >= 0], codes[codes >= 0]] = 1
    table = pd.DataFrame(onehot, index=finding_labels.index, columns=list(FINDINGS))
    table["no_finding"] = (onehot.sum(axis=1) == 0).astype(np.uint8)
    return table


def read_metadata(csv_path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read an NIH metadata CSV (any variant) into the tidy frame.

    ``csv_path=None`` reads the v2020 metadata shipped inside torchxrayvision.
    The frame's ``attrs["source"]`` names the file it came from.
    """
    if csv_path is None:
        return _read_shipped_metadata().copy()
    return _read_metadata_file(Path(csv_path))


@functools.lru_cache(maxsize=1)
def _read_shipped_metadata() -> pd.DataFrame:
    # 112k rows take seconds to parse; the shipped file never changes within a process.
    return _read_metadata_file(shipped_data_file(SHIPPED_METADATA_NAME))


def _read_metadata_file(path: Path) -> pd.DataFrame:
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata CSV not found: {path}")
    # Strings first: older copies zero-pad IDs and write ages as '058Y'.
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw = _drop_trailing_empty_columns(raw, source)
    unexpected = [c for c in raw.columns if c not in RAW_TO_TIDY]
    if unexpected:
        raise MetadataError(
            f"{source}: unexpected column(s) {unexpected}; known NIH columns are {sorted(set(RAW_TO_TIDY))}"
        )
    frame = raw.rename(columns=RAW_TO_TIDY)
    missing = [c for c in REQUIRED_TIDY if c not in frame.columns]
    if missing:
        raw_names = [k for k, v in RAW_TO_TIDY.items() if v in missing]
        raise MetadataError(f"{source}: missing required column(s) {raw_names}")
    return _tidy(frame, source)


def _drop_trailing_empty_columns(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Kaggle's header ends with a comma, which pandas reads as 'Unnamed: N'."""
    unnamed = [c for c in raw.columns if str(c).startswith("Unnamed:")]
    for column in unnamed:
        if (raw[column].str.strip() != "").any():
            raise MetadataError(f"{source}: column {column!r} has no header but holds values")
    return raw.drop(columns=unnamed)


def _tidy(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    duplicated = frame["image"][frame["image"].duplicated()]
    if not duplicated.empty:
        raise MetadataError(f"{source}: image(s) listed twice: {list(duplicated[:5])}")
    tidy = pd.DataFrame(index=frame.index)
    tidy["image"] = frame["image"].str.strip()
    tidy["patient_id"] = _integers(frame["patient_id"], "Patient ID", source)
    tidy["follow_up"] = _integers(frame["follow_up"], "Follow-up #", source)
    tidy["age_years"] = parse_age_years(frame["age_years"], source)
    # Flag, never fix: the Kaggle copy has 16 ages of 148-414 years.
    tidy["age_implausible"] = tidy["age_years"] > MAX_PLAUSIBLE_AGE_YEARS
    tidy["sex"] = frame["sex"].str.strip().astype("category")
    tidy["view"] = frame["view"].str.strip().astype("category")
    for column in ("width", "height"):
        tidy[column] = _integers(frame[column], column, source)
    for column in ("pixel_spacing_x", "pixel_spacing_y"):
        tidy[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
    findings = encode_findings(frame["finding_labels"], source)
    tidy = pd.concat([tidy, findings], axis=1)[list(TIDY_COLUMNS)]
    tidy.attrs["source"] = source
    return tidy.reset_index(drop=True)


def _integers(values: pd.Series, column: str, source: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != np.floor(numbers))
    if bad.any():
        examples = ", ".join(repr(v) for v in values[bad].unique()[:5])
        raise MetadataError(f"{source}: non-integer {column!r} values: {examples}")
    return numbers.astype(np.int64)


AGE_BAND_EDGES: tuple[float, ...] = (40.0, 60.0, 80.0)


def age_band(age_years: Any, edges: Sequence[float] = AGE_BAND_EDGES) -> pd.Series:
    """Ages in bands ``<40``, ``40-59``, ``60-79``, ``80+`` (for the default edges), ordered.

    Ages above ``MAX_PLAUSIBLE_AGE_YEARS`` (the Kaggle file's 148-414) are data errors
    and get no band (NaN), as do missing ages.
    """
    ages = pd.Series(age_years, dtype="float64")
    edges = [float(e) for e in edges]
    middle = [f"{low:g}-{high - 1:g}" for low, high in pairwise(edges)]
    labels = [f"<{edges[0]:g}", *middle, f"{edges[-1]:g}+"]
    plausible = ages.where(ages <= MAX_PLAUSIBLE_AGE_YEARS)
    return pd.cut(plausible, bins=[-np.inf, *edges, np.inf], right=False, labels=labels)

"""What the five external collections share: the common frame of films, the reading of a root, the counts.

Every collection is read into one frame, a row per film:

- ``collection``, ``film`` (the collection's own id of the film: CheXpert's ``Path``,
  PadChest's ``ImageID``, VinDr's ``image_id``, RSNA's ``patientId``, SIIM's ``ImageId``),
  ``source_split`` (the collection's file the row came from: ``train`` or ``valid``);
- ``path`` (where the collection's layout puts the film, as text: "" when not looked for or
  not found where the layout cannot say, SIIM) and ``present`` (a regular file is there);
- ``patient_id``, ``study_id``, ``sex`` (M / F / ""), ``age_years`` (float, NaN unknown), ``view``
  (as the collection writes it), ``frontal`` (by the collection's own view field) and
  ``labelled`` (False where the collection gives the film no labels at all);
- the 14 NIH findings (``FINDINGS``) as float: 1, 0, or NaN (not available in the collection,
  an uncertain label the policy excludes, or a film without labels);
- the collection's own label columns as ``raw:<name>`` (as published, or per-class reader
  counts for VinDr), so nothing the map leaves out is lost.

Names stay text: a film id or path holding odd characters is never interpreted, only compared
and shown (through ``cxrutils.text.printable`` when written).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.data.external.label_maps import (
    DEFAULT_MIN_READERS,
    DEFAULT_UNCERTAIN_POLICY,
    UNCERTAIN_POLICIES,
    LabelMap,
)
from cxrutils.data.film_files import ImageReadError, not_a_regular_file, open_film_file
from cxrutils.labels import FINDINGS

RAW_PREFIX = "raw:"
BASE_COLUMNS: tuple[str, ...] = ("collection", "film", "source_split", "path", "present", "patient_id", "study_id",
                                 "sex", "age_years", "view", "frontal", "labelled")
# What a DICOM header's view (cxrutils.data.dicom.DicomHeader.view) must be for a film to stay: a header that does
# not say is kept, since VinDr, RSNA and SIIM hold frontal films by construction.
FRONTAL_HEADER_VIEWS = ("PA", "AP", "")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25, "": 1.0}


class ExternalDataError(ValueError):
    """A collection's root or metadata does not have the collection's published shape."""


@dataclass(frozen=True)
class ExternalOptions:
    """The label settings: CheXpert's uncertain policy and VinDr's reader rule (each ignored elsewhere)."""

    uncertain: str = DEFAULT_UNCERTAIN_POLICY  # CheXpert -1.0: "exclude" (NaN), "positive" (U-Ones), "negative"
    min_readers: int = DEFAULT_MIN_READERS  # VinDr: positive when at least this many readers drew the class
    read_headers: bool = True  # VinDr, RSNA, SIIM: patient, sex, age and view from each present film's DICOM header

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain={self.uncertain!r}; expected one of {', '.join(UNCERTAIN_POLICIES)}")
        if not isinstance(self.min_readers, int) or self.min_readers < 1:
            raise ValueError(f"min_readers={self.min_readers!r}; expected a whole number of readers, 1 or more")


@dataclass
class ExternalFilms:
    """A collection read from a root (or from the shipped metadata alone): frontal films, labels, what is missing."""

    collection: str
    label_map: LabelMap
    options: ExternalOptions
    metadata_files: tuple[Path, ...]
    films: pd.DataFrame  # the frontal films, listed or found (the common frame, module docstring)
    root: Path | None = None
    dropped_views: dict[str, int] = field(default_factory=dict)  # view as written -> films left out as not frontal
    missing: list[str] = field(default_factory=list)  # frontal films listed whose file is not there (film ids)
    not_files: dict[str, tuple[str, str]] = field(default_factory=dict)  # film id -> (path, what is there instead)
    header_problems: dict[str, str] = field(default_factory=dict)  # film id -> why its DICOM header was not read
    synthetic: bool = False

    @property
    def present(self) -> pd.DataFrame:
        """The films with a file, the ones that can be scored."""
        return self.films[self.films["present"]]

    def summary(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "films": int(len(self.films)),
            "present": int(self.films["present"].sum()),
            "missing": len(self.missing),
            "not_regular_files": len(self.not_files),
            "patients": int(self.films["patient_id"].nunique()),
            "dropped_views": dict(self.dropped_views),
            "uncertain": self.options.uncertain,
            "min_readers": self.options.min_readers,
        }


@dataclass(frozen=True)
class CollectionReader:
    """One collection: its files as published, and how its rows become the common frame."""

    name: str
    title: str
    shipped_name: str  # the file in torchxrayvision/data
    metadata_name: str  # the file as the collection publishes it, in its root
    label_map: LabelMap
    read_raw: Callable[[Path | None], pd.DataFrame]  # None: the shipped file
    to_frame: Callable[[pd.DataFrame, ExternalOptions, str], pd.DataFrame]  # raw rows, options, source_split
    metadata_files: Callable[[Path], list[tuple[Path, str]]]  # root -> [(metadata file, source_split)]
    film_paths: Callable[[Path, pd.DataFrame], pd.Series]  # root, frame -> expected path per row ("" unknown)
    dicom: bool
    frontal_note: str
    film_column: str  # the metadata column naming the film


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in BASE_COLUMNS})


def assemble(collection: str, base: dict[str, Any], labels: pd.DataFrame, raw_labels: pd.DataFrame) -> pd.DataFrame:
    """The common frame from its parts: base columns, the 14 findings (float, NaN kept), ``raw:`` columns."""
    frame = pd.DataFrame(base, index=labels.index)
    frame.insert(0, "collection", collection)
    frame["path"] = ""  # set where a root is read (ExternalFilms.films)
    frame["present"] = False
    frame = frame[list(BASE_COLUMNS)]
    findings = labels.reindex(columns=list(FINDINGS)).astype(float)
    raw = raw_labels.add_prefix(RAW_PREFIX)
    return pd.concat([frame, findings, raw], axis=1).reset_index(drop=True)


def sex_code(values: pd.Series, male: str, female: str) -> pd.Series:
    """M / F from the collection's spelling; anything else (unknown, 'O', blank) is ""."""
    text = values.astype(str).str.strip()
    return pd.Series(np.select([text == male, text == female], ["M", "F"], ""), index=values.index, dtype=object)


def age_years(values: pd.Series) -> pd.Series:
    """Ages such as '68', '043Y', '011M' as float years; blank or unreadable is NaN."""
    parts = values.astype(str).str.extract(_AGE)
    units = parts[1].fillna("").str.upper().map(_AGE_UNIT_YEARS)
    return pd.to_numeric(parts[0], errors="coerce") * units


def read_text_csv(path: Path | str, what: str, required: tuple[str, ...], **read_csv: Any) -> pd.DataFrame:
    """A collection's CSV as published: every field as text, blanks as "" (never NaN), columns checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, **read_csv)
    missing = [column for column in required if column not in raw.columns]
    if missing:
        raise ExternalDataError(f"{what} {path}: missing column(s) {missing}; it has {list(raw.columns)[:12]}")
    raw.attrs["source"] = str(path)
    return raw


def check_presence(paths: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Which expected paths are regular files (a ``stat`` each), and what stands where a film should be."""
    present = np.zeros(len(paths), dtype=bool)
    not_files: dict[int, str] = {}
    for position, path in enumerate(paths.tolist()):
        if not path:
            continue
        problem = not_a_regular_file(path)
        if problem is None:
            present[position] = True
        elif "does not exist" not in problem:
            not_files[position] = problem
    return pd.Series(present, index=paths.index), not_files


def walk_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name (without suffix) -> path of every file under ``folder`` ending in one of ``suffixes``.

    Linked folders are followed but each real folder entered once, as in ``cxrutils.data.layout.scan_images``.
    """
    found: dict[str, str] = {}
    stack, entered = [os.fspath(folder)], set()
    while stack:
        current = stack.pop()
        try:
            status = os.stat(current)
        except OSError:
            continue
        if (status.st_dev, status.st_ino) in entered:
            continue
        entered.add((status.st_dev, status.st_ino))
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_folder = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_folder = False
                if is_folder:
                    stack.append(entry.path)
                    continue
                lower = entry.name.lower()
                suffix = next((s for s in suffixes if lower.endswith(s)), None)
                if suffix is not None:
                    found.setdefault(entry.name[: -len(suffix)], entry.path)
    return found


def dicom_header_facts(path: str) -> dict[str, Any]:
    """PatientID, sex, age, StudyInstanceUID and view from one DICOM header (pixel data never read); ``ImageReadError`` if unreadable."""
    import pydicom

    from cxrutils.data.dicom import header_of

    with open_film_file(path) as handle:
        try:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        except Exception as err:  # a damaged header raises anything from InvalidDicomError to struct.error
            raise ImageReadError(path, f"not a readable DICOM header: {type(err).__name__}") from err
    header = header_of(dataset, path)
    return {
        "patient_id": str(dataset.get("PatientID", "") or "").strip(),
        "sex": {"M": "M", "F": "F"}.get(str(dataset.get("PatientSex", "") or "").strip().upper(), ""),
        "age_years": age_years(pd.Series([str(dataset.get("PatientAge", "") or "")])).iloc[0],
        "study_id": header.study_instance_uid,
        "view": header.view_position,
        "view_kind": header.view,
    }


def label_counts(films: pd.DataFrame) -> pd.DataFrame:
    """Per NIH finding: positives, negatives and excluded (NaN) films, as a report prints them."""
    values = films[list(FINDINGS)]
    return pd.DataFrame({
        "positive": (values == 1).sum(),
        "negative": (values == 0).sum(),
        "excluded": values.isna().sum(),
    }).rename_axis("finding")


def join_inside(root: Path, *parts: str) -> str:
    """``root / parts`` as text, or "" when a part could leave ``root`` (absolute, ``..``, a NUL): a name stays a name."""
    pieces: list[str] = []
    for part in parts:
        if "\x00" in part or part.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", part):
            return ""
        components = [c for c in re.split(r"[/\\]", part) if c not in ("", ".")]
        if not components or any(c == ".." for c in components):
            return ""
        pieces.extend(components)
    return os.path.join(os.fspath(root), *pieces)


def sample_whole_patients(films: pd.DataFrame, max_films: int | None, seed: int) -> pd.DataFrame:
    """Whole patients (``patient_id``) drawn at random (seeded) until ``max_films`` films; every film when None.

    A patient whose films would overshoot the cap is passed over for a smaller one, so the
    sample comes as close to the cap as whole patients allow; never a patient split in two.
    """
    if max_films is None or len(films) <= max_films:
        return films
    counts = films.groupby("patient_id", sort=True).size()
    chosen, total = [], 0
    for patient in np.random.default_rng(seed).permutation(counts.index.to_numpy()):
        if total + counts[patient] > max_films and chosen:
            continue
        chosen.append(patient)
        total += int(counts[patient])
        if total >= max_films:
            break
    return films[films["patient_id"].isin(chosen)]


"""Read an external collection: a real root in its published layout, or the metadata shipped in torchxrayvision.

``load_external(collection, root)`` finds the collection's metadata where it publishes it,
reads it as published, maps its labels (``label_maps``), keeps the frontal films by the
collection's own view field, and looks for each film where the layout puts it: a film
listed but not there is listed in ``missing`` (never assumed present), and a path where
something other than a regular file stands is listed in ``not_files``. For the DICOM
collections (VinDr, RSNA, SIIM) each present film's header is read (pixel data never) for
the patient, sex, age and view, unless ``read_headers=False``.

``shipped_films(collection)`` is the same frame from the shipped metadata alone (no root,
no film present): the full-size label counts, and the "metadata-only" mode of a report.

Patients stay whole: nothing here splits a collection, the frontal filter drops films and
never patients, and ``patient_id`` is what any later split of the collection groups by.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pandas as pd

from cxrutils.data.dataset import SYNTHETIC_MANIFEST_NAME
from cxrutils.data.external import chexpert, padchest, rsna, siim, vindr
from cxrutils.data.external.common import (
    FRONTAL_HEADER_VIEWS,
    CollectionReader,
    ExternalDataError,
    ExternalFilms,
    ExternalOptions,
    check_presence,
    dicom_header_facts,
)
from cxrutils.data.external.label_maps import LabelMap
from cxrutils.data.film_files import ImageReadError
from cxrutils.progress import progress_bar

READERS: dict[str, CollectionReader] = {reader.name: reader for reader in (
    chexpert.READER, padchest.READER, vindr.READER, rsna.READER, siim.READER)}
COLLECTIONS: tuple[str, ...] = tuple(READERS)


def collection_reader(collection: str) -> CollectionReader:
    try:
        return READERS[collection]
    except KeyError:
        raise ValueError(f"unknown collection {collection!r}; expected one of {', '.join(COLLECTIONS)}") from None


def external_label_map(collection: str) -> LabelMap:
    """The label map of ``collection``: every NIH finding mapped, or not available with the reason."""
    return collection_reader(collection).label_map


@functools.lru_cache(maxsize=len(READERS))
def _shipped_raw(collection: str) -> pd.DataFrame:
    return collection_reader(collection).read_raw(None)


def shipped_raw(collection: str) -> pd.DataFrame:
    """The collection's metadata shipped in torchxrayvision, as published (text fields; read once per process)."""
    return _shipped_raw(collection).copy()


def shipped_films(collection: str, options: ExternalOptions = ExternalOptions()) -> ExternalFilms:
    """The frontal films of the shipped metadata with their labels; no root, so no film is present."""
    reader = collection_reader(collection)
    raw = shipped_raw(collection)
    frame = reader.to_frame(raw, options, "train")
    films, dropped = _frontal(frame)
    return ExternalFilms(collection=collection, label_map=reader.label_map, options=options,
                         metadata_files=(Path(raw.attrs.get("source", reader.shipped_name)),), films=films,
                         dropped_views=dropped)


def load_external(collection: str, root: str | os.PathLike[str],
                  options: ExternalOptions = ExternalOptions()) -> ExternalFilms:
    """A collection's root in its published layout (module docstring)."""
    reader = collection_reader(collection)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{reader.title} root {root} is not a folder")
    files = reader.metadata_files(root)
    frames = []
    for path, split in files:
        frames.append(reader.to_frame(reader.read_raw(path), options, split))
    frame = pd.concat(frames, ignore_index=True)
    twice = frame["film"][frame["film"].duplicated()]
    if not twice.empty:
        raise ExternalDataError(f"{', '.join(str(p) for p, _ in files)}: film(s) listed twice: {list(twice[:5])}")
    frame, dropped = _frontal(frame)
    frame["path"] = reader.film_paths(root, frame)
    present, not_regular = check_presence(frame["path"])
    frame["present"] = present
    not_files = {frame["film"].iloc[position]: (frame["path"].iloc[position], problem)
                 for position, problem in not_regular.items()}
    header_problems: dict[str, str] = {}
    if reader.dicom and options.read_headers:
        frame, header_problems = _with_headers(frame, reader.title)
        frame, dropped_by_header = _frontal(frame)
        for view, count in dropped_by_header.items():
            dropped[view] = dropped.get(view, 0) + count
    missing = frame.loc[~frame["present"] & ~frame["film"].isin(list(not_files)), "film"].tolist()
    return ExternalFilms(collection=collection, label_map=reader.label_map, options=options,
                         metadata_files=tuple(path for path, _ in files), films=frame, root=root,
                         dropped_views=dropped, missing=missing, not_files=not_files,
                         header_problems=header_problems, synthetic=_synthetic(root))


def _frontal(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frontal films, and how many of each other view were left out."""
    frontal = frame["frontal"].astype(bool)
    dropped = frame.loc[~frontal, "view"].replace("", "(not stated)").value_counts()
    return frame[frontal].reset_index(drop=True), {str(view): int(count) for view, count in dropped.items()}


def _with_headers(frame: pd.DataFrame, title: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Patient, study (where the CSV gives none), sex, age and view from each present film's DICOM header; a header's non-frontal view unsets frontal."""
    frame = frame.copy()
    problems: dict[str, str] = {}
    positions = [position for position, present in enumerate(frame["present"].tolist()) if present]
    columns = {name: frame.columns.get_loc(name)
               for name in ("patient_id", "study_id", "sex", "age_years", "view", "frontal")}
    for position in progress_bar(positions, desc=f"reading {title} DICOM headers", unit="film", done=False):
        film = frame["film"].iloc[position]
        try:
            facts = dicom_header_facts(frame["path"].iloc[position])
        except ImageReadError as err:
            problems[film] = err.reason
            continue
        if facts["patient_id"]:
            frame.iat[position, columns["patient_id"]] = facts["patient_id"]
        if facts["study_id"] and not frame.iat[position, columns["study_id"]]:
            frame.iat[position, columns["study_id"]] = facts["study_id"]
        if facts["sex"]:
            frame.iat[position, columns["sex"]] = facts["sex"]
        if pd.notna(facts["age_years"]):
            frame.iat[position, columns["age_years"]] = facts["age_years"]
        if facts["view"]:
            frame.iat[position, columns["view"]] = facts["view"]
        if facts["view_kind"] not in FRONTAL_HEADER_VIEWS:
            frame.iat[position, columns["frontal"]] = False
    return frame, problems


def _synthetic(root: Path) -> bool:
    manifest = root / SYNTHETIC_MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("synthetic"))
    except (ValueError, OSError):
        return False

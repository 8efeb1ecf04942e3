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
- **Masks** (``masks``, ``decode_rle``, ``film_mask``): each row's ``EncodedPixels`` is the
  challenge's *relative* run-length encoding on the 1024 x 1024 film in *column-major* order:
  pairs ``start length`` where each start counts the pixels skipped since the end of the
  previous run (the first, from pixel 0), the pixels numbered down each column, then column
  by column. That is the challenge's ``mask_functions.rle2mask`` (runs on a flat array,
  reshaped and transposed) and TorchXRayVision's ``SIIM_Pneumothorax_Dataset``'s copy of it
  (``rle2mask(...).T``; it keeps only a film's last component, where here a film's region is
  the union of its components, as the challenge scored one mask per film). A component that
  is not whole numbers in pairs, or whose runs overrun the image, is set apart and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
from cxrutils.data.external.vindr import region_frame, set_apart_frame
from cxrutils.data.metadata import shipped_data_file

SHIPPED_NAME = "siim-pneumothorax-train-rle.csv.gz"
METADATA_NAME = "train-rle.csv"
IMAGES_FOLDER = "dicom-images-train"
SUFFIX = ".dcm"
NO_MASK = "-1"
FRAME_PX = 1024  # the challenge's films, and so its masks' frame
REGION_RULE = ("one region per film: the union of its mask components (the challenge scored one mask per film); "
               "every film with a mask is positive for NIH Pneumothorax")


def rle_runs(encoded: str, height: int = FRAME_PX, width: int = FRAME_PX) -> tuple[np.ndarray, np.ndarray]:
    """(absolute starts, lengths) of the runs of one relative, column-major RLE; ``ValueError`` saying what is wrong."""
    tokens = encoded.split()
    if not tokens:
        raise ValueError("no runs (a film without a mask is written -1)")
    if not all(token.isdigit() and token.isascii() for token in tokens):
        raise ValueError("not whole non-negative numbers")
    if len(tokens) % 2:
        raise ValueError(f"an odd count of numbers ({len(tokens)}): runs come as start-length pairs")
    if max(map(len, tokens)) > 12:
        raise ValueError("a number too large for any image")
    values = np.array(tokens).astype(np.int64)
    offsets, lengths = values[0::2], values[1::2]
    if (lengths <= 0).any():
        raise ValueError("a run of length 0")
    ends = np.cumsum(offsets + lengths)  # each start counts from the end of the previous run
    if ends[-1] > height * width:
        raise ValueError(f"its runs end at pixel {int(ends[-1]):,}, beyond the {height} x {width} image "
                         f"({height * width:,} pixels)")
    return ends - lengths, lengths


def decode_rle(encoded: str, height: int = FRAME_PX, width: int = FRAME_PX) -> np.ndarray:
    """One component's mask, bool (height, width); ``ValueError`` for a malformed one (``rle_runs``)."""
    starts, lengths = rle_runs(encoded, height, width)
    change = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(change, starts, 1)
    np.add.at(change, starts + lengths, -1)
    flat = np.cumsum(change[:-1]) > 0
    return flat.reshape((height, width), order="F")  # pixels numbered down each column first


def film_mask(encodings: Sequence[str] | str, height: int = FRAME_PX, width: int = FRAME_PX) -> np.ndarray:
    """The union of a film's components (a sequence, or ``masks``' ``encodings`` text joined by "|")."""
    parts = encodings.split("|") if isinstance(encodings, str) else list(encodings)
    mask = np.zeros((height, width), dtype=bool)
    for encoded in parts:
        mask |= decode_rle(encoded, height, width)
    return mask


def _bounding_box(encodings: list[str]) -> tuple[float, float, float, float]:
    """x, y, w, h of the union of valid components, from the runs alone (no mask drawn)."""
    starts, lengths = zip(*(rle_runs(encoded) for encoded in encodings))
    first, last = np.concatenate(starts), np.concatenate(starts) + np.concatenate(lengths) - 1
    columns = np.concatenate([first // FRAME_PX, last // FRAME_PX])
    one_column = first // FRAME_PX == last // FRAME_PX
    # A run inside one column covers its own rows; one that wraps into the next column covers every row.
    top = np.where(one_column, first % FRAME_PX, 0).min()
    bottom = np.where(one_column, last % FRAME_PX, FRAME_PX - 1).max()
    return float(columns.min()), float(top), float(columns.max() - columns.min() + 1), float(bottom - top + 1)


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


def masks(raw: pd.DataFrame, options: ExternalOptions = ExternalOptions()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(regions, set apart): one mask region per film with a valid component, for NIH Pneumothorax.

    The columns are ``vindr.REGION_COLUMNS``: ``kind`` "mask", ``encodings`` the film's valid
    components joined by "|" (``film_mask`` decodes them), ``x, y, w, h`` their bounding box,
    ``frame_width`` = ``frame_height`` = 1024, ``row`` the CSV line of the film's first
    component; and ``vindr.SET_APART_COLUMNS`` for each malformed component. ``options`` is
    unused (the same call as every collection's).
    """
    column = encoded_column(raw)
    if column is None:
        raise ExternalDataError(f"{raw.attrs.get('source', 'SIIM masks')}: no EncodedPixels column")
    findings = list(SIIM_LABEL_MAP.mapped)
    valid: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    set_apart: list[dict[str, object]] = []
    for position, (film, encoded) in enumerate(zip(raw["ImageId"].tolist(), raw[column].tolist())):
        if encoded.strip() == NO_MASK:
            continue
        try:
            rle_runs(encoded)
        except ValueError as err:
            set_apart.append({"row": position + 2, "film": film, "field": column.strip(), "value": encoded[:200],
                              "reason": str(err), "malformed": True})
            continue
        valid.setdefault(film, []).append(encoded.strip())
        first_line.setdefault(film, position + 2)
    kept = [{"film": film, "finding": finding, "source_class": "EncodedPixels", "rad_id": "", "kind": "mask",
             **dict(zip("xywh", _bounding_box(encodings))), "frame_width": float(FRAME_PX),
             "frame_height": float(FRAME_PX), "encodings": "|".join(encodings), "row": first_line[film],
             "positive": True}
            for film, encodings in valid.items() for finding in findings]
    return region_frame(kept), set_apart_frame(set_apart)


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

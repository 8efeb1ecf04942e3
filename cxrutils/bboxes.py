"""Parse ``BBox_List_2017.csv``: 984 boxes on 880 official-test images."""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import pandas as pd

from cxrutils.labels import LABEL_ALIASES, canonical_finding

BBOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
# The real header is "Image Index,Finding Label,Bbox [x,y,w,h],,," (9 fields for 6
# values), so the header is checked and then replaced rather than used.
_EXPECTED_HEADER_START = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]


# The real file spells Infiltration as "Infiltrate"; writers keep that quirk.
_REAL_SPELLING = {canonical: alias for alias, canonical in LABEL_ALIASES.items()}


class BBoxFormatError(ValueError):
    """A bounding-box file is not in the BBox_List_2017.csv format."""


def read_bbox_list(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Boxes as a frame: image, finding (canonical, Infiltrate -> Infiltration), x, y, w, h.

    Coordinates are pixels of the stored image (1024 px for the real films).
    ``.csv.gz`` is read too, as shipped inside torchxrayvision.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        text = handle.read()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise BBoxFormatError(f"{path}: file is empty")
    header = [field.strip() for field in rows[0]]
    if header[:6] != _EXPECTED_HEADER_START or any(header[6:]):
        raise BBoxFormatError(
            f"{path}: header {rows[0]} is not BBox_List_2017's 'Image Index,Finding Label,Bbox [x,y,w,h],,,'"
        )
    records = []
    for line_number, row in enumerate(rows[1:], start=2):
        values = [field.strip() for field in row]
        while values and values[-1] == "":
            values.pop()
        if not values:
            continue
        if len(values) != 6:
            raise BBoxFormatError(f"{path}:{line_number}: expected 6 fields, got {row}")
        try:
            finding = canonical_finding(values[1])
            x, y, w, h = (float(v) for v in values[2:])
        except ValueError as err:
            raise BBoxFormatError(f"{path}:{line_number}: {err}") from None
        records.append((values[0], finding, x, y, w, h))
    boxes = pd.DataFrame.from_records(records, columns=list(BBOX_COLUMNS))
    boxes.attrs["source"] = str(path)
    return boxes


def write_bbox_list(boxes: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write boxes in the exact real format, header quirk included."""
    with open(path, "w", newline="") as handle:
        handle.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        writer = csv.writer(handle, lineterminator="\n")
        for row in boxes.itertuples(index=False):
            written_label = _REAL_SPELLING.get(row.finding, row.finding)
            writer.writerow([row.image, written_label, row.x, row.y, row.w, row.h])

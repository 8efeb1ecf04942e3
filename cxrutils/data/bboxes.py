"""Parse ``BBox_List_2017.csv``: 984 boxes on 880 official-test images.

The boxes are in the 1024-px frame of the original NIH PNGs (``BBOX_FRAME_PX``),
whatever size the films a user trains from are stored at: many work from the
512, 256 or 224 px releases or their own resized copies. ``boxes_in_stored_frame``
maps them onto the films as stored and says which fall outside their film.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import pandas as pd

from cxrutils.labels import LABEL_ALIASES, canonical_finding

BBOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
# Every NIH PNG is 1024 x 1024, and BBox_List_2017.csv is in those pixels.
BBOX_FRAME_PX = 1024
# A box may poke out of its film by this share of the film's side (annotation jitter) and still count as on it.
_OUTSIDE_TOLERANCE = 0.01
# The real header is "Image Index,Finding Label,Bbox [x,y,w,h],,," (9 fields for 6
# values), so the header is checked and then replaced rather than used.
_EXPECTED_HEADER_START = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]


# The real file spells Infiltration as "Infiltrate"; writers keep that quirk.
_REAL_SPELLING = {canonical: alias for alias, canonical in LABEL_ALIASES.items()}


class BBoxFormatError(ValueError):
    """A bounding-box file is not in the BBox_List_2017.csv format."""


def read_bbox_list(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Boxes as a frame: image, finding (canonical, Infiltrate -> Infiltration), x, y, w, h.

    Coordinates are as written: pixels of the 1024-px frame of the original NIH PNGs
    (``BBOX_FRAME_PX``), not of the films as a user may have stored them.
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


def boxes_in_stored_frame(boxes: pd.DataFrame, image_sizes: pd.DataFrame) -> pd.DataFrame:
    """``boxes`` mapped from the 1024-px NIH frame onto each film as stored, with an ``outside`` flag.

    ``image_sizes`` is indexed by image with the stored files' ``width`` and ``height``
    (a 256 px release gives 256 x 256: every coordinate is scaled by 256 / 1024). A box
    that still reaches beyond its film (by more than 1% of its side) is ``outside``: the
    film was cropped, or is not the NIH film the box was drawn on. Callers report those
    boxes rather than score them as misses. A box on an image without a size is an error.
    """
    missing = pd.Index(boxes["image"]).difference(image_sizes.index)
    if len(missing):
        raise KeyError(f"no stored size for {len(missing)} boxed images, e.g. {missing[0]}")
    width = image_sizes["width"].reindex(boxes["image"]).to_numpy(dtype=float)
    height = image_sizes["height"].reindex(boxes["image"]).to_numpy(dtype=float)
    scale_x, scale_y = width / BBOX_FRAME_PX, height / BBOX_FRAME_PX
    stored = boxes.copy()
    stored["x"] = boxes["x"].to_numpy(dtype=float) * scale_x
    stored["y"] = boxes["y"].to_numpy(dtype=float) * scale_y
    stored["w"] = boxes["w"].to_numpy(dtype=float) * scale_x
    stored["h"] = boxes["h"].to_numpy(dtype=float) * scale_y
    slack_x, slack_y = _OUTSIDE_TOLERANCE * width, _OUTSIDE_TOLERANCE * height
    stored["outside"] = (
        (stored["x"] < -slack_x)
        | (stored["y"] < -slack_y)
        | (stored["x"] + stored["w"] > width + slack_x)
        | (stored["y"] + stored["h"] > height + slack_y)
        | (stored["w"] <= 0)
        | (stored["h"] <= 0)
    ).to_numpy()
    return stored


def to_bbox_frame(boxes: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """Boxes drawn on square films of ``image_size`` px, rescaled into the 1024-px NIH frame (for writers)."""
    scale = BBOX_FRAME_PX / image_size
    framed = boxes.copy()
    for column in ("x", "y", "w", "h"):
        framed[column] = boxes[column].to_numpy(dtype=float) * scale
    return framed

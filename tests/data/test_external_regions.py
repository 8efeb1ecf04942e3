"""The regions the external collections publish: VinDr-CXR's and RSNA's boxes, SIIM-ACR's run-length-encoded masks.

Each reader is checked against an independent reading written here: the ``csv`` module on the
shipped rows for the box counts, and a pixel-by-pixel decoder of the challenge's relative,
column-major RLE (with its encoder) for the masks.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from cxrutils.data.external import ExternalOptions, rsna, shipped_raw, siim, vindr
from cxrutils.data.metadata import shipped_data_file

VINDR_FINDINGS = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural effusion",
                  "Infiltration": "Infiltration", "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass",
                  "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Fibrosis": "Pulmonary fibrosis",
                  "Pleural_Thickening": "Pleural thickening"}


# --------------------------------------------------------------------------- RLE, from the definition


def decode_by_definition(encoded: str, height: int, width: int) -> np.ndarray:
    """Pixel by pixel: each start counts from the end of the previous run; pixel k is row k % height, column k // height."""
    mask = np.zeros((height, width), dtype=bool)
    numbers = [int(token) for token in encoded.split()]
    position = 0
    for offset, length in zip(numbers[0::2], numbers[1::2]):
        position += offset
        for pixel in range(position, position + length):
            mask[pixel % height, pixel // height] = True
        position += length
    return mask


def encode_by_definition(mask: np.ndarray) -> str:
    """The challenge's encoder: walk each column top to bottom, column by column; starts relative to the last run's end."""
    flat = [bool(mask[row, col]) for col in range(mask.shape[1]) for row in range(mask.shape[0])]
    numbers, last_end, k = [], 0, 0
    while k < len(flat):
        if flat[k]:
            start = k
            while k < len(flat) and flat[k]:
                k += 1
            numbers += [start - last_end, k - start]
            last_end = k
        else:
            k += 1
    return " ".join(str(n) for n in numbers)


def kaggle_rle2mask_transposed(encoded: str, width: int, height: int) -> np.ndarray:
    """The challenge's mask_functions.rle2mask as TorchXRayVision copies it, then ``.T`` as both use it."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in encoded.split()])
    current = 0
    for start, length in zip(array[0::2], array[1::2]):
        current += start
        mask[current : current + length] = 1
        current += length
    return mask.reshape(width, height).T.astype(bool)


def test_a_known_shape_on_a_non_square_image_round_trips_in_the_published_format():
    height, width = 7, 5  # not square: rows and columns cannot be confused
    mask = np.zeros((height, width), dtype=bool)
    mask[1:4, 1] = True  # a vertical bar in column 1
    mask[6, 0:4] = True  # a bottom row: runs that wrap from one column's end into the next
    mask[0, 4] = True
    encoded = encode_by_definition(mask)
    # Column 0: row 6 only (pixel 6); column 1: rows 1-3 (pixels 8-10) and 6 (13); ...
    assert encoded.split()[:4] == ["6", "1", "1", "3"]
    assert np.array_equal(siim.decode_rle(encoded, height, width), mask)
    assert np.array_equal(decode_by_definition(encoded, height, width), mask)
    other = np.zeros_like(mask)
    other[2:5, 3:5] = True  # a second component overlapping nothing above: the film's region is the union
    assert np.array_equal(siim.film_mask([encoded, encode_by_definition(other)], height, width), mask | other)
    assert np.array_equal(siim.film_mask(f"{encoded}|{encode_by_definition(other)}", height, width), mask | other)


def test_random_masks_round_trip_and_match_the_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(3, 40, size=2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.6)
        if not mask.any():
            continue
        encoded = encode_by_definition(mask)
        assert np.array_equal(siim.decode_rle(encoded, height, width), mask)


def test_shipped_masks_decode_as_the_challenges_own_decoder_and_their_boxes_bound_them():
    raw = shipped_raw("siim")
    column = siim.encoded_column(raw)
    encoded = raw.loc[raw[column].str.strip() != "-1", column].head(12).tolist()
    for text in encoded:
        mine = siim.decode_rle(text)
        assert np.array_equal(mine, kaggle_rle2mask_transposed(text, 1024, 1024))
        assert np.array_equal(mine, decode_by_definition(text, 1024, 1024))
    regions, set_apart = siim.masks(raw.head(400))
    assert set_apart.empty and (regions["kind"] == "mask").all() and (regions["finding"] == "Pneumothorax").all()
    for _, region in regions.head(10).iterrows():
        union = siim.film_mask(region["encodings"])
        rows, cols = np.nonzero(union)
        assert (region["x"], region["y"]) == (cols.min(), rows.min())
        assert (region["w"], region["h"]) == (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)


def test_siim_gives_one_region_per_film_with_a_mask_as_an_independent_count():
    raw = shipped_raw("siim")
    regions, set_apart = siim.masks(raw)
    with gzip.open(shipped_data_file(siim.SHIPPED_NAME), "rt", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    with_mask = {image for image, encoded in rows if encoded.strip() != "-1"}
    components = Counter(image for image, encoded in rows if encoded.strip() != "-1")
    assert set_apart.empty and len(regions) == len(with_mask) and set(regions["film"]) == with_mask
    joined = regions.set_index("film")["encodings"]
    for film in list(with_mask)[:200]:
        assert joined[film].count("|") + 1 == components[film]


def test_malformed_masks_are_set_apart_counted_and_stay_text():
    raw = pd.DataFrame({"ImageId": ["a", "a", "b", "c", "d", "e", "f", "g"],
                        " EncodedPixels": ["10 5", "1048570 10", "=1+1", "3 4 5", " -1", "", "1 0", "0 2 3 2"]})
    regions, set_apart = siim.masks(raw)
    assert list(regions["film"]) == ["a", "g"] and regions["encodings"].tolist() == ["10 5", "0 2 3 2"]
    reasons = dict(zip(set_apart["value"], set_apart["reason"]))
    assert "beyond the 1024 x 1024 image" in reasons["1048570 10"]
    assert reasons["=1+1"] == "not whole non-negative numbers" and "odd count" in reasons["3 4 5"]
    assert "no runs" in reasons[""] and "length 0" in reasons["1 0"]
    assert set_apart["malformed"].all() and len(set_apart) == 5
    assert set_apart.loc[set_apart["film"] == "b", "row"].item() == 4  # the CSV line (header is line 1)
    assert all(isinstance(value, str) for value in set_apart["value"])
    with pytest.raises(ValueError, match="beyond"):
        siim.decode_rle("1048570 10")


# --------------------------------------------------------------------------- boxes, counted with the csv module


def _vindr_rows() -> list[dict[str, str]]:
    with gzip.open(shipped_data_file(vindr.SHIPPED_NAME), "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def test_vindr_boxes_per_finding_equal_an_independent_count_of_the_shipped_rows():
    rows = _vindr_rows()
    readers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        readers[(row["image_id"], row["class_name"])].add(row["rad_id"])
    for min_readers in (1, 2):
        expected_positive, expected_negative = Counter(), Counter()
        for row in rows:
            if row["x_min"] == "":
                continue
            positive = len(readers[(row["image_id"], row["class_name"])]) >= min_readers
            for finding, class_name in VINDR_FINDINGS.items():
                if row["class_name"] == class_name:
                    (expected_positive if positive else expected_negative)[finding] += 1
        regions, set_apart = vindr.boxes(shipped_raw("vindr"), ExternalOptions(min_readers=min_readers))
        got = regions.groupby(["finding", "positive"]).size()
        assert {f: int(got.get((f, True), 0)) for f in VINDR_FINDINGS} == dict(expected_positive)
        assert {f: int(got.get((f, False), 0)) for f in VINDR_FINDINGS} == {f: expected_negative[f]
                                                                            for f in VINDR_FINDINGS}
        unmapped = sum(1 for row in rows if row["x_min"] != "" and row["class_name"] not in VINDR_FINDINGS.values())
        assert len(set_apart) == unmapped and not set_apart["malformed"].any()
    # Each box keeps its reader and its coordinates as written.
    first = next(row for row in rows if row["class_name"] == "Pneumothorax")
    box = regions[(regions["film"] == first["image_id"]) & (regions["rad_id"] == first["rad_id"])
                  & (regions["finding"] == "Pneumothorax")].iloc[0]
    assert (box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]) == tuple(
        float(first[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
    assert np.isnan(box["frame_width"])  # the film's own frame


def test_rsna_boxes_equal_an_independent_count_of_the_shipped_rows():
    with zipfile.ZipFile(shipped_data_file(rsna.SHIPPED_NAME)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".csv")]
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open(name), encoding="utf-8", newline="")))
    expected = Counter(row["patientId"] for row in rows if row["Target"] == "1" and row["x"] != "")
    regions, set_apart = rsna.boxes(shipped_raw("rsna"))
    assert set_apart.empty and Counter(regions["film"]) == expected
    assert (regions["finding"] == "Pneumonia").all() and (regions["frame_width"] == 1024).all()
    first = next(row for row in rows if row["Target"] == "1")
    box = regions[regions["film"] == first["patientId"]].iloc[0]
    assert (box["x"], box["y"], box["w"], box["h"]) == tuple(float(first[c]) for c in ("x", "y", "width", "height"))


def test_hostile_and_malformed_box_rows_are_counted_not_crashing_and_stay_text():
    vindr_raw = pd.DataFrame([
        ["f1", "=1+1", "0", "R1", "1", "2", "30", "40"],
        ["f1", "Cardiomegaly", "3", "R1", "ten", "2", "30", "40"],
        ["f1", "Cardiomegaly", "3", "R2", "10", "2", "5", "40"],
        ["f1", "Cardiomegaly", "3", "R3", "-4", "2", "30", "40"],
        ["f1", "Cardiomegaly", "3", "R4", "inf", "2", "30", "40"],
        ["f1", "Cardiomegaly", "3", "R5", "1", "2", "30", "40"],
        ["f2", "No finding", "14", "R1", "", "", "", ""],
        ["f2", "Cardiomegaly", "3", "R2", "", "", "", ""],
    ], columns=list(vindr.REQUIRED))
    regions, set_apart = vindr.boxes(vindr_raw, ExternalOptions(min_readers=2))
    assert regions["rad_id"].tolist() == ["R5"] and regions["positive"].all()  # five readers drew it on f1
    reasons = dict(zip(set_apart["value"], set_apart["reason"]))
    assert reasons["=1+1"] == "not one of VinDr-CXR's 15 classes" and reasons["ten"] == "not a number"
    assert reasons["5"].startswith("an empty box") and reasons["-4"] == "negative coordinate"
    assert reasons["inf"] == "not a number" and reasons[""] == "not a number"
    assert len(set_apart) == 6 and set_apart["malformed"].all()
    assert set_apart["value"].map(type).eq(str).all() and "=1+1" in set_apart["value"].tolist()

    rsna_raw = pd.DataFrame([
        ["p1", "10", "20", "100", "200", "1"], ["p1", "=1+1", "20", "100", "200", "1"],
        ["p2", "10", "20", "100", "200", "=SUM(A1)"], ["p3", "", "", "", "", "1"],
        ["p4", "10", "20", "100", "200", "0"], ["p5", "900", "20", "300", "200", "1"],
        ["p6", "10", "20", "0", "200", "1"], ["p7", "", "", "", "", "0"],
    ], columns=list(rsna.REQUIRED))
    regions, set_apart = rsna.boxes(rsna_raw)
    assert regions["film"].tolist() == ["p1"]
    by_film = dict(zip(set_apart["film"], set_apart["reason"]))
    assert by_film == {"p1": "not a number", "p2": "Target is neither 0 nor 1", "p3": "Target 1 without a whole box",
                       "p4": "a box on a Target 0 row", "p5": "beyond the 1024-px frame",
                       "p6": "an empty box (width or height not above 0)"}
    assert set(set_apart["value"]) >= {"=1+1", "=SUM(A1)"}

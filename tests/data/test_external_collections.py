"""The five external collections: phantom roots in their published layouts, built from the shipped rows, read back.

Every count here is computed twice: by ``cxrutils.data.external`` and, independently, with
plain pandas on the CSV as the collection publishes it (the root's own file, or the shipped one).
"""

from __future__ import annotations

import ast
import gzip
import os
import re
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrutils.data.dicom import write_dicom
from cxrutils.data.external import (
    COLLECTIONS,
    LABEL_MAPS,
    ExternalOptions,
    external_label_map,
    label_counts,
    label_maps_overview,
    load_external,
    shipped_films,
)
from cxrutils.data.images import read_image
from cxrutils.data.metadata import shipped_data_file
from cxrutils.demo.external_roots import ExternalRootSpec, build_external_root
from cxrutils.labels import FINDINGS

SAMPLE_PATIENTS = 12
CHEXPERT_CSV = "CheXpert-v1.0-small/train.csv"
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")
# The columns a reader of CheXpert's paper would pick for the NIH findings, written out here and checked against the map.
CHEXPERT_COLUMNS = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
                    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation",
                    "Edema": "Edema"}
VINDR_CLASSES = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural effusion",
                 "Infiltration": "Infiltration", "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass",
                 "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Fibrosis": "Pulmonary fibrosis",
                 "Pleural_Thickening": "Pleural thickening"}
VINDR_BOX_FIELDS = ["x_min", "y_min", "x_max", "y_max"]
METADATA = {"chexpert": CHEXPERT_CSV, "padchest": PADCHEST_CSV, "vindr": "train.csv",
            "rsna": "stage_2_train_labels.csv", "siim": "train-rle.csv"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("external")
    return {collection: build_external_root(base / collection, ExternalRootSpec(collection, SAMPLE_PATIENTS, seed=3))
            for collection in COLLECTIONS}


def _plain_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------- independent counts, plain pandas


def _counts(positive: pd.Series, negative: pd.Series, excluded: pd.Series) -> tuple[int, int, int]:
    return int(positive.sum()), int(negative.sum()), int(excluded.sum())


def chexpert_expected(raw: pd.DataFrame, policy: str) -> dict[str, tuple[int, int, int]]:
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    expected = {}
    for finding, column in CHEXPERT_COLUMNS.items():
        value = frontal[column]
        ones, zeros, blank, uncertain = value == "1.0", value == "0.0", value == "", value == "-1.0"
        assert (ones | zeros | blank | uncertain).all()
        positive = ones | uncertain if policy == "positive" else ones
        negative = zeros | blank | uncertain if policy == "negative" else zeros | blank
        excluded = uncertain if policy == "exclude" else uncertain & False
        expected[finding] = _counts(positive, negative, excluded)
    return expected


def padchest_expected(raw: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    frontal = raw[raw["Projection"].isin(PADCHEST_FRONTAL)]

    def terms(text: str) -> set[str]:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return set()
        return {str(term).strip() for term in parsed if str(term).strip()} if isinstance(parsed, list) else set()

    parsed = frontal["Labels"].map(terms)
    labelled = parsed.map(lambda found: bool(found) and "exclude" not in found)
    expected = {}
    for finding in FINDINGS:
        wanted = set(LABEL_MAPS["padchest"][finding].source_terms)
        hit = parsed.map(lambda found: bool(found & wanted))
        expected[finding] = _counts(labelled & hit, labelled & ~hit, ~labelled)
    return expected


def vindr_expected(raw: pd.DataFrame, min_readers: int) -> dict[str, tuple[int, int, int]]:
    films = raw["image_id"].nunique()
    expected = {}
    for finding, class_name in VINDR_CLASSES.items():
        readers = raw[raw["class_name"] == class_name].groupby("image_id")["rad_id"].nunique()
        positive = int((readers >= min_readers).sum())
        expected[finding] = (positive, films - positive, 0)
    return expected


def rsna_expected(raw: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    target = raw.groupby("patientId")["Target"].max().astype(int)
    return {"Pneumonia": (int(target.sum()), int((target == 0).sum()), 0)}


def siim_expected(raw: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    mask = (raw[" EncodedPixels"].str.strip() != "-1").groupby(raw["ImageId"]).any()
    return {"Pneumothorax": (int(mask.sum()), int((~mask).sum()), 0)}


def observed(films: pd.DataFrame, collection: str) -> dict[str, tuple[int, int, int]]:
    counts = label_counts(films)
    return {finding: tuple(int(v) for v in counts.loc[finding]) for finding in LABEL_MAPS[collection].mapped}


def _expected_for(collection: str, raw: pd.DataFrame, options: ExternalOptions) -> dict[str, tuple[int, int, int]]:
    if collection == "chexpert":
        return chexpert_expected(raw, options.uncertain)
    if collection == "padchest":
        return padchest_expected(raw)
    if collection == "vindr":
        return vindr_expected(raw, options.min_readers)
    return rsna_expected(raw) if collection == "rsna" else siim_expected(raw)


# --------------------------------------------------------------------------- the label maps


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_every_nih_finding_is_mapped_or_has_a_reason(collection):
    label_map = external_label_map(collection)
    table = label_map.table()
    assert table["finding"].tolist() == list(FINDINGS)
    for row in table.itertuples():
        if row.status == "mapped":
            assert row.source_terms and len(row.rule_or_reason) > 20
        else:
            assert row.status == "not available" and not row.source_terms and len(row.rule_or_reason) > 20
    assert set(label_map.mapped) | set(label_map.not_available) == set(FINDINGS)


def test_the_maps_say_what_the_brief_decided():
    chexpert = LABEL_MAPS["chexpert"]
    assert {f: chexpert[f].source_terms[0] for f in chexpert.mapped} == CHEXPERT_COLUMNS
    assert {"Mass", "Nodule", "Infiltration"} <= set(chexpert.not_available)  # Lung Lesion / Lung Opacity are not them
    vindr = LABEL_MAPS["vindr"]
    assert {f: vindr[f].source_terms[0] for f in vindr.mapped} == VINDR_CLASSES
    assert vindr["Mass"].shared_with == ("Nodule",) and vindr["Nodule"].shared_with == ("Mass",)
    assert LABEL_MAPS["rsna"].mapped == ("Pneumonia",) and LABEL_MAPS["siim"].mapped == ("Pneumothorax",)
    padchest = LABEL_MAPS["padchest"]
    assert "subcutaneous emphysema" not in padchest["Emphysema"].source_terms
    assert "pseudonodule" not in padchest["Nodule"].source_terms
    with pytest.raises(ValueError, match="uncertain"):
        ExternalOptions(uncertain="maybe")
    overview = label_maps_overview()
    assert overview.loc["Effusion", "chexpert"] == "Pleural Effusion" and overview.loc["Hernia", "siim"] == "not available"
    assert (overview != "not available").sum().to_dict() == {"chexpert": 7, "padchest": 14, "vindr": 10, "rsna": 1,
                                                             "siim": 1}


def test_every_mapped_term_is_written_in_the_shipped_metadata():
    """A term spelled differently from the collection's file would map nothing, silently: each one occurs."""
    chexpert_columns = set(_plain_csv(shipped_data_file("chexpert_train.csv.gz")).columns)
    vindr_classes = set(_plain_csv(shipped_data_file("vinbigdata-train.csv.gz"))["class_name"])
    padchest_labels = pd.read_csv(shipped_data_file(PADCHEST_CSV), usecols=["Labels"], dtype=str,
                                  keep_default_na=False)["Labels"]
    padchest_terms = {term.strip() for text in padchest_labels for term in re.findall(r"'([^']*)'", text)}
    for finding in LABEL_MAPS["chexpert"].mapped:
        assert set(LABEL_MAPS["chexpert"][finding].source_terms) <= chexpert_columns
    for finding in LABEL_MAPS["vindr"].mapped:
        assert set(LABEL_MAPS["vindr"][finding].source_terms) <= vindr_classes
    for finding in LABEL_MAPS["padchest"].mapped:
        assert set(LABEL_MAPS["padchest"][finding].source_terms) <= padchest_terms, finding


# --------------------------------------------------------------------------- phantom roots, one group per collection


def _read_root_csv(collection: str, root) -> pd.DataFrame:
    return _plain_csv(root / METADATA[collection])


def _shipped_csv(collection: str) -> pd.DataFrame:
    name = {"chexpert": "chexpert_train.csv.gz", "padchest": PADCHEST_CSV, "vindr": "vinbigdata-train.csv.gz",
            "rsna": "kaggle_stage_2_train_labels.csv.zip", "siim": "siim-pneumothorax-train-rle.csv.gz"}[collection]
    return _plain_csv(shipped_data_file(name))


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_the_phantom_root_holds_real_shipped_rows_of_whole_patients_as_published(roots, collection):
    root = roots[collection]
    written = _read_root_csv(collection, root)
    shipped = _shipped_csv(collection)
    assert list(written.columns) == list(shipped.columns)
    assert len(written) > SAMPLE_PATIENTS // 2
    # Every written row is a shipped row, field for field (VinDr's box coordinates scaled onto the phantom films:
    # test_a_phantom_vindr_root_with_films_writes_each_box_scaled_inside_its_film).
    key = [column for column in shipped.columns if not (collection == "vindr" and column in VINDR_BOX_FIELDS)]
    merged = written.merge(shipped, on=key, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    if collection == "padchest":
        with gzip.open(root / PADCHEST_CSV, "rt") as handle:
            assert handle.readline().startswith(",ImageID,ImageDir,")  # the blank first header, as published
        patient = "PatientID"
    elif collection == "chexpert":
        written["patient"] = written["Path"].str.extract(r"(patient\d+)")[0]
        shipped["patient"] = shipped["Path"].str.extract(r"(patient\d+)")[0]
        patient = "patient"
    else:
        patient = {"vindr": "image_id", "rsna": "patientId", "siim": "ImageId"}[collection]
    # Whole patients: every shipped row of a sampled patient is in the root.
    of_sampled = shipped[shipped[patient].isin(set(written[patient]))]
    assert len(of_sampled) == len(written)
    assert "SYNTHETIC" in (root / "README.md").read_text()


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_the_root_reads_back_with_label_counts_equal_to_an_independent_count(roots, collection):
    root = roots[collection]
    raw = _read_root_csv(collection, root)
    policies = ("exclude", "positive", "negative") if collection == "chexpert" else ("exclude",)
    readers = (2, 1) if collection == "vindr" else (2,)
    for policy in policies:
        for min_readers in readers:
            options = ExternalOptions(uncertain=policy, min_readers=min_readers)
            films = load_external(collection, root, options)
            assert films.synthetic and films.missing == [] and films.not_files == {} and films.header_problems == {}
            assert films.films["present"].all()
            assert observed(films.films, collection) == _expected_for(collection, raw, options)
            unmapped = [f for f in FINDINGS if f not in LABEL_MAPS[collection].mapped]
            assert films.films[unmapped].isna().all().all()
    # A sample that counts nothing proves nothing: the sampler drew patients with each finding first.
    assert all(counts[0] > 0 for counts in observed(films.films, collection).values())


def test_chexpert_keeps_frontal_films_by_its_own_view_field_and_its_patients_whole(roots):
    root = roots["chexpert"]
    raw = _read_root_csv("chexpert", root)
    films = load_external("chexpert", root)
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    assert sorted(films.films["film"]) == sorted(frontal["Path"])
    assert films.dropped_views == {"Lateral": int((raw["Frontal/Lateral"] == "Lateral").sum())}
    assert films.dropped_views["Lateral"] > 0
    assert (films.films["patient_id"] == films.films["film"].str.extract(r"(patient\d+)")[0]).all()
    # The films are 8-bit JPEGs where the Path says.
    first = films.films.iloc[0]
    assert first["path"].endswith(first["film"].split("/", 1)[1])
    with Image.open(first["path"]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "L", (64, 64))


def test_chexpert_uncertain_policies_move_only_the_uncertain_films(roots):
    root = roots["chexpert"]
    by_policy = {policy: load_external("chexpert", root, ExternalOptions(uncertain=policy)).films
                 for policy in ("exclude", "positive", "negative")}
    excluded = by_policy["exclude"]["Atelectasis"].isna()
    assert excluded.any()
    assert (by_policy["positive"].loc[excluded, "Atelectasis"] == 1).all()
    assert (by_policy["negative"].loc[excluded, "Atelectasis"] == 0).all()
    for policy in ("positive", "negative"):
        assert by_policy[policy].loc[~excluded, "Atelectasis"].equals(by_policy["exclude"].loc[~excluded, "Atelectasis"])


def test_padchest_keeps_pa_ap_and_supine_films_and_reads_its_16_bit_pngs(roots):
    root = roots["padchest"]
    raw = _read_root_csv("padchest", root)
    films = load_external("padchest", root)
    assert sorted(films.films["film"]) == sorted(raw.loc[raw["Projection"].isin(PADCHEST_FRONTAL), "ImageID"])
    others = raw.loc[~raw["Projection"].isin(PADCHEST_FRONTAL), "Projection"].value_counts()
    assert films.dropped_views == {str(k): int(v) for k, v in others.items()} and others.sum() > 0
    assert (films.films["patient_id"] == raw.set_index("ImageID").loc[films.films["film"], "PatientID"].values).all()
    first = films.films.iloc[0]
    assert first["path"] == os.path.join(root, raw.set_index("ImageID").loc[first["film"], "ImageDir"], first["film"])
    with Image.open(first["path"]) as image:
        assert image.format == "PNG" and image.mode.startswith("I;16")
        assert 255 < np.asarray(image).max() <= 4095
    assert read_image(first["path"]).dtype == np.uint8


@pytest.mark.parametrize("collection", ["vindr", "rsna", "siim"])
def test_dicom_collections_read_their_films_and_headers(roots, collection):
    films = load_external(collection, roots[collection])
    assert (films.films["patient_id"] == films.films["film"]).all()  # no patient in the CSV or the phantom header
    first = films.films.iloc[0]
    film = read_image(first["path"])
    assert film.shape == (64, 64) and film.dtype == np.uint8
    if collection == "rsna":
        headers = pd.read_csv(shipped_data_file("kaggle_stage_2_train_images_dicom_headers.csv.gz"), dtype=str,
                              keep_default_na=False).set_index("PatientID").loc[films.films["film"]]
        assert films.films["view"].tolist() == headers["ViewPosition"].tolist()
        assert films.films["sex"].tolist() == headers["PatientSex"].tolist()
        assert films.films["age_years"].tolist() == headers["PatientAge"].astype(float).tolist()
    if collection == "siim":
        assert first["path"].endswith(f"{first['film']}.dcm") and "dicom-images-train" in first["path"]
        assert first["study_id"]  # from the header


@pytest.mark.parametrize("collection", ["vindr", "rsna", "siim"])
def test_a_dicom_header_that_says_lateral_drops_the_film(roots, collection, tmp_path):
    root = shutil.copytree(roots[collection], tmp_path / "root")
    films = load_external(collection, root)
    lateral = films.films.iloc[0]
    write_dicom(lateral["path"], np.zeros((64, 64), dtype=np.uint8), view="LL", extra={"PatientID": "someone"})
    again = load_external(collection, root)
    assert lateral["film"] not in set(again.films["film"]) and again.dropped_views == {"LL": 1}
    assert len(again.films) == len(films.films) - 1
    assert load_external(collection, root, ExternalOptions(read_headers=False)).dropped_views == {}


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_a_missing_film_is_listed_and_what_stands_in_its_place_is_named(roots, collection, tmp_path):
    root = shutil.copytree(roots[collection], tmp_path / "root")
    films = load_external(collection, root).films
    gone, folder = films.iloc[0], films.iloc[1]
    os.remove(gone["path"])
    os.remove(folder["path"])
    os.mkdir(folder["path"])
    again = load_external(collection, root)
    if collection == "siim":  # found by a walk: a folder named like the film is not a file, so it is missing too
        assert sorted(again.missing) == sorted([gone["film"], folder["film"]])
    else:
        assert again.missing == [gone["film"]]
        assert again.not_files[folder["film"]][0] == folder["path"] and "folder" in again.not_files[folder["film"]][1]
    assert not again.films.set_index("film").loc[[gone["film"], folder["film"]], "present"].any()
    assert again.films["present"].sum() == len(films) - 2
    assert again.summary()["missing"] == len(again.missing)


def _vindr_expected_scaling(shipped: pd.DataFrame) -> tuple[pd.Series, dict[str, int]]:
    """(boxed rows, each film's real side F): F the smallest multiple of 256 at least the film's largest coordinate,
    counted on its rows of a class other than 'No finding' whose four coordinates are all numbers."""
    def number(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if np.isfinite(value) else None

    boxed = pd.Series([row["class_name"] != "No finding" and all(number(row[c]) is not None for c in VINDR_BOX_FIELDS)
                       for _, row in shipped.iterrows()], index=shipped.index)
    sides: dict[str, int] = {}
    for _, row in shipped[boxed].iterrows():
        largest = max(float(row[c]) for c in VINDR_BOX_FIELDS)
        sides[row["image_id"]] = max(sides.get(row["image_id"], 256), 256 * int(np.ceil(largest / 256)))
    return boxed, sides


def test_a_phantom_vindr_root_with_films_writes_each_box_scaled_inside_its_film(roots):
    import pydicom

    root = roots["vindr"]
    written = _read_root_csv("vindr", root)
    shipped = _shipped_csv("vindr")
    shipped = shipped[shipped["image_id"].isin(set(written["image_id"]))].reset_index(drop=True)
    other = [column for column in shipped.columns if column not in VINDR_BOX_FIELDS]
    assert written[other].equals(shipped[other])  # the same rows in the file's order; only coordinates change
    boxed, sides = _vindr_expected_scaling(shipped)
    assert boxed.sum() >= 10  # (this sample's films all have boxes: a blank row is in the test below)
    for position, row in shipped.iterrows():
        if not boxed[position]:  # 'No finding' (blank coordinates): as shipped
            assert written.loc[position, VINDR_BOX_FIELDS].tolist() == row[VINDR_BOX_FIELDS].tolist()
            continue
        side = sides[row["image_id"]]
        # shipped * image_size / F, written as Python writes the float ('691.0' style, as shipped)
        assert written.loc[position, VINDR_BOX_FIELDS].tolist() == [repr(float(row[c]) * 64 / side)
                                                                    for c in VINDR_BOX_FIELDS]
    # Every parsable box is inside its phantom film, whose size the film's own DICOM header says.
    for position in np.flatnonzero(boxed.to_numpy()):
        row = written.loc[position]
        header = pydicom.dcmread(root / "train" / f"{row['image_id']}.dicom", stop_before_pixels=True)
        x_min, y_min, x_max, y_max = (float(row[c]) for c in VINDR_BOX_FIELDS)
        assert 0 <= x_min < x_max <= int(header.Columns) and 0 <= y_min < y_max <= int(header.Rows)
        assert (int(header.Rows), int(header.Columns)) == (64, 64)
    # The labels do not read coordinates: the counts are the shipped rows' own, counted independently.
    for min_readers in (2, 1):
        films = load_external("vindr", root, ExternalOptions(min_readers=min_readers))
        assert observed(films.films, "vindr") == vindr_expected(shipped, min_readers)
    assert "scaled" in (root / "README.md").read_text()


def test_a_vindr_row_without_numbers_stays_as_shipped_and_is_still_set_apart(tmp_path, monkeypatch):
    from cxrutils.data.external import vindr
    from cxrutils.demo import external_roots

    shipped = external_roots.shipped_raw("vindr")
    film = shipped.loc[shipped["class_name"] == "Cardiomegaly", "image_id"].iloc[0]
    head = shipped[shipped["image_id"] == film]
    odd = pd.DataFrame([[film, "Cardiomegaly", "3", "R99", "abc", "10.0", "9000.0", "9000.0"],  # not a number
                        [film, "Cardiomegaly", "3", "R98", "10.0", "", "9000.0", "9000.0"],  # one blank
                        [film, "No finding", "14", "R97", "1.0", "2.0", "8000.0", "8000.0"],  # a box on 'No finding'
                        [film, "No finding", "14", "R96", "", "", "", ""]],  # no box, as shipped
                       columns=list(shipped.columns)).astype(shipped.dtypes.to_dict())
    rows = pd.concat([head, odd], ignore_index=True)
    monkeypatch.setattr(external_roots, "shipped_raw", lambda name: rows.copy())
    root = build_external_root(tmp_path / "vindr", ExternalRootSpec("vindr", n_patients=None, image_size=128))
    lines = (root / "train.csv").read_text().splitlines()
    assert lines[-4:] == [",".join(values) for values in odd.itertuples(index=False)]  # byte for byte as shipped
    # The film's side comes from its boxes alone, not from the 9,000 and 8,000 of the rows set apart.
    boxed, sides = _vindr_expected_scaling(rows)
    assert boxed.tail(4).tolist() == [False] * 4 and sides[film] < 4096
    first = int(np.flatnonzero(boxed.to_numpy())[0])
    written = _plain_csv(root / "train.csv")
    assert written.loc[first, VINDR_BOX_FIELDS].tolist() == [repr(float(rows.loc[first, c]) * 128 / sides[film])
                                                             for c in VINDR_BOX_FIELDS]
    regions, set_apart = vindr.boxes(vindr.read_raw(root / "train.csv"))
    assert set(set_apart.loc[set_apart["malformed"], "row"]) == {len(lines) - 3, len(lines) - 2, len(lines) - 1}
    assert len(regions) > 0
    assert ((regions["x"] + regions["w"]) <= 128).all() and ((regions["y"] + regions["h"]) <= 128).all()


def test_a_hostile_film_name_stays_a_name(roots, tmp_path):
    root = shutil.copytree(roots["vindr"], tmp_path / "root")
    (tmp_path / "secret.dicom").write_bytes(b"not yours")
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("../../secret,No finding,14,R1,,,,\n$(rm -rf ~)<b>,No finding,14,R1,,,,\n")
    films = load_external("vindr", root)
    hostile = films.films.set_index("film").loc[["../../secret", "$(rm -rf ~)<b>"]]
    assert hostile.loc["../../secret", "path"] == "" and not hostile["present"].any()
    assert {"../../secret", "$(rm -rf ~)<b>"} <= set(films.missing)


# --------------------------------------------------------------------------- the full shipped metadata


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_full_shipped_metadata_label_counts_equal_an_independent_count(collection):
    raw = _shipped_csv(collection)
    options = [ExternalOptions(uncertain=policy) for policy in ("exclude", "positive")] \
        if collection == "chexpert" else [ExternalOptions()]
    for option in options:
        films = shipped_films(collection, option)
        assert observed(films.films, collection) == _expected_for(collection, raw, option)
    frontal_films = {"chexpert": 191_027, "padchest": 110_633, "vindr": 15_000, "rsna": 26_684, "siim": 12_047}
    assert len(films.films) == frontal_films[collection]


@pytest.mark.parametrize("collection", ["vindr", "rsna", "siim"])
def test_a_full_size_metadata_only_root_is_the_shipped_file_and_lists_every_film_missing(collection, tmp_path):
    root = build_external_root(tmp_path / collection, ExternalRootSpec(collection, n_patients=None, with_images=False))
    name = {"vindr": "vinbigdata-train.csv.gz", "rsna": "kaggle_stage_2_train_labels.csv.zip",
            "siim": "siim-pneumothorax-train-rle.csv.gz"}[collection]
    if name.endswith(".zip"):
        shipped = zipfile.ZipFile(shipped_data_file(name)).read(METADATA[collection])
    else:
        shipped = gzip.open(shipped_data_file(name)).read()
    assert (root / METADATA[collection]).read_bytes() == shipped
    films = load_external(collection, root)
    assert len(films.missing) == len(films.films) == len(shipped_films(collection).films)


def test_chexpert_reads_valid_csv_beside_train_and_a_root_that_is_the_dataset_folder(roots, tmp_path):
    root = shutil.copytree(roots["chexpert"], tmp_path / "root")
    folder = root / "CheXpert-v1.0-small"
    train = _plain_csv(folder / "train.csv")
    valid = train.head(3).copy()
    valid["Path"] = valid["Path"].str.replace("/train/", "/valid/", regex=False)
    valid.to_csv(folder / "valid.csv", index=False)
    films = load_external("chexpert", folder)  # the dataset folder itself, as CheXpert unpacks
    by_split = films.films.groupby("source_split")["film"].apply(set)
    frontal_valid = set(valid.loc[valid["Frontal/Lateral"] == "Frontal", "Path"])
    assert by_split["valid"] == frontal_valid and frontal_valid
    assert set(films.missing) == frontal_valid  # listed in valid.csv, never written: missing, not assumed present


def test_padchest_films_kept_flat_at_the_root_are_found(roots, tmp_path):
    root = shutil.copytree(roots["padchest"], tmp_path / "root")
    for folder in [p for p in root.iterdir() if p.is_dir()]:
        for film in folder.iterdir():
            film.rename(root / film.name)
        folder.rmdir()
    films = load_external("padchest", root)
    assert films.missing == [] and films.films["present"].all()
    assert all(os.path.dirname(path) == str(root) for path in films.films["path"])


# --------------------------------------------------------------------------- the full-size build, on a small sample


def _written_files(root) -> dict[str, bytes]:
    """Every film file under ``root`` (the markers and the metadata left out), by its path inside it."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if relative not in ("README.md", "PHANTOM_DATASET.json", METADATA[os.path.basename(root)]):
                with open(path, "rb") as handle:
                    found[relative] = handle.read()
    return found


@pytest.mark.parametrize("collection", ["chexpert", "padchest"])
def test_the_full_size_build_writes_every_listed_film_at_its_published_path_whatever_the_workers(
        collection, tmp_path, monkeypatch):
    # The full-size path (n_patients=None: every shipped row, written a chunk at a time by worker processes) on the
    # first 150 shipped rows, in chunks of 40 so that two spawned workers share four chunks.
    from cxrutils.demo import external_roots

    shipped = external_roots.shipped_raw(collection).head(150)
    monkeypatch.setattr(external_roots, "shipped_raw", lambda name: shipped.copy())
    monkeypatch.setattr(external_roots, "_CHUNK_FILMS", 40)
    spec = ExternalRootSpec(collection, n_patients=None, seed=5)
    in_workers = build_external_root(tmp_path / "workers" / collection, spec, workers=2)
    in_process = build_external_root(tmp_path / "process" / collection, spec, workers=1)

    raw = _read_root_csv(collection, in_workers)
    shipped_lines = _plain_csv(shipped_data_file({"chexpert": "chexpert_train.csv.gz",
                                                  "padchest": PADCHEST_CSV}[collection])).head(150)
    assert raw.equals(shipped_lines)  # every row kept, in the file's order
    # Where each collection publishes a film, from its own CSV fields (CheXpert: Path below the dataset folder;
    # PadChest: ImageDir/ImageID).
    if collection == "chexpert":
        expected = {os.path.join("CheXpert-v1.0-small", path.split("/", 1)[1]): frontal == "Frontal"
                    for path, frontal in zip(raw["Path"], raw["Frontal/Lateral"])}
    else:
        expected = {os.path.join(folder, image): projection in PADCHEST_FRONTAL
                    for folder, image, projection in zip(raw["ImageDir"], raw["ImageID"], raw["Projection"])}
    written = _written_files(in_workers)
    assert set(written) == set(expected) and sum(expected.values()) > 0  # one film per listed row, nothing else
    for relative in expected:
        film = read_image(in_workers / relative)
        assert film.shape == (64, 64) and film.dtype == np.uint8 and film.std() > 0
    assert written == _written_files(in_process)  # the same bytes however many processes wrote them
    films = load_external(collection, in_workers)
    assert films.missing == [] and films.films["present"].all()
    assert sorted(os.path.relpath(path, in_workers) for path in films.films["path"]) == sorted(
        relative for relative, frontal in expected.items() if frontal)

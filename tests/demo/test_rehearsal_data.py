"""The full-size rehearsal root: the real files' shapes, at the real size, with tiny phantom films."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrutils.data.dataset import is_synthetic, load_dataset
from cxrutils.data.metadata import SHIPPED_GOOGLE_LABELS_NAME, SHIPPED_METADATA_NAME, read_metadata, shipped_data_file
from cxrutils.data.splits import OFFICIAL_TEST_IMAGES, OFFICIAL_TEST_PATIENTS, read_split_list
from cxrutils.demo.roots import RehearsalSpec, build_rehearsal_dataset, ensure_rehearsal_dataset, official_shaped_split


@pytest.fixture(scope="module")
def small_rehearsal_root(tmp_path_factory):
    spec = RehearsalSpec(fraction=0.01, image_size=64, seed=2, variants=2)
    return build_rehearsal_dataset(tmp_path_factory.mktemp("rehearsal") / "root", spec, workers=1)


def _google_sets() -> pd.Series:
    google = pd.read_csv(shipped_data_file(SHIPPED_GOOGLE_LABELS_NAME), usecols=["Image Index", "Set Id"])
    return google.set_index("Image Index")["Set Id"]


def test_the_rehearsal_root_has_the_real_files_and_one_film_per_row(small_rehearsal_root):
    root = small_rehearsal_root
    assert is_synthetic(root) and "SYNTHETIC" in (root / "README.md").read_text()
    # The metadata lines are the shipped v2020 file's own lines, header and number formatting included.
    with gzip.open(shipped_data_file(SHIPPED_METADATA_NAME), "rt", newline="") as handle:
        shipped = handle.read().splitlines()
    written = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert written[0] == shipped[0] and not written[0].endswith(",")
    assert set(written[1:]) <= set(shipped[1:]) and len(written) > 500
    dataset = load_dataset(root)
    assert dataset.synthetic and dataset.split_kind == "official"
    assert dataset.index.missing == [] and dataset.index.unlisted == []
    assert (dataset.metadata["split"].isin(["train", "val", "test"])).all()
    assert len(dataset.boxes) and set(dataset.boxes["image"]) <= set(dataset.images_in("test"))
    sizes = {Image.open(p).size for p in list(dataset.index.paths)[:50]}
    assert sizes == {(64, 64)}
    assert not (root / "test_list.txt").read_text().endswith("\n")
    listed = read_split_list(root / "test_list.txt")
    assert listed == sorted(listed)


def test_the_official_shaped_lists_have_the_official_size_and_keep_the_radiologist_sets_apart():
    metadata = read_metadata(None)
    lists = official_shaped_split(metadata, RehearsalSpec())
    patient = metadata.set_index("image")["patient_id"]
    test_images = lists.index[lists == "test"]
    assert len(test_images) == OFFICIAL_TEST_IMAGES
    test_patients, train_val_patients = set(patient[test_images]), set(patient[lists.index[lists == "train_val"]])
    assert abs(len(test_patients) - OFFICIAL_TEST_PATIENTS) < 0.05 * OFFICIAL_TEST_PATIENTS
    assert not test_patients & train_val_patients
    google = _google_sets()
    assert (lists[google.index[google == "test"]] == "test").all()
    assert (lists[google.index[google == "val"]] == "train_val").all()


def test_a_root_without_images_holds_only_the_small_files_and_is_rebuilt_only_when_the_spec_changes(tmp_path):
    spec = RehearsalSpec(fraction=0.02, with_images=False)
    root = ensure_rehearsal_dataset(tmp_path / "lists_only", spec)
    assert sorted(p.name for p in root.iterdir()) == [
        "BBox_List_2017.csv", "Data_Entry_2017_v2020.csv", "PHANTOM_DATASET.json", "README.md", "test_list.txt",
        "train_val_list.txt",
    ]
    dataset = load_dataset(root)
    assert dataset.index.paths.empty and len(dataset.index.missing) == len(dataset.metadata)
    (root / "marker").write_text("kept")
    ensure_rehearsal_dataset(root, spec)
    assert (root / "marker").exists()
    ensure_rehearsal_dataset(root, RehearsalSpec(fraction=0.02, with_images=False, seed=1))
    assert not (root / "marker").exists()


def test_a_fraction_keeps_whole_patients(small_rehearsal_root):
    metadata = read_metadata(None)
    kept = load_dataset(small_rehearsal_root).metadata
    per_patient = metadata.groupby("patient_id").size()
    assert (kept.groupby("patient_id").size() == per_patient.reindex(kept["patient_id"].unique())).all()
    assert np.isclose(kept["patient_id"].nunique(), 0.01 * metadata["patient_id"].nunique(), atol=1)

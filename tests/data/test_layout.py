import shutil

import pandas as pd
import pytest
from conftest import write_png

import cxrutils.data.splits as split_lib
from cxrutils.data.dataset import RecordedSplit, listed_image_paths, load_dataset
from cxrutils.data.layout import index_images, locate_files

NAMES = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png", "00000013_005.png"]


def _metadata_files(root, fixtures_dir, csv="Data_Entry_2017.csv"):
    root.mkdir(parents=True, exist_ok=True)
    for name in (csv, "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        shutil.copy(fixtures_dir / name, root / name)


def test_nih_box_layout_flat_images_folder(tmp_path, fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir)
    for name in NAMES:
        write_png(tmp_path / "images" / name)
    files = locate_files(tmp_path)
    assert files.metadata_csv.name == "Data_Entry_2017.csv" and files.test_list and files.bbox_csv
    index = index_images(tmp_path, NAMES + ["00020393_000.png"])
    assert sorted(index.paths.index) == sorted(NAMES)
    assert index.missing == ["00020393_000.png"] and index.unlisted == []


def test_kaggle_full_layout_with_a_partial_extraction(tmp_path, fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir)
    # The real lists name every film of the metadata; this CSV has one film more than the shared fixture lists.
    with open(tmp_path / "train_val_list.txt", "a") as listed:
        listed.write("\n00020393_000.png")
    for i, name in enumerate(NAMES[:3]):  # only two archives extracted
        write_png(tmp_path / f"images_00{1 + i % 2}" / "images" / name)
    write_png(tmp_path / "images_002" / "images" / "99999999_000.png")  # not in the metadata
    dataset = load_dataset(tmp_path)
    assert dataset.index.paths.size == 3
    assert dataset.index.missing == ["00000003_000.png", "00000013_005.png", "00020393_000.png"]
    assert dataset.index.unlisted == ["99999999_000.png"]
    assert dataset.index.paths["00000001_001.png"].endswith("images_002/images/00000001_001.png")


def test_kaggle_sample_layout_without_split_lists(tmp_path, fixtures_dir):
    (tmp_path / "sample").mkdir()
    shutil.copy(fixtures_dir / "sample_labels.csv", tmp_path / "sample" / "sample_labels.csv")
    for name in ("00000013_005.png", "00000013_026.png", "00000017_001.png"):
        write_png(tmp_path / "sample" / "images" / name)
    dataset = load_dataset(tmp_path, test_fraction=0.5, val_fraction=0.0)
    assert dataset.files.metadata_csv.name == "sample_labels.csv"
    assert dataset.split_kind == "random"
    assert dataset.index.missing == [] and dataset.index.paths.size == 3
    # patient 13's two films stay together
    side = dataset.metadata.set_index("image")["split"]
    assert side["00000013_005.png"] == side["00000013_026.png"]


def test_images_kept_apart_from_the_metadata(tmp_path, fixtures_dir):
    _metadata_files(tmp_path / "meta", fixtures_dir, csv="Data_Entry_2017_v2020.csv")
    for name in NAMES:
        write_png(tmp_path / "elsewhere" / "pngs" / name)
    dataset = load_dataset(tmp_path / "meta", images_dir=tmp_path / "elsewhere")
    assert dataset.index.paths.size == 5 and dataset.index.missing == []
    assert dataset.split_kind == "official"


def test_every_listed_film_has_a_path_and_a_missing_one_points_into_the_images_folder(tmp_path, fixtures_dir):
    _metadata_files(tmp_path / "meta", fixtures_dir, csv="Data_Entry_2017_v2020.csv")
    for name in NAMES[1:]:
        write_png(tmp_path / "elsewhere" / name)
    dataset = load_dataset(tmp_path / "meta", images_dir=tmp_path / "elsewhere")
    paths = listed_image_paths(dataset)
    assert sorted(paths.index) == sorted(dataset.metadata["image"])
    assert paths[NAMES[0]] == str((tmp_path / "elsewhere").resolve() / NAMES[0])  # missing, named where it belongs
    with pytest.raises(ValueError, match="metadata-only"):
        listed_image_paths(load_dataset("metadata-only"))


def test_a_recorded_split_is_applied_as_it_stands_and_nothing_is_drawn(tmp_path, fixtures_dir, monkeypatch):
    _metadata_files(tmp_path, fixtures_dir, csv="Data_Entry_2017_v2020.csv")
    for name in NAMES:
        write_png(tmp_path / "images" / name)
    drawn = load_dataset(tmp_path)
    assert drawn.split_kind == "official"

    def no_draw(*args, **kwargs):
        raise AssertionError("a recorded split must not be drawn again")

    monkeypatch.setattr(split_lib, "assign_official", no_draw)
    monkeypatch.setattr(split_lib, "assign_random", no_draw)
    # Every film on the other side than drawn, and one film the record does not list.
    flipped = drawn.metadata.set_index("image")["split"].map({"train": "test", "val": "test", "test": "train"})
    unlisted = flipped.index[0]
    recorded = RecordedSplit(flipped.drop(unlisted), "random")
    dataset = load_dataset(tmp_path, split=recorded)
    sides = dataset.metadata.set_index("image")["split"]
    assert dataset.split_kind == "random"
    assert sides.drop(unlisted).equals(flipped.drop(unlisted))
    assert pd.isna(sides[unlisted])
    assert dataset.metadata["image"].tolist() == drawn.metadata["image"].tolist()


def test_same_file_name_in_two_folders_is_reported(tmp_path):
    write_png(tmp_path / "a" / "00000001_000.png")
    write_png(tmp_path / "b" / "00000001_000.png")
    index = index_images(tmp_path, ["00000001_000.png"])
    assert list(index.duplicates) == ["00000001_000.png"] and len(index.duplicates["00000001_000.png"]) == 2


def test_root_without_a_csv_falls_back_to_the_shipped_metadata(tmp_path):
    write_png(tmp_path / "images" / "00000001_000.png")
    dataset = load_dataset(tmp_path)
    assert len(dataset.metadata) == 112_120
    assert dataset.index.paths.index.tolist() == ["00000001_000.png"]
    assert "shipped in torchxrayvision" in dataset.description


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")

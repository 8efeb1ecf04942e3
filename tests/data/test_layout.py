import shutil
import warnings

import pandas as pd
import pytest
from conftest import write_png

import cxrutils.data.splits as split_lib
from cxrutils.data.dataset import SYNTHETIC_MANIFEST_NAME, RecordedSplit, listed_image_paths, load_dataset
from cxrutils.data.layout import (
    PHANTOM_MANIFEST_NAME,
    OlderLabelReleaseWarning,
    UnextractedArchivesWarning,
    index_images,
    locate_files,
)

NAMES = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png", "00000013_005.png"]


def _metadata_files(root, fixtures_dir, csv="Data_Entry_2017.csv"):
    root.mkdir(parents=True, exist_ok=True)
    for name in (csv, "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        shutil.copy(fixtures_dir / name, root / name)


def test_nih_box_layout_flat_images_folder(tmp_path, fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir)
    for name in NAMES:
        write_png(tmp_path / "images" / name)
    with pytest.warns(OlderLabelReleaseWarning):
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
    with pytest.warns(OlderLabelReleaseWarning, match="Data_Entry_2017_v2020.csv"):
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


def _no_warnings_of(category, call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    assert [str(w.message) for w in caught if issubclass(w.category, category)] == []
    return result


def test_missing_images_beside_box_archives_never_unpacked_name_the_archives_and_how_to_unpack_them(tmp_path,
                                                                                                    fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir, csv="Data_Entry_2017_v2020.csv")
    for name in ("images_001.tar.gz", "images_002.tar.gz"):
        (tmp_path / name).write_bytes(b"downloaded, never unpacked")
    with pytest.warns(UnextractedArchivesWarning) as caught:
        dataset = load_dataset(tmp_path)
    (message,) = [str(w.message) for w in caught if w.category is UnextractedArchivesWarning]
    root = str(tmp_path.resolve())
    assert message.startswith(f"5 listed images are not on disk, and {root} holds image archives that were never "
                              "unpacked: images_001.tar.gz, images_002.tar.gz.")
    assert f"`cxrutils download nih --root {root} --extract-only`" in message
    assert f"`tar -xzf {root}/images_001.tar.gz -C {root}` for each" in message
    assert dataset.index.archives == [f"{root}/images_001.tar.gz", f"{root}/images_002.tar.gz"]
    assert dataset.index.archives_note == message


def test_a_kaggle_zip_and_an_unfinished_download_are_named_with_their_own_commands(tmp_path):
    (tmp_path / "archive.zip").write_bytes(b"PK")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "images_003.tar.gz.part").write_bytes(b"\x1f\x8b")
    with pytest.warns(UnextractedArchivesWarning) as caught:
        index = index_images(tmp_path, NAMES)
    (message,) = [str(w.message) for w in caught]
    assert "archive.zip, images_003.tar.gz.part." in message
    assert f"`unzip -q {tmp_path}/archive.zip -d {tmp_path}`" in message
    assert (f"images_003.tar.gz.part is a download that never finished: `cxrutils download nih --root {tmp_path}` "
            "resumes it") in message
    assert [path.rsplit("/", 1)[1] for path in index.archives] == ["archive.zip", "images_003.tar.gz.part"]


def test_archives_kept_beside_a_complete_extraction_are_not_mentioned(tmp_path):
    for name in NAMES:
        write_png(tmp_path / "images" / name)
    (tmp_path / "images_001.tar.gz").write_bytes(b"kept after unpacking")
    index = _no_warnings_of(UnextractedArchivesWarning, lambda: index_images(tmp_path, NAMES))
    assert index.missing == [] and index.archives == [] and index.archives_note == ""


def test_some_images_missing_beside_archives_say_the_unpacking_may_be_incomplete(tmp_path):
    write_png(tmp_path / "images" / NAMES[0])
    (tmp_path / "images_001.tar.gz").write_bytes(b"unpacked halfway")
    with pytest.warns(UnextractedArchivesWarning, match=rf"^4 listed images are not on disk, and {tmp_path} holds "
                                                        "image archives that may not have been unpacked completely: "
                                                        "images_001.tar.gz. Unpack"):
        index_images(tmp_path, NAMES)


def test_missing_images_without_archives_say_nothing_about_archives(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.zip").write_bytes(b"PK")  # a zip that is not a release's
    index = _no_warnings_of(UnextractedArchivesWarning, lambda: index_images(tmp_path, NAMES))
    assert len(index.missing) == len(NAMES) and index.archives == []


def test_only_kaggles_older_label_release_warns_and_says_how_to_add_v2020(tmp_path, fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir, csv="Data_Entry_2017.csv")
    with pytest.warns(OlderLabelReleaseWarning) as caught:
        files = locate_files(tmp_path)
    assert files.metadata_csv.name == "Data_Entry_2017.csv"  # still read: a warning, not an error
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{tmp_path}/Data_Entry_2017.csv is the 2017 label release")
    assert f"download it from https://nihcc.app.box.com/v/ChestXray-NIHCC into {tmp_path}" in message
    # torchxrayvision (installed in the project's environment) ships the v2020 file: the message says how to copy it.
    assert f"> {tmp_path}/Data_Entry_2017_v2020.csv`" in message and "Data_Entry_2017_v2020.csv.gz" in message


def test_v2020_beside_the_older_release_is_preferred_without_a_warning(tmp_path, fixtures_dir):
    _metadata_files(tmp_path, fixtures_dir, csv="Data_Entry_2017.csv")
    shutil.copy(fixtures_dir / "Data_Entry_2017_v2020.csv", tmp_path / "Data_Entry_2017_v2020.csv")
    files = _no_warnings_of(OlderLabelReleaseWarning, lambda: locate_files(tmp_path))
    assert files.metadata_csv.name == "Data_Entry_2017_v2020.csv"


def test_a_phantom_root_in_kaggles_shape_gets_no_label_release_advice(phantom_copy):
    assert PHANTOM_MANIFEST_NAME == SYNTHETIC_MANIFEST_NAME  # layout's copy of the name dataset owns
    files = _no_warnings_of(OlderLabelReleaseWarning, lambda: locate_files(phantom_copy))
    assert files.metadata_csv.name == "Data_Entry_2017.csv"

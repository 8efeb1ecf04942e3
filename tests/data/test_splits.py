import numpy as np
import pytest

from cxrutils.data.metadata import read_metadata
from cxrutils.data.splits import (
    PatientOverlapError,
    assert_patient_disjoint,
    assign_official,
    assign_random,
    patient_overlap,
    read_split_list,
    split_summary,
    write_split_list,
)


@pytest.fixture(scope="module")
def nih_metadata():
    return read_metadata(None)


def _patients(metadata, split, side):
    return set(metadata.loc[(split == side).to_numpy(), "patient_id"])


def test_split_lists_are_read_without_a_final_newline(fixtures_dir, tmp_path):
    assert read_split_list(fixtures_dir / "test_list.txt") == ["00000003_000.png", "00000013_005.png"]
    write_split_list(["a.png", "b.png"], tmp_path / "x.txt")
    assert (tmp_path / "x.txt").read_bytes() == b"a.png\nb.png"


def test_official_lists_with_validation_carved_by_patient(nih_metadata):
    # Lists in the official shape: whole patients on one side, drawn here by patient id.
    test_patients = set(nih_metadata["patient_id"].drop_duplicates().sample(frac=0.1, random_state=0))
    is_test = nih_metadata["patient_id"].isin(test_patients)
    train_val = nih_metadata.loc[~is_test, "image"].tolist()
    test = nih_metadata.loc[is_test, "image"].tolist()
    split = assign_official(nih_metadata, train_val, test, val_fraction=0.1, seed=7)
    assert split.index.equals(nih_metadata.index)  # aligned with the metadata: its "split" column
    assert set(nih_metadata.loc[split == "test", "image"]) == set(test)
    sides = {side: _patients(nih_metadata, split, side) for side in ("train", "val", "test")}
    assert not sides["train"] & sides["val"] and not sides["val"] & sides["test"] and not sides["train"] & sides["test"]
    train_val_patients = sides["train"] | sides["val"]
    assert len(sides["val"]) == round(0.1 * len(train_val_patients))
    with_split = nih_metadata.assign(split=split)
    assert (patient_overlap(with_split).to_numpy() == 0).all()
    summary = split_summary(with_split, official=True)
    assert summary.loc[["train", "val", "test"], "images"].sum() == len(nih_metadata)
    assert summary.loc["test", "patients"] == len(test_patients)
    again = assign_official(nih_metadata, train_val, test, val_fraction=0.1, seed=7)
    other = assign_official(nih_metadata, train_val, test, val_fraction=0.1, seed=8)
    assert again.equals(split) and not other.equals(split)


def test_lists_that_share_a_patient_are_an_error(fixtures_dir):
    metadata = read_metadata(fixtures_dir / "Data_Entry_2017_v2020.csv")
    # patient 1's two films on different sides
    with pytest.raises(PatientOverlapError, match=r"patient_id \[1\]"):
        assign_official(
            metadata,
            ["00000001_000.png", "00000002_000.png", "00000013_005.png"],
            ["00000001_001.png", "00000003_000.png"],
            val_fraction=0.0,
        )


def test_lists_naming_unknown_images_are_an_error(fixtures_dir):
    metadata = read_metadata(fixtures_dir / "Data_Entry_2017_v2020.csv")
    with pytest.raises(ValueError, match="not in the metadata"):
        assign_official(metadata, ["00000001_000.png", "ghost.png"], ["00000003_000.png"])


def test_an_image_in_both_lists_is_an_error_naming_it(fixtures_dir):
    metadata = read_metadata(fixtures_dir / "Data_Entry_2017_v2020.csv")
    everything = metadata["image"].tolist()
    with pytest.raises(ValueError, match=r"1 image\(s\) are in both split lists.*00000003_000.png"):
        assign_official(metadata, everything, ["00000003_000.png"])


def test_images_in_neither_list_are_an_error_naming_them_not_a_silent_third_split(fixtures_dir, tmp_path):
    """The official lists name every film; one in neither would be cached but never trained on or scored."""
    metadata = read_metadata(fixtures_dir / "Data_Entry_2017_v2020.csv")
    names = metadata["image"].tolist()
    with pytest.raises(ValueError, match=r"2 image\(s\) in the metadata are in neither split list") as error:
        assign_official(metadata, names[:2], names[2:3])
    assert names[3] in str(error.value) and names[4] in str(error.value)

    # Through load_dataset: the Kaggle CSV has one film more than these lists.
    from cxrutils.data.dataset import load_dataset

    for name in ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"):
        (tmp_path / name).write_bytes((fixtures_dir / name).read_bytes())
    with pytest.raises(ValueError, match="neither split list.*00020393_000.png"):
        load_dataset(tmp_path)


def test_random_split_is_patient_disjoint_and_seeded(nih_metadata):
    split = assign_random(nih_metadata, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert_patient_disjoint(nih_metadata.assign(split=split))
    counts = split.value_counts(normalize=True)
    assert counts["test"] == pytest.approx(0.2, abs=0.02) and counts["val"] == pytest.approx(0.1, abs=0.02)
    assert assign_random(nih_metadata, seed=0).equals(split)
    assert not assign_random(nih_metadata, seed=1).equals(split)


def test_overlap_check_catches_an_image_level_split(nih_metadata):
    rng = np.random.default_rng(0)
    by_image = rng.choice(["train", "val", "test"], len(nih_metadata))
    with pytest.raises(PatientOverlapError):
        assert_patient_disjoint(nih_metadata.assign(split=by_image))


def test_the_split_table_shows_the_official_lists_own_totals_beside_the_carve_out(nih_metadata):
    test_patients = set(nih_metadata["patient_id"].drop_duplicates().sample(frac=0.1, random_state=1))
    is_test = nih_metadata["patient_id"].isin(test_patients)
    split = assign_official(nih_metadata, nih_metadata.loc[~is_test, "image"].tolist(),
                            nih_metadata.loc[is_test, "image"].tolist(), val_fraction=0.1, seed=0)
    table = split_summary(nih_metadata.assign(split=split), official=True)
    train_val = table.loc["train_val (official list)"]
    assert train_val["images"] == (~is_test).sum() == table.loc["train", "images"] + table.loc["val", "images"]
    assert train_val["patients"] == nih_metadata.loc[~is_test, "patient_id"].nunique()
    assert table.loc["test (official list)", "images"] == is_test.sum()
    assert (table["patients_shared_with_other_splits"] == 0).all()
    random_split = assign_random(nih_metadata, seed=0)
    assert "train_val (official list)" not in split_summary(nih_metadata.assign(split=random_split)).index

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrutils.data.metadata import TIDY_COLUMNS, MetadataError, read_metadata
from cxrutils.labels import FINDINGS


def test_kaggle_csv_with_trailing_comma_reads_into_the_tidy_frame(fixtures_dir):
    frame = read_metadata(fixtures_dir / "Data_Entry_2017.csv")
    assert list(frame.columns) == list(TIDY_COLUMNS)
    assert len(frame) == 6
    row = frame.set_index("image").loc["00000013_005.png"]
    assert row["patient_id"] == 13 and row["follow_up"] == 5 and row["view"] == "AP"
    assert (row["width"], row["height"]) == (3056, 2544)
    assert row["pixel_spacing_x"] == pytest.approx(0.139)
    assert [f for f in FINDINGS if row[f]] == ["Infiltration", "Pneumothorax", "Emphysema", "Pleural_Thickening"]
    assert row["no_finding"] == 0
    no_finding = frame.set_index("image").loc["00000002_000.png"]
    assert no_finding["no_finding"] == 1 and no_finding[list(FINDINGS)].sum() == 0


def test_impossible_ages_are_flagged_not_changed(fixtures_dir):
    frame = read_metadata(fixtures_dir / "Data_Entry_2017.csv").set_index("image")
    assert frame.loc["00020393_000.png", "age_years"] == 148.0
    assert frame["age_implausible"].tolist() == [False, False, False, False, False, True]


def test_v2020_csv_reads(fixtures_dir):
    frame = read_metadata(fixtures_dir / "Data_Entry_2017_v2020.csv")
    assert frame["age_years"].tolist() == [57.0, 58.0, 80.0, 74.0, 60.0]
    assert frame["pixel_spacing_x"].iloc[0] == pytest.approx(0.143)


def test_zero_padded_ids_and_unit_ages(fixtures_dir):
    frame = read_metadata(fixtures_dir / "Data_Entry_2017_zero_padded.csv")
    assert frame["patient_id"].tolist() == [1, 2, 3]
    assert frame["follow_up"].tolist() == [0, 0, 0]
    assert frame["age_years"].to_numpy() == pytest.approx([58.0, 11 / 12, 5 / 365.25])


def test_sample_labels_csv_headers_and_string_ages(fixtures_dir):
    frame = read_metadata(fixtures_dir / "sample_labels.csv")
    assert list(frame.columns) == list(TIDY_COLUMNS)
    assert frame["age_years"].tolist() == [60.0, 57.0, 77.0]
    assert frame["height"].tolist() == [2544, 2048, 2048]


def test_unknown_label_is_an_error_naming_it(tmp_path, fixtures_dir):
    text = (fixtures_dir / "Data_Entry_2017_v2020.csv").read_text().replace("Hernia", "Hernia|Covid19")
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MetadataError, match="Covid19"):
        read_metadata(path)


def test_missing_required_column_is_an_error_naming_it(tmp_path, fixtures_dir):
    frame = pd.read_csv(fixtures_dir / "Data_Entry_2017_v2020.csv").drop(columns=["View Position"])
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(MetadataError, match="View Position"):
        read_metadata(tmp_path / "bad.csv")


def test_unexpected_column_is_an_error_naming_it(tmp_path, fixtures_dir):
    frame = pd.read_csv(fixtures_dir / "Data_Entry_2017_v2020.csv").assign(Scanner="x")
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(MetadataError, match="Scanner"):
        read_metadata(tmp_path / "bad.csv")


def test_no_finding_combined_with_a_finding_is_an_error(tmp_path, fixtures_dir):
    text = (fixtures_dir / "Data_Entry_2017_v2020.csv").read_text().replace(",Hernia,", ",Hernia|No Finding,")
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(MetadataError, match="No Finding"):
        read_metadata(tmp_path / "bad.csv")


def test_shipped_v2020_metadata_reproduces_the_published_facts():
    frame = read_metadata(None)
    assert len(frame) == 112_120
    assert frame["patient_id"].nunique() == 30_805
    assert frame["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}
    assert frame["sex"].value_counts().to_dict() == {"M": 63_340, "F": 48_780}
    published = {
        "Infiltration": 19_894,
        "Effusion": 13_317,
        "Atelectasis": 11_559,
        "Nodule": 6_331,
        "Mass": 5_782,
        "Pneumothorax": 5_302,
        "Consolidation": 4_667,
        "Pleural_Thickening": 3_385,
        "Cardiomegaly": 2_776,
        "Emphysema": 2_516,
        "Edema": 2_303,
        "Fibrosis": 1_686,
        "Pneumonia": 1_431,
        "Hernia": 227,
    }
    assert frame[list(published)].sum().to_dict() == published
    assert frame["no_finding"].sum() == 60_361
    assert frame["age_years"].max() == 95 and not frame["age_implausible"].any()
    assert Path(frame.attrs["source"]).name == "Data_Entry_2017_v2020.csv.gz"
    assert frame[list(FINDINGS)].dtypes.map(lambda d: d == np.uint8).all()

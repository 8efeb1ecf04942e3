import pytest

from cxrutils.bboxes import BBoxFormatError, read_bbox_list, write_bbox_list
from cxrutils.labels import BOX_FINDINGS
from cxrutils.metadata import shipped_data_file


def test_real_header_quirk_and_infiltrate_alias(fixtures_dir):
    boxes = read_bbox_list(fixtures_dir / "BBox_List_2017.csv")
    assert list(boxes.columns) == ["image", "finding", "x", "y", "w", "h"]
    assert len(boxes) == 4
    assert boxes["finding"].tolist() == ["Atelectasis", "Atelectasis", "Infiltration", "Nodule"]
    assert boxes.iloc[0][["x", "y", "w", "h"]].tolist() == pytest.approx(
        [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661]
    )


def test_shipped_box_list_has_the_published_counts():
    boxes = read_bbox_list(shipped_data_file("BBox_List_2017.csv.gz"))
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert set(boxes["finding"]) == set(BOX_FINDINGS)
    assert boxes["finding"].value_counts()["Infiltration"] == 123


def test_write_then_read_round_trips_in_the_real_format(tmp_path, fixtures_dir):
    boxes = read_bbox_list(fixtures_dir / "BBox_List_2017.csv")
    write_bbox_list(boxes, tmp_path / "BBox_List_2017.csv")
    text = (tmp_path / "BBox_List_2017.csv").read_text()
    assert text.startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert ",Infiltrate," in text  # the real file's spelling is kept
    assert read_bbox_list(tmp_path / "BBox_List_2017.csv").equals(boxes)


def test_wrong_header_and_unknown_label_are_errors(tmp_path):
    (tmp_path / "a.csv").write_text("image,label,x,y,w,h\na.png,Nodule,1,2,3,4\n")
    with pytest.raises(BBoxFormatError, match="header"):
        read_bbox_list(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Tumour,1,2,3,4\n")
    with pytest.raises(BBoxFormatError, match="Tumour"):
        read_bbox_list(tmp_path / "b.csv")

import pandas as pd
import pytest

from cxrutils.data.bboxes import BBoxFormatError, read_bbox_list, write_bbox_list
from cxrutils.data.metadata import shipped_data_file
from cxrutils.labels import BOX_FINDINGS


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


def test_boxes_are_scaled_from_the_1024_px_frame_onto_each_film_as_stored():
    from cxrutils.data.bboxes import boxes_in_stored_frame

    boxes = pd.DataFrame({"image": ["small.png", "wide.png", "cropped.png"], "finding": ["Nodule"] * 3,
                          "x": [512.0, 512.0, 1000.0], "y": [256.0, 256.0, 100.0], "w": [64.0, 64.0, 100.0],
                          "h": [128.0, 128.0, 50.0]})
    sizes = pd.DataFrame({"width": [256, 2048, 512], "height": [256, 1024, 512]},
                         index=["small.png", "wide.png", "cropped.png"])
    stored = boxes_in_stored_frame(boxes, sizes)
    assert stored.loc[0, ["x", "y", "w", "h"]].tolist() == [128.0, 64.0, 16.0, 32.0]  # a 256 px release: / 4
    assert stored.loc[1, ["x", "y", "w", "h"]].tolist() == [1024.0, 256.0, 128.0, 128.0]  # each axis its own scale
    # 1000 + 100 > 1024 by more than 1% of the side: this film is not the one the box was drawn on.
    assert stored["outside"].tolist() == [False, False, True]
    with pytest.raises(KeyError, match="gone.png"):
        boxes_in_stored_frame(boxes.assign(image="gone.png"), sizes)


def test_demo_boxes_are_written_in_the_1024_px_frame(tiny_phantom_root):
    import json

    from cxrutils.data.bboxes import BBOX_FRAME_PX

    boxes = read_bbox_list(tiny_phantom_root / "BBox_List_2017.csv")
    image_size = json.loads((tiny_phantom_root / "PHANTOM_DATASET.json").read_text())["spec"]["image_size"]
    assert image_size < BBOX_FRAME_PX
    assert (boxes["x"] + boxes["w"]).max() > image_size  # not in the stored films' own pixels
    assert ((boxes["x"] + boxes["w"]) <= BBOX_FRAME_PX).all() and ((boxes["y"] + boxes["h"]) <= BBOX_FRAME_PX).all()

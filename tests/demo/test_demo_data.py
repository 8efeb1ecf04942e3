import hashlib
import json

import pandas as pd

from cxrutils.data.dataset import is_synthetic, load_dataset
from cxrutils.data.metadata import read_metadata
from cxrutils.data.splits import read_split_list
from cxrutils.demo.roots import DemoSpec, build_demo_dataset, ensure_demo_dataset, sample_rows
from cxrutils.labels import BOX_FINDINGS, FINDINGS


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_sampled_rows_are_real_whole_patients_with_every_finding():
    shipped = read_metadata(None)
    spec = DemoSpec(n_patients=60, min_images_per_finding=5, max_images_per_patient=4, seed=1)
    rows = sample_rows(shipped, spec)
    assert (rows[list(FINDINGS)].sum() >= 5).all()
    real = shipped.set_index("image").loc[rows["image"]]
    pd.testing.assert_frame_equal(rows.set_index("image")[list(FINDINGS)], real[list(FINDINGS)])
    per_patient = rows.groupby("patient_id").size()
    assert per_patient.max() <= 4
    first_films = shipped.sort_values("follow_up").groupby("patient_id").head(4)
    kept = first_films[first_films["patient_id"].isin(per_patient.index)]
    assert set(kept["image"]) == set(rows["image"])  # whole (capped) patients, never single films
    assert sample_rows(shipped, spec).equals(rows)


def test_the_phantom_root_is_in_the_nih_layout_and_marked_synthetic(tiny_phantom_root):
    root = tiny_phantom_root
    for name in ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt", "BBox_List_2017.csv", "README.md"):
        assert (root / name).is_file(), name
    assert "SYNTHETIC" in (root / "README.md").read_text()
    assert is_synthetic(root)
    assert (root / "Data_Entry_2017.csv").read_text().splitlines()[0].endswith(",")  # the Kaggle quirk
    assert not (root / "test_list.txt").read_text().endswith("\n")
    dataset = load_dataset(root)
    assert dataset.synthetic and dataset.split_kind == "official"
    assert dataset.index.missing == [] and dataset.index.unlisted == []
    assert len(dataset.metadata) == len(read_split_list(root / "train_val_list.txt")) + len(
        read_split_list(root / "test_list.txt")
    )
    assert set(dataset.boxes["finding"]) <= set(BOX_FINDINGS)
    labels = dataset.metadata.set_index("image")
    assert all(labels.loc[box.image, box.finding] == 1 for box in dataset.boxes.itertuples())


def test_same_seed_gives_identical_files_and_ensure_reuses_them(tmp_path, tiny_phantom_root):
    spec = DemoSpec(**json.loads((tiny_phantom_root / "PHANTOM_DATASET.json").read_text())["spec"])
    again = build_demo_dataset(tmp_path / "again", spec, workers=2)
    assert _digest(again) == _digest(tiny_phantom_root)
    marker = again / "images" / "marker.txt"
    marker.write_text("kept")
    ensure_demo_dataset(again, spec)  # same spec: nothing rebuilt
    assert marker.exists()
    other = build_demo_dataset(
        tmp_path / "other", DemoSpec(**{**json.loads(json.dumps(spec.__dict__)), "seed": 4}), workers=1
    )
    assert _digest(other) != _digest(tiny_phantom_root)


def test_a_notebook_on_a_declared_phantom_root_builds_it_and_a_missing_real_root_says_what_to_set(tmp_path):
    """What notebooks (opened in JupyterLab, or run by the reports runner) call before reading their data."""
    import pytest
    import yaml

    from cxrutils.demo.roots import prepare_data_root

    configs = tmp_path / "configs"
    configs.mkdir()
    spec = {"n_patients": 30, "image_size": 64, "seed": 3, "min_images_per_finding": 2, "max_images_per_patient": 3}
    root = tmp_path / "data" / "demo"
    (configs / "mine.yaml").write_text(yaml.safe_dump({"demo_data": {"root": str(root), **spec}}))
    prepare_data_root(str(root), configs_dir=configs)
    assert is_synthetic(root) and len(load_dataset(root).metadata) == len(list((root / "images").iterdir()))
    marker = root / "images" / "marker.txt"
    marker.write_text("kept")
    prepare_data_root(str(root), configs_dir=configs)  # built with this spec already: left alone
    assert marker.exists()

    prepare_data_root("metadata-only", configs_dir=configs)  # nothing to build or find
    with pytest.raises(FileNotFoundError) as missing:
        prepare_data_root(str(tmp_path / "nih"), configs_dir=configs)
    message = str(missing.value)
    assert f"there is no folder {tmp_path / 'nih'}" in message
    assert "--set data_root=" in message and "settings = {'data_root':" in message
    with pytest.raises(ValueError, match="data_root is not set"):
        prepare_data_root(None, configs_dir=configs)

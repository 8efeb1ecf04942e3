"""The run folder is the record: the split it trained on, checked against today's data, and one way to open it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxrutils.data.dataset import load_dataset
from cxrutils.engine import run_folder


@pytest.fixture
def run_and_root(tiny_run: Path, tiny_phantom_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Private copies of the tiny run and its root, the run pointed at the copied root."""
    root = Path(shutil.copytree(tiny_phantom_root, tmp_path / "root"))
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / "tiny"))
    config = run_folder.read_config(run_dir)
    config["data_root"] = str(root)
    (run_dir / run_folder.CONFIG_NAME).write_text(pd.Series(config).to_json())
    return run_dir, root


def test_training_records_every_film_its_split_and_labels(tiny_run: Path, tiny_phantom_root: Path):
    recorded = run_folder.read_split(tiny_run)
    dataset = load_dataset(tiny_phantom_root, val_fraction=0.3)
    assert list(recorded.columns) == run_folder.SPLIT_COLUMNS
    assert recorded["image"].tolist() == dataset.metadata["image"].tolist()
    assert recorded["split"].tolist() == dataset.metadata["split"].tolist()
    config = run_folder.read_config(tiny_run)
    assert config["data_fingerprint"] == run_folder.data_fingerprint(run_folder.split_table(dataset.metadata))
    assert config["split_kind"] == "official"


def test_an_opened_run_reads_its_split_from_the_record_not_from_the_lists(run_and_root):
    run_dir, root = run_and_root
    trained_split = run_folder.read_split(run_dir).set_index("image")["split"]
    # Without its lists the root would be split at random; the run keeps the split it trained on.
    (root / "test_list.txt").unlink()
    (root / "train_val_list.txt").unlink()
    assert load_dataset(root).split_kind == "random"
    run = run_folder.open_run(run_dir)
    assert run.dataset.metadata.set_index("image")["split"].equals(trained_split.rename("split"))
    assert run.dataset.split_kind == "official" and "split.csv" in run.split_source


def test_changed_metadata_stops_the_run_from_opening_and_names_what_changed(run_and_root):
    run_dir, root = run_and_root
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    relabelled = lines[1].split(",")
    image = relabelled[0]
    relabelled[1] = "Hernia" if relabelled[1] != "Hernia" else "Nodule"
    removed = lines[2].split(",")[0]
    csv.write_text("\n".join([lines[0], ",".join(relabelled), *lines[3:]]) + "\n")
    for listed in ("train_val_list.txt", "test_list.txt"):  # the lists stay consistent with the metadata
        names = (root / listed).read_text().splitlines()
        (root / listed).write_text("\n".join(name for name in names if name != removed))
    with pytest.raises(run_folder.DataChangedError) as error:
        run_folder.open_run(run_dir)
    message = str(error.value)
    assert "1 film(s) changed labels" in message and image in message and relabelled[1] in message
    assert "1 film(s) the run used are no longer in the metadata" in message and removed in message


def test_only_finished_runs_open(tmp_path: Path, tiny_run: Path):
    with pytest.raises(run_folder.NotATrainedRunError, match="config.json"):
        run_folder.open_run(tmp_path)
    unfinished = Path(shutil.copytree(tiny_run, tmp_path / "unfinished"))
    (unfinished / run_folder.THRESHOLDS_NAME).unlink()
    with pytest.raises(run_folder.NotATrainedRunError, match="thresholds.json"):
        run_folder.open_run(unfinished)

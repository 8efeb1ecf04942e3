"""The run folder is the record: the split it trained on, checked against today's data, and one way to open it."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pandas as pd
import pytest

import cxrutils.data.splits as split_lib
from cxrutils.data.dataset import listed_image_paths, load_dataset
from cxrutils.engine import run_folder
from cxrutils.engine.predict import SPLITS

PACKAGE = Path(run_folder.__file__).resolve().parents[1]
# Modules that own another folder holding a file of the same name: the image cache has its own bad_files.csv.
OTHER_FOLDERS_FILES = {"data/cache.py": {run_folder.BAD_FILES_NAME}}


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


def _no_split_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    def draw(*args, **kwargs):
        raise AssertionError("a split was drawn although the run recorded one")

    monkeypatch.setattr(split_lib, "assign_official", draw)
    monkeypatch.setattr(split_lib, "assign_random", draw)


def test_opening_a_run_draws_no_split_when_it_recorded_one(run_and_root, monkeypatch):
    run_dir, _ = run_and_root
    _no_split_drawing(monkeypatch)
    run = run_folder.open_run(run_dir)
    recorded = run_folder.read_split(run_dir).set_index("image")["split"]
    assert run.dataset.metadata.set_index("image")["split"].equals(recorded)
    assert run.dataset.split_kind == run_folder.read_config(run_dir)["split_kind"]


def test_a_run_opened_where_its_data_moved_keeps_its_settings_as_recorded(run_and_root, tmp_path):
    run_dir, root = run_and_root
    moved = root.rename(tmp_path / "moved")
    run = run_folder.open_run(run_dir, data_root=moved)
    assert run.config == run_folder.read_run_config(run_dir) and run.config.data_root == str(root)
    assert run.data_root == str(moved) and str(moved) in run.dataset.description
    assert all(path.startswith(str(moved)) for path in listed_image_paths(run.dataset))


def test_a_run_without_split_csv_gets_its_split_drawn_from_its_settings(run_and_root):
    run_dir, root = run_and_root
    (run_dir / run_folder.SPLIT_NAME).unlink()
    run = run_folder.open_run(run_dir)
    config = run.config
    drawn = load_dataset(root, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                         seed=config.split_seed)
    assert run.dataset.metadata["split"].tolist() == drawn.metadata["split"].tolist()
    assert "recomputed" in run.split_source


def test_the_run_folder_reads_back_what_it_writes(tmp_path: Path):
    document = {"auroc": {"mean": 0.5}}
    assert run_folder.read_metrics(tmp_path) is None and run_folder.read_comparison(tmp_path) is None
    assert run_folder.write_metrics(tmp_path, document) == run_folder.metrics_path(tmp_path)
    run_folder.write_metrics(tmp_path, {"other": 1}, "val", tta_hflip=True)
    assert run_folder.read_metrics(tmp_path) == document
    assert run_folder.read_metrics(tmp_path, "val", tta_hflip=True) == {"other": 1}
    run_folder.write_comparison(tmp_path, document)
    run_folder.write_onnx_record(tmp_path, {"sha256": "0"})
    assert run_folder.read_comparison(tmp_path) == document and run_folder.read_onnx_record(tmp_path) == {"sha256": "0"}
    names = {run_folder.metrics_name(split, tta) for split in SPLITS for tta in (False, True)}
    names |= {run_folder.predictions_name(split, tta) for split in SPLITS for tta in (False, True)}
    # No two splits (with and without the mirrored view) share a file, nor one of the run's other files.
    assert len(names) == 12 and names & set(run_folder.RUN_FILE_NAMES) == {run_folder.METRICS_NAME}


def _run_file_names() -> set[str]:
    names = set(run_folder.RUN_FILE_NAMES)
    for split in SPLITS:
        for tta in (False, True):
            names |= {run_folder.predictions_name(split, tta), run_folder.metrics_name(split, tta)}
    return names


def _templated_run_file(node: ast.JoinedStr) -> bool:
    """An f-string that builds a per-split name: ``f"predictions_{split}.csv"``, ``f"metrics_{name}.json"``."""
    first, last = node.values[0], node.values[-1]
    return (isinstance(first, ast.Constant) and str(first.value).startswith(("predictions_", "metrics_"))
            and isinstance(last, ast.Constant) and str(last.value).endswith((".csv", ".json")))


def _spelled_run_file_names(path: Path, names: set[str]) -> list[str]:
    relative = path.relative_to(PACKAGE).as_posix()
    names = names - OTHER_FOLDERS_FILES.get(relative, set())
    spelled = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            spelled.append(f"{relative}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and _templated_run_file(node):
            spelled.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    return spelled


def test_only_the_run_folder_module_spells_the_names_of_a_runs_files():
    names = _run_file_names()
    own = Path(run_folder.__file__).resolve()
    # The scan finds what it looks for: every fixed name, and the per-split templates, are in run_folder.py.
    found = "\n".join(_spelled_run_file_names(own, names))
    assert all(repr(name) in found for name in run_folder.RUN_FILE_NAMES)
    assert "f'predictions_" in found and "f'metrics_" in found
    spelled = [line for path in sorted(PACKAGE.rglob("*.py")) if path.resolve() != own
               for line in _spelled_run_file_names(path, names)]
    assert spelled == [], "name these through cxrutils.engine.run_folder:\n" + "\n".join(spelled)

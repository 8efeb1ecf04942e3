"""Papermill runs of the notebooks through the reports runner, on tiny data."""

import ast
import json

import nbformat
import pandas as pd
import pytest

from cxrutils.cli import main as cli_main
from cxrutils.paths import NOTEBOOKS_DIR
from cxrutils.publish import runner as reports
from cxrutils.summary import SUMMARY_NAME

pytestmark = pytest.mark.notebook


def _summary(reports_dir, notebook="01_eda"):
    return json.loads((reports_dir / notebook / SUMMARY_NAME).read_text())


def _run_reports(reports_dir, run_name="demo"):
    """The folder of one run's reports under the top reports folder (reports/<run name>/)."""
    return reports_dir / run_name


def test_eda_on_a_damaged_phantom_root_names_the_missing_and_the_truncated_file(phantom_copy, tmp_path):
    images = sorted((phantom_copy / "images").iterdir())
    deleted, truncated = images[0], images[1]
    deleted.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    reports_dir = tmp_path / "reports"
    code = cli_main(
        [
            "reports",
            "--profile",
            "demo",
            "--only",
            "01_eda",
            "--set",
            f"data_root={phantom_copy}",
            # no integrity_check: the demo profile's own, the full decode that make demo runs
            "--reports-dir",
            str(reports_dir),
        ]
    )
    assert code == 0
    reports_dir = _run_reports(reports_dir)
    summary = _summary(reports_dir)
    problems = {p["image"]: p["problem"] for p in summary["problems"]}
    assert set(problems) == {deleted.name, truncated.name}
    assert "no file found" in problems[deleted.name] and "truncated" in problems[truncated.name]
    entry = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())["01_eda"]
    assert entry["parameters"]["integrity_check"] == "full"
    assert summary["synthetic"] is True
    page = (reports_dir / "01_eda.html").read_text()
    assert deleted.name in page and truncated.name in page and "SYNTHETIC DATA" in page
    index = (reports_dir / "index.html").read_text()
    assert "01_eda" in index and "SYNTHETIC" in index
    # the split shown is the phantom root's official-format lists, with no shared patients
    assert summary["split_kind"] == "official"
    assert all(side["patients_shared_with_other_splits"] == 0 for side in summary["split"].values())


def test_metadata_only_eda_reproduces_the_published_v2020_facts(tmp_path):
    reports_dir = tmp_path / "reports"
    assert cli_main(["reports", "--profile", "metadata", "--reports-dir", str(reports_dir)]) == 0
    reports_dir = _run_reports(reports_dir, "metadata")  # its own folder: never mixed with a real NIH run's
    summary = _summary(reports_dir)
    facts = summary["summary"]
    assert (facts["images"], facts["patients"], facts["view PA"], facts["view AP"]) == (112_120, 30_805, 67_310, 44_810)
    counts = summary["label_counts"]
    assert (counts["No Finding"], counts["Infiltration"], counts["Hernia"]) == (60_361, 19_894, 227)
    assert summary["synthetic"] is False and summary["problems"] == []
    page = (reports_dir / "01_eda.html").read_text()
    # The report's tables print these counts as people read them (the summary keeps the numbers).
    assert ">112,120</td>" in page and ">60,361</td>" in page and ">30,805</td>" in page
    assert ">112120</td>" not in page and ">60361</td>" not in page


def test_eda_on_a_full_size_root_without_images_reports_every_film_missing(tmp_path):
    """What many users do first: the small files of a download, before the 42 GB of images."""
    from cxrutils.demo.roots import RehearsalSpec, build_rehearsal_dataset

    root = build_rehearsal_dataset(tmp_path / "lists_only", RehearsalSpec(with_images=False))
    (root / "images_001.tar.gz").write_bytes(b"\x1f\x8b")  # downloaded, never unpacked: named in the report
    reports_dir = tmp_path / "reports"
    assert cli_main(["reports", "--profile", "demo", "--only", "01", "--set", f"data_root={root}",
                         "--reports-dir", str(reports_dir)]) == 0
    reports_dir = _run_reports(reports_dir)
    summary = _summary(reports_dir)
    assert summary["summary"]["images"] == 112_120 and summary["summary"]["patients"] == 30_805
    assert summary["problem_counts"] == {"listed in the metadata, no file found": 112_120}
    assert len(summary["problems"]) <= 100  # the summary (and so the index) stays small
    problems = pd.read_csv(summary["problems_csv"])
    assert len(problems) == 112_120 and set(problems["problem"]) == {"listed in the metadata, no file found"}
    assert summary["split"]["train_val (official list)"]["images"] == 86_524
    assert summary["split"]["test (official list)"]["images"] == 25_596
    assert "112,120 listed images not on disk" in summary["headline"]
    page = (reports_dir / "01_eda.html").read_text()
    assert "nothing to show" in page and "Bounding boxes" in page and "Geometry" in page
    assert "holds image archives that were never unpacked: images_001.tar.gz" in page and "--extract-only" in page


def test_a_split_setting_changes_the_eda_and_the_training_split_alike(tiny_phantom_root, tmp_path):
    """--set val_fraction reaches the training settings every notebook reads, not only the EDA's parameters."""
    from cxrutils.engine.data_adapters import training_dataset
    from cxrutils.settings import load_train_config

    reports_dir = tmp_path / "reports"
    assert cli_main(["reports", "--profile", "demo", "--only", "01", "--set", f"data_root={tiny_phantom_root}",
                         "--set", "val_fraction=0.5", "--set", "integrity_check=off",
                         "--reports-dir", str(reports_dir)]) == 0
    shown = _summary(_run_reports(reports_dir))["split"]
    trained = training_dataset(load_train_config("demo", {"data_root": str(tiny_phantom_root),
                                                          "val_fraction": 0.5})).metadata
    default = training_dataset(load_train_config("demo", {"data_root": str(tiny_phantom_root)})).metadata
    for side in ("train", "val", "test"):
        assert shown[side]["images"] == int((trained["split"] == side).sum())
    assert shown["val"]["images"] != int((default["split"] == "val").sum())


def _without_magics(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_notebook_02_continues_a_killed_run_by_default():
    """Rerunning notebook 02 after a kill (or a closed laptop) must resume, not refuse or start over.

    Its default is ``resume = "auto"`` handed to ``train``; what "auto" does is tested on
    ``train`` itself (tests/engine/test_train.py). Running the notebook twice would cost two trainings.
    """
    notebook = nbformat.read(NOTEBOOKS_DIR / "02_train.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    defaults = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(parameters.source).body
        if isinstance(node, ast.Assign)
    }
    assert defaults["resume"] == "auto"
    calls = [
        node
        for cell in notebook.cells if cell.cell_type == "code"
        for node in ast.walk(ast.parse(_without_magics(cell.source)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "train"
    ]
    assert calls, "notebook 02 no longer calls train()"
    for call in calls:
        passed = {k.arg: k.value for k in call.keywords}
        assert isinstance(passed.get("resume"), ast.Name) and passed["resume"].id == "resume"

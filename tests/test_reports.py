import json

import nbformat
import pytest

from cxrutils.report import runner as reports
from cxrutils.settings import SettingsError, apply_overrides, load_profile, parse_override


def test_overrides_keep_their_yaml_types():
    assert parse_override("seed=3") == ("seed", 3)
    assert parse_override("images_dir=null") == ("images_dir", None)
    assert parse_override("data_root=/data/nih") == ("data_root", "/data/nih")
    assert parse_override("integrity_check=off") == ("integrity_check", "off")  # YAML 1.1 'off' is a bool
    with pytest.raises(SettingsError, match="KEY=VALUE"):
        parse_override("seed")


def test_nih_profile_demands_a_data_root():
    with pytest.raises(SettingsError, match="--set data_root="):
        apply_overrides(load_profile("nih"), [])
    assert apply_overrides(load_profile("nih"), ["data_root=/x"])["settings"]["data_root"] == "/x"


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(SettingsError, match="demo"):
        load_profile("nope")


def test_only_selects_by_name_or_number(tmp_path):
    paths = [tmp_path / f"{n}.ipynb" for n in ("01_eda", "02_train")]
    profile = {"name": "x", "parameters": {}}
    assert reports.select_notebooks(profile, ["02"], paths) == [paths[1]]
    assert reports.select_notebooks(profile, ["01_eda"], paths) == [paths[0]]
    with pytest.raises(SettingsError, match="03"):
        reports.select_notebooks(profile, ["03"], paths)


def test_a_set_key_no_notebook_declares_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reports.main(["--profile", "metadata", "--set", "dataroot=/x"])
    assert exit_info.value.code == 2
    assert "dataroot" in capsys.readouterr().err


def test_summary_status_is_ok_or_skipped(tmp_path):
    reports.write_summary(tmp_path, status="skipped", status_reason="no weights")
    assert json.loads((tmp_path / reports.SUMMARY_NAME).read_text())["status"] == "skipped"
    with pytest.raises(ValueError, match="failed"):
        reports.write_summary(tmp_path, status="failed")


def test_index_merges_runs_and_shows_status_and_source(tmp_path):
    reports.write_index(
        [{"notebook": "01_eda", "status": "ok", "run_seconds": 3.0, "data_source": "demo", "synthetic": True}],
        "demo",
        tmp_path,
    )
    reports.write_index([{"notebook": "04_txv", "status": "skipped", "status_reason": "no weights"}], "demo", tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "01_eda" in page and "04_txv" in page and "no weights" in page and "SYNTHETIC" in page
    assert set(json.loads((tmp_path / "index.json").read_text())) == {"01_eda", "04_txv"}


def _notebook(path, *cells: str):
    """A notebook in the project's shape: a parameters cell declaring output_dir, then ``cells``."""
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("output_dir = 'x'")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, *(nbformat.v4.new_code_cell(source) for source in cells)]
    notebook.metadata["kernelspec"] = {"name": "cxrutils", "display_name": "Python (cxrutils)", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def test_a_failing_notebook_is_reported_failed_with_its_error_in_the_html(tmp_path):
    path = _notebook(tmp_path / "09_broken.ipynb", "raise RuntimeError('corrupt PNG: images/x.png')")
    entry = reports.run_notebook(path, {}, tmp_path / "reports", show_code=False)
    assert entry["status"] == "failed" and "corrupt PNG" in entry["status_reason"]
    assert "corrupt PNG: images/x.png" in (tmp_path / "reports" / "09_broken.html").read_text()


def test_a_notebook_that_never_writes_its_summary_fails_the_run_and_the_later_ones_are_not_run(tmp_path,
                                                                                                monkeypatch):
    """Finishing without report_summary.json (its last cells skipped or never reached) is not "ok"; like any
    failure it stops the run with exit code 1 and the index marks the later notebooks "not run"."""
    quiet = _notebook(tmp_path / "notebooks" / "01_quiet.ipynb", "finished = True  # but never reports")
    later = _notebook(tmp_path / "notebooks" / "02_later.ipynb",
                      "from cxrutils.report.runner import write_summary\nwrite_summary(output_dir, headline='ran')")
    monkeypatch.setattr(reports, "notebook_paths", lambda: [quiet, later])
    reports_dir = tmp_path / "reports"
    assert reports.main(["--profile", "demo", "--reports-dir", str(reports_dir)]) == 1
    index = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())
    assert index["01_quiet"]["status"] == "failed"
    assert reports.SUMMARY_NAME in index["01_quiet"]["status_reason"]
    assert index["02_later"]["status"] == "not run"
    assert not (reports_dir / "02_later.html").exists() and not (reports_dir / "02_later").exists()
    page = (reports_dir / "index.html").read_text()
    assert "not run" in page and "failed" in page

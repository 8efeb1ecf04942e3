import json
import re

import nbformat
import pytest

from cxrutils.cli import main as cli_main
from cxrutils.publish import runner as reports
from cxrutils.settings import SettingsError, apply_overrides, load_profile, parse_override
from cxrutils.summary import SUMMARY_NAME, write_summary

pytestmark = pytest.mark.notebook  # the reports runner starts Jupyter kernels


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
        cli_main(["reports", "--profile", "metadata", "--set", "dataroot=/x"])
    assert exit_info.value.code == 2
    assert "dataroot" in capsys.readouterr().err


def test_summary_status_is_ok_or_skipped(tmp_path):
    write_summary(tmp_path, status="skipped", status_reason="no weights")
    assert json.loads((tmp_path / SUMMARY_NAME).read_text())["status"] == "skipped"
    with pytest.raises(ValueError, match="failed"):
        write_summary(tmp_path, status="failed")


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


def test_the_index_marks_a_synthetic_source_once(tmp_path):
    # The dataset's description opens with "SYNTHETIC"; the index once showed "SYNTHETIC SYNTHETIC phantom ...".
    entry = {"notebook": "01_eda", "status": "ok", "synthetic": True,
             "data_source": "SYNTHETIC phantom dataset at data/demo (metadata: demo)"}
    reports.write_index([entry], "demo", tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "<span class='synthetic'>SYNTHETIC</span> phantom dataset at data/demo" in page
    assert page.count("SYNTHETIC</span> SYNTHETIC") == 0


def test_the_index_links_the_results_json_a_notebook_saved_beside_its_report(tmp_path):
    """A notebook's summary names the JSON it saved into its output_dir (result_json); the index links it there,
    inside the reports folder, and refuses a name that leads elsewhere or to nothing."""
    reports_dir = tmp_path / "reports"
    output_dir = reports_dir / "06_runs_compared"
    output_dir.mkdir(parents=True)
    (output_dir / "runs_compared.json").write_text(json.dumps({"headline": "mean AUROC b - a +0.010"}))
    (tmp_path / "outside.json").write_text("{}")
    link = reports.result_json_link("runs_compared.json", output_dir)
    assert link == "06_runs_compared/runs_compared.json"
    for bad in ("../../outside.json", str(tmp_path / "outside.json"), "missing.json", "report_summary.txt", None):
        with pytest.raises(ValueError, match="result_json"):
            reports.result_json_link(bad, output_dir)
    (reports_dir / "06_runs_compared.html").write_text("<html></html>")
    reports.write_index([{"notebook": "06_runs_compared", "status": "ok", "result_json": link},
                         {"notebook": "07_gone", "status": "ok", "result_json": "07_gone/x.json"},
                         {"notebook": "08_out", "status": "ok", "result_json": "../outside.json"}], "p", reports_dir)
    page = (reports_dir / "index.html").read_text()
    hrefs = re.findall(r"href='([^']+\.json)'", page)
    assert hrefs == ["06_runs_compared/runs_compared.json"]  # none to a missing file or out of the reports
    assert json.loads((reports_dir / hrefs[0]).read_text())["headline"] == "mean AUROC b - a +0.010"


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


def test_every_table_prints_counts_with_separators_measures_to_3_decimals_and_intervals_in_one_column():
    import numpy as np
    import pandas as pd

    from cxrutils.show.display import table

    frame = pd.DataFrame({
        "patient_id": [30805, 12], "images": [112120, 7], "AUROC": [0.81149, np.nan], "CI low": [0.78861, np.nan],
        "CI high": [0.83550, np.nan], "percent": [53.83, 0.2], "count": [60361.0, 1.0], "p (Holm)": [0.01234, 1.0],
        "note": ["", "too few positives"],
    }, index=["Atelectasis", "Hernia"])
    html = table(frame, caption="test").to_html()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert cells[:7] == ["30805", "112,120", "0.811 [0.789, 0.836]", "53.83", "60,361", "0.012", ""]
    assert cells[7:12] == ["12", "7", "—", "0.20", "1"]
    assert "AUROC [95% CI]" in html and "CI low" not in html and "<caption>test</caption>" in html
    listing = table(pd.Series({"images": 112120, "median age (years)": 49.5}, dtype=object).to_frame("value"))
    assert re.findall(r"<td[^>]*>([^<]*)</td>", listing.to_html()) == ["112,120", "49.500"]
    differences = table(pd.DataFrame({"F": [0.0123, np.nan]}), signed=True).to_html()
    assert re.findall(r"<td[^>]*>([^<]*)</td>", differences) == ["+0.012", "—"]
    settings = table(pd.Series({"lr": 0.0001, "epochs": 12}, dtype=object).to_frame("value"), formats={"value": str})
    assert re.findall(r"<td[^>]*>([^<]*)</td>", settings.to_html()) == ["0.0001", "12"]


def _notebook_with(cells, path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells
    notebook.metadata["kernelspec"] = {"name": "cxrutils", "display_name": "Python (cxrutils)", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_a_report_opens_with_a_link_to_the_index_and_its_sections_and_loads_nothing_from_the_internet(tmp_path):
    from cxrutils.publish.notebook_html import export_html

    executed = _notebook_with([
        nbformat.v4.new_markdown_cell("# 09 · A new notebook\n\nWhat it shows."),
        nbformat.v4.new_markdown_cell("## 1. Data & split\n\ntext"),
        nbformat.v4.new_markdown_cell("## 2. Results\n\n### a detail, not listed"),
    ], tmp_path / "09_new.ipynb")
    page = export_html(executed, tmp_path / "09_new.html").read_text()
    navigation = page[page.index("<nav class='cxr-nav'"):page.index("</nav>")]
    assert "href='index.html'" in navigation
    ids = re.findall(r'<h2 id="([^"]+)"', page)
    assert len(ids) == 2 and re.findall(r"href='#([^']+)'", navigation) == ids
    assert re.findall(r"<li><a [^>]*>([^<]*)</a></li>", navigation) == ["1. Data &amp; split", "2. Results"]
    assert page.index("<nav class='cxr-nav'") < page.index("09 · A new notebook")
    assert "<script" not in page and "cdnjs" not in page
    with_tex = _notebook_with([nbformat.v4.new_markdown_cell("## Loss\n\n$L = -\\sum y \\log p$")], tmp_path / "t.ipynb")
    assert "mathjax" in export_html(with_tex, tmp_path / "t.html").read_text().lower()  # kept where it is needed


def test_the_headline_figure_becomes_the_index_thumbnail_beside_the_status(tmp_path):
    import base64
    import io

    from PIL import Image

    from cxrutils.publish.notebook_html import write_thumbnail

    buffer = io.BytesIO()
    Image.new("RGB", (1200, 600), "white").save(buffer, format="PNG")
    figure = nbformat.v4.new_code_cell("plots.roc_curves(...)")
    figure.metadata["tags"] = ["headline-figure"]
    figure.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue())
                                                                   .decode(), "text/plain": "<Figure>"})]
    executed = _notebook_with([nbformat.v4.new_code_cell("x = 1"), figure], tmp_path / "03_x.ipynb")
    thumbnail = write_thumbnail(executed, tmp_path / "03_x")
    with Image.open(thumbnail) as image:
        assert image.size == (360, 180)
    assert write_thumbnail(_notebook_with([], tmp_path / "01_y.ipynb"), tmp_path / "01_y") is None
    (tmp_path / "03_x.html").write_text("<html></html>")
    reports.write_index([{"notebook": "03_x", "status": "ok", "run_seconds": 75.9, "thumbnail": "03_x/thumbnail.png",
                          "headline": "mean AUROC 0.811 [0.789, 0.836] (test, n=424 images)"}], "demo", tmp_path)
    row = (tmp_path / "index.html").read_text().split("<tr>")[-1]
    assert row.index("ok") < row.index("src='03_x/thumbnail.png'") < row.index("mean AUROC 0.811 [0.789, 0.836]")
    assert "1 min 16 s" in row


def test_pages_are_written_whole_and_readable_like_any_file(tmp_path):
    """Reports are shared and served: the atomic writer must not leave them readable by their owner only."""
    import os

    from cxrutils import files

    mask = os.umask(0o022)
    try:
        page = files.atomic_write_text(tmp_path / "index.html", "<html></html>")
    finally:
        os.umask(mask)
    assert page.read_text() == "<html></html>" and page.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]  # no temporary file left behind


def test_a_notebook_that_never_writes_its_summary_fails_the_run_and_the_later_ones_are_not_run(tmp_path,
                                                                                                monkeypatch):
    """Finishing without report_summary.json (its last cells skipped or never reached) is not "ok"; like any
    failure it stops the run with exit code 1 and the index marks the later notebooks "not run"."""
    quiet = _notebook(tmp_path / "notebooks" / "01_quiet.ipynb", "finished = True  # but never reports")
    later = _notebook(tmp_path / "notebooks" / "02_later.ipynb",
                      "from cxrutils.summary import write_summary\nwrite_summary(output_dir, headline='ran')")
    monkeypatch.setattr(reports, "notebook_paths", lambda: [quiet, later])
    reports_dir = tmp_path / "reports"
    assert cli_main(["reports", "--profile", "demo", "--reports-dir", str(reports_dir)]) == 1
    runs_page = (reports_dir / "index.html").read_text()
    reports_dir = reports_dir / "demo"  # the demo profile's run, listed by the index of runs
    assert "href='demo/index.html'" in runs_page and "1 failed, 1 not run" in runs_page
    index = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())
    assert index["01_quiet"]["status"] == "failed"
    assert SUMMARY_NAME in index["01_quiet"]["status_reason"]
    assert index["02_later"]["status"] == "not run"
    assert not (reports_dir / "02_later.html").exists() and not (reports_dir / "02_later").exists()
    page = (reports_dir / "index.html").read_text()
    assert "not run" in page and "failed" in page


def test_a_second_run_gets_its_own_reports_folder_and_the_index_lists_both(tmp_path, monkeypatch):
    """reports/<run name>/ per run: a second run's pages never replace the first's, and reports/index.html lists
    each run with its statuses and headline, its names shown as text."""
    notebook = _notebook(tmp_path / "notebooks" / "01_note.ipynb",
                         "from cxrutils.summary import write_summary\nwrite_summary(output_dir, headline='ran')")
    monkeypatch.setattr(reports, "notebook_paths", lambda: [notebook])
    reports_dir = tmp_path / "reports"
    for name in ("first", "<i>second"):
        assert cli_main(["reports", "--profile", "demo", "--set", f"name={name}", "--reports-dir",
                         str(reports_dir)]) == 0
    for name in ("first", "<i>second"):
        assert (reports_dir / name / "01_note.html").is_file()
        assert json.loads((reports_dir / name / reports.INDEX_JSON_NAME).read_text())["01_note"]["status"] == "ok"
        assert "href='../index.html'" in (reports_dir / name / "index.html").read_text()
    runs_page = (reports_dir / "index.html").read_text()
    assert "href='first/index.html'" in runs_page and "href='%3Ci%3Esecond/index.html'" in runs_page
    assert "<i>second" not in runs_page and "&lt;i&gt;second" in runs_page and runs_page.count("1 ok") == 2
    # Newest first: the second run's row comes before the first's.
    assert runs_page.index("%3Ci%3Esecond") < runs_page.index("first/index.html")

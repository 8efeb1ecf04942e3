"""The reports as a reader gets them: rendered in headless Chromium, and the terminal of the run that made them.

Without Chromium these tests skip and say how to install it; CI sets CXRUTILS_REQUIRE_BROWSER=1
(.ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from cxrutils.paths import REPORTS_DIR
from cxrutils.publish import browser as browser_check
from cxrutils.publish import runner as reports

pytestmark = pytest.mark.notebook

REQUIRE_VARIABLE = "CXRUTILS_REQUIRE_BROWSER"
NOTEBOOKS = ["01_eda", "02_train", "03_evaluate", "04_txv_comparison", "05_inference"]
SCREENSHOTS = REPORTS_DIR / "browser_check"  # kept by CI as artefacts
TQDM_REFRESH = re.compile(r"\d+%\|.*\|\s*\d+/\d+ \[")


@pytest.fixture(scope="session")
def chromium() -> str:
    found = browser_check.find_browser()
    if found is None:
        message = f"headless Chromium is needed for the browser check: {browser_check.INSTALL_HINT}"
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"{REQUIRE_VARIABLE} is set and {message}")
        pytest.skip(message)
    return found


@pytest.fixture
def reports_dir(rendered_reports):
    assert rendered_reports.returncode == 0, rendered_reports.terminal[-4000:]
    return rendered_reports.reports_dir


def test_every_report_reads_cleanly_in_chromium(reports_dir, chromium):
    check = browser_check.check_reports(reports_dir, screenshot_dir=SCREENSHOTS, screenshot_report="03_evaluate.html",
                                        browser=chromium)
    assert check.problems == []
    assert [page.page for page in check.pages] == ["index.html", *[f"{n}.html" for n in NOTEBOOKS], "model_card.html"]
    assert (SCREENSHOTS / "index.png").stat().st_size > 10_000 and (SCREENSHOTS / "03_evaluate.png").stat().st_size > 10_000


def test_a_broken_link_a_missing_figure_a_script_error_and_debris_each_fail_the_check(reports_dir, chromium, tmp_path):
    broken = Path(shutil.copytree(reports_dir, tmp_path / "reports"))
    index = broken / "index.html"
    index.write_text(index.read_text().replace("href='02_train.html'", "href='02_trian.html'"))
    (broken / "03_evaluate" / "thumbnail.png").unlink()
    train = broken / "02_train.html"
    train.write_text(train.read_text().replace(
        "</main>", '<div data-mime-type="application/vnd.jupyter.stderr"><pre>epoch 1/2:  33%|###  | 1/3 '
                   "[00:16&lt;00:32, 16.18s/batch]</pre></div></main>", 1))
    eda = broken / "01_eda.html"
    eda.write_text(eda.read_text().replace("</main>", "<script>notDefined()</script></main>", 1))

    problems = browser_check.check_reports(broken, browser=chromium).problems
    assert "index.html: broken link '02_trian.html'" in "\n".join(problems)
    assert any(p.startswith("index.html: figure does not load: 03_evaluate/thumbnail.png") for p in problems)
    assert any(p.startswith("index.html: report 02_train.html is not linked from the index") for p in problems)
    assert any(p.startswith("02_train.html: stderr output in the page: epoch 1/2") for p in problems)
    assert any(p.startswith("02_train.html: progress-bar output in the page") for p in problems)
    assert any(p.startswith("01_eda.html: JavaScript error: ReferenceError: notDefined") for p in problems)
    assert not any(p.startswith(("03_evaluate.html", "04_txv_comparison.html")) for p in problems)


def test_the_terminal_shows_training_live_and_the_report_keeps_one_line_per_step(rendered_reports):
    terminal = rendered_reports.terminal
    assert rendered_reports.returncode == 0, terminal[-4000:]
    # Every epoch with its loss, validation AUROC and time left; the sections as they start; the bars' refreshes.
    assert re.search(r"epoch 1/2: train loss \d\.\d{4}, val loss \d\.\d{4}, val AUROC \d\.\d{4}.* left", terminal)
    assert re.search(r"epoch 2/2: train loss \d\.\d{4}, .*val AUROC \d\.\d{4}", terminal)
    assert "02_train: 4. Training" in terminal and "03_evaluate: 6. Localization" in terminal
    assert TQDM_REFRESH.search(terminal), "no live progress bar reached the terminal"
    assert "without encryption" not in terminal  # the kernels talk over IPC

    train = json.loads(Path(rendered_reports.reports_dir / "02_train.ipynb").read_text())
    streams = "".join("".join(o["text"]) for c in train["cells"] for o in c.get("outputs", [])
                      if o["output_type"] == "stream")
    assert all(o["name"] == "stdout" for c in train["cells"] for o in c.get("outputs", []) if o["output_type"] == "stream")
    assert re.search(r"cached \d+ films at 32 px in \d+ s", streams)
    assert len(re.findall(r"^epoch \d/2: .*val AUROC", streams, flags=re.M)) == 2 and " left" not in streams
    assert not TQDM_REFRESH.search(streams) and "\r" not in streams
    page = (rendered_reports.reports_dir / "02_train.html").read_text()
    assert not TQDM_REFRESH.search(page) and "batch/s" not in page


def test_each_report_opens_with_its_contents_and_the_index_shows_each_headline(reports_dir):
    evaluation = (reports_dir / "03_evaluate.html").read_text()
    navigation = evaluation[evaluation.index("<nav class='cxr-nav'"):evaluation.index("</nav>")]
    assert "href='index.html'" in navigation
    sections = [html.unescape(anchor) for anchor in re.findall(r"<h2 id=\"([^\"]+)\"", evaluation)]
    assert len(sections) >= 9 and [html.unescape(a) for a in re.findall(r"href='#([^']+)'", navigation)] == sections
    assert "cdnjs" not in evaluation and "<script" not in evaluation  # reads offline

    entries = json.loads((reports_dir / reports.INDEX_JSON_NAME).read_text())
    index = (reports_dir / "index.html").read_text()
    assert re.search(r"mean AUROC \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", entries["03_evaluate"]["headline"])
    row = next(r for r in index.split("<tr>") if "03_evaluate.html" in r)
    assert row.index("class='status ok'") < row.index("thumbnail.png") < row.index(entries["03_evaluate"]["headline"])
    assert (entries["02_train"]["thumbnail"], entries["01_eda"]["thumbnail"]) == ("02_train/thumbnail.png", None)


def test_a_raw_number_is_a_count_without_separators_or_a_decimal_to_five_significant_digits():
    from cxrutils.publish.browser import is_raw_number

    assert is_raw_number("112120") and is_raw_number("0.81234") and is_raw_number("-12.34567")
    assert not is_raw_number("0.00974")  # a small threshold to 3 significant digits: formatted
    assert not is_raw_number("0.812") and not is_raw_number("112,120") and not is_raw_number("0.0001")

"""Hostile folders and metadata through inference and the reports (issue 19): rc 0, every bad file listed, no
live markup, no live formula, nothing scored lost, one writer per output folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_files import FORMULA_NAME, SCRIPT_NAME, SECRET, hostile_folder, live_markup

from cxrutils.cli import main as cli_main
from cxrutils.engine import run_folder
from cxrutils.inference import infer_films
from cxrutils.inference.journal import JOURNAL_NAME
from cxrutils.inference.scoring import CSV_NAME, JSON_NAME, REFUSED, SCORED
from cxrutils.labels import FINDINGS
from cxrutils.locks import FolderLocked
from cxrutils.predictions import probability_column
from cxrutils.publish.inference_page import PAGE_NAME, InferenceOutput
from cxrutils.summary import SUMMARY_NAME
from cxrutils.text import FORMULA_STARTS

PROBABILITIES = [probability_column(f) for f in FINDINGS]


def _hostile(tmp_path: Path, tiny_phantom_root: Path) -> tuple[Path, dict[str, object]]:
    sources = sorted((tiny_phantom_root / "images").iterdir())[:5]
    return tmp_path / "in", hostile_folder(tmp_path / "in", sources, tmp_path / "outside")


def _no_formula(csv_path: Path) -> list[str]:
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    return [cell for column in raw.columns for cell in raw[column] if cell.startswith(FORMULA_STARTS)
            and not _is_number(cell)]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_the_command_scores_the_good_films_of_a_hostile_folder_and_lists_every_bad_one(tiny_run, tiny_phantom_root,
                                                                                          tmp_path):
    folder, names = _hostile(tmp_path, tiny_phantom_root)
    out = tmp_path / "out"
    assert cli_main(["infer", "--run", str(tiny_run), str(folder), "--out", str(out)]) == 0

    raw = pd.read_csv(out / CSV_NAME, dtype=str, keep_default_na=False).set_index("image")
    scored = sorted(raw.index[raw["status"] == SCORED])
    assert scored == sorted([SCRIPT_NAME, "'" + FORMULA_NAME, "$\\frac{$.png", "plain.png", "bad\\xff\\xfe.png"])
    assert sorted(raw.index[raw["status"] == REFUSED]) == sorted(names["bad"])
    assert _no_formula(out / CSV_NAME) == []
    document = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))  # strict JSON, valid UTF-8
    assert document["summary"]["scored"] == 5 and document["summary"]["refused"] == 7
    page = (out / PAGE_NAME).read_text(encoding="utf-8")
    assert live_markup(page) == [] and "Modality &lt;IMG SRC=X ONERROR=ALERT(4)&gt; is not a radiograph" in page
    for written in out.rglob("*"):
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written
    assert not (out / JOURNAL_NAME).exists()
    pictures = raw.loc[raw["status"] == SCORED, "film_picture"]
    assert all((out / picture).is_file() for picture in pictures) and len(set(pictures)) == 5


class _Crash(Exception):
    pass


def test_a_crash_at_film_n_keeps_the_films_before_it_and_the_next_run_continues(tiny_run, tiny_phantom_root, tmp_path):
    films = sorted((tiny_phantom_root / "images").iterdir())[:12]
    out = tmp_path / "out"
    output = InferenceOutput(out)
    seen: list[str] = []

    def crash_at_the_fifth(film):
        output.on_film(film)
        seen.append(film.record.image)
        if len(seen) == 5:
            raise _Crash

    with pytest.raises(_Crash):
        infer_films(tiny_run, films, on_film=crash_at_the_fifth, journal=output.journal, batch_size=4,
                    show_progress=False)
    output.close()
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 1 + 4  # the identity, then films 1..4: the fifth crashed before it was recorded

    again = InferenceOutput(out)
    resumed: list[bool] = []

    def note(film):
        again.on_film(film)
        resumed.append(film.resumed)

    result = infer_films(tiny_run, films, on_film=note, journal=again.journal, batch_size=4, show_progress=False)
    again.finish(result)
    assert sum(resumed) == 4 and len(resumed) == 12 and not (out / JOURNAL_NAME).exists()
    uninterrupted = infer_films(tiny_run, films, batch_size=4, show_progress=False, with_gradcam=False)
    np.testing.assert_allclose(result.table[PROBABILITIES].to_numpy(), uninterrupted.table[PROBABILITIES].to_numpy(),
                               atol=1e-6)
    table = pd.read_csv(out / CSV_NAME, dtype=str, keep_default_na=False)
    assert all((out / picture).is_file() for picture in table["film_picture"])


def test_only_the_films_asked_for_keep_their_pixels(tiny_run, tiny_phantom_root):
    films = sorted((tiny_phantom_root / "images").iterdir())[:6]
    result = infer_films(tiny_run, films, keep_films=2, show_progress=False)
    assert result.n_scored == 6 and len(result.films) == 2
    assert all(film.pixels.size for film in result.films)


def test_a_second_run_into_the_same_output_folder_stops_at_once_naming_the_first(tmp_path):
    first = InferenceOutput(tmp_path / "out")
    with pytest.raises(FolderLocked, match=str(os.getpid())):
        InferenceOutput(tmp_path / "out")
    first.close()
    InferenceOutput(tmp_path / "out").close()  # free again once the first has finished


@pytest.mark.notebook
def test_notebook_05_on_a_hostile_folder_runs_lists_and_shows_only_text(tiny_run, tiny_phantom_root, tmp_path):
    folder, names = _hostile(tmp_path, tiny_phantom_root)
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))
    reports_dir = tmp_path / "reports"
    code = cli_main(["reports", "--profile", "demo", "--only", "05", "--set", f"runs_dir={run_dir.parent}",
                         "--set", f"name={run_dir.name}",
                         "--set", f"data_root={run_folder.read_config(run_dir)['data_root']}",
                         "--set", f"paths=['{folder}']", "--set", "max_films_shown=2",
                         "--reports-dir", str(reports_dir)])
    assert code == 0
    reports_dir = reports_dir / run_dir.name  # each run's reports in their own folder
    summary = json.loads((reports_dir / "05_inference" / SUMMARY_NAME).read_text())
    assert (summary["scored"], summary["refused"], summary["films_kept_in_memory"]) == (5, 7, 2)
    assert "3 more scored films are not drawn here" in (reports_dir / "05_inference.html").read_text("utf-8")
    page = (reports_dir / "05_inference.html").read_text(encoding="utf-8")
    assert live_markup(page) == [] and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "FIFO" in page and "outside the folder given" in page and "decompression-bomb" in page
    assert live_markup((reports_dir / "05_inference" / PAGE_NAME).read_text(encoding="utf-8")) == []
    assert _no_formula(reports_dir / "05_inference" / CSV_NAME) == []


@pytest.mark.notebook
def test_the_eda_of_a_root_with_markup_in_its_metadata_and_odd_files_shows_only_text(phantom_copy, tmp_path):
    metadata_csv = phantom_copy / "Data_Entry_2017.csv"
    metadata = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False)
    metadata.loc[0, "View Position"] = "<img src=x onerror=alert(6)>"
    metadata.loc[1, "Patient Gender"] = "<script>alert(7)</script>"
    metadata.to_csv(metadata_csv, index=False)
    images = phantom_copy / "images"
    listed = sorted(images.iterdir())
    listed[2].unlink()
    os.mkfifo(listed[2])  # a FIFO where a listed film should be
    shutil.copyfile(listed[3], images / SCRIPT_NAME)
    shutil.copyfile(listed[3], images / FORMULA_NAME)
    (images / "loop").symlink_to(images, target_is_directory=True)
    reports_dir = tmp_path / "reports"
    code = cli_main(["reports", "--profile", "demo", "--only", "01_eda", "--set", f"data_root={phantom_copy}",
                         "--set", "integrity_check=quick", "--reports-dir", str(reports_dir)])
    assert code == 0
    reports_dir = reports_dir / "demo"  # the demo profile's run
    summary = json.loads((reports_dir / "01_eda" / SUMMARY_NAME).read_text())
    problems = {p["image"]: p["problem"] for p in summary["problems"]}
    assert "FIFO" in problems[listed[2].name] and SCRIPT_NAME in problems and FORMULA_NAME in problems
    page = (reports_dir / "01_eda.html").read_text(encoding="utf-8")
    assert live_markup(page) == [] and "&lt;img src=x onerror=alert(6)&gt;" in page
    assert _no_formula(reports_dir / "01_eda" / "file_problems.csv") == []

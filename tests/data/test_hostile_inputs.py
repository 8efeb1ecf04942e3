"""Hostile and odd inputs (issue 19): nothing a folder or a file name holds crashes, hangs, leaks or scripts a report."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from conftest import write_png
from hostile_files import (
    FORMULA_BODY_PART,
    FORMULA_NAME,
    MARKUP_MODALITY,
    NOT_UTF8_NAME,
    SCRIPT_NAME,
    SECRET,
    dicom_claiming,
    hostile_folder,
    live_markup,
    png_declaring,
)

from cxrutils import files
from cxrutils.data.cache import ImageCache, build_cache
from cxrutils.data.dicom import read_dicom
from cxrutils.data.eda import write_problems
from cxrutils.data.film_files import ImageReadError
from cxrutils.data.images import film_format, full_integrity_problem, quick_integrity_problem, read_image
from cxrutils.data.layout import index_images
from cxrutils.inference.films import collect_films, inspect_films
from cxrutils.show.display import table
from cxrutils.text import FORMULA_STARTS, from_spreadsheet_cell, html_text, printable, spreadsheet_cell

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO opened for reading blocks until a writer comes: fail in seconds rather than hang the suite."""
    def hung(*_):
        raise TimeoutError("hung for 20 s: a FIFO or a link loop was opened or walked")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- text


def test_text_from_outside_is_text_in_html_csv_and_json():
    not_utf8 = os.fsdecode(NOT_UTF8_NAME)
    with pytest.raises(UnicodeEncodeError):
        not_utf8.encode("utf-8")
    assert printable(not_utf8) == "bad\\xff\\xfe.png" and printable(not_utf8).encode("utf-8")
    assert html_text(SCRIPT_NAME) == "&lt;img src=x onerror=alert(1)&gt;.png"
    assert html_text("a'b\"c") == "a&#x27;b&quot;c"  # safe inside attributes too
    for start in FORMULA_STARTS:
        cell = spreadsheet_cell(f"{start}1+1")
        assert cell == f"'{start}1+1" and from_spreadsheet_cell(cell) == f"{start}1+1"
    assert [spreadsheet_cell(v) for v in ("-0.5", "+3", "1e-3", 7, -2.5, "plain")] == ["-0.5", "+3", "1e-3", 7, -2.5,
                                                                                        "plain"]
    assert from_spreadsheet_cell(spreadsheet_cell("'quoted")) == "'quoted"
    payload = json.loads(json.dumps(files.plain({"image": not_utf8, not_utf8: 1})))
    assert payload == {"image": "bad\\xff\\xfe.png", "bad\\xff\\xfe.png": 1}


def test_csv_for_spreadsheets_runs_no_formula_keeps_numbers_and_reads_back_exactly(tmp_path):
    frame = pd.DataFrame({"image": [FORMULA_NAME, "@SUM(A1).png", "-2+3.png", "\tx.png", "ok.png", "'q.png"],
                          "reason": [FORMULA_BODY_PART, "", "", "", "", ""],
                          "probability": [-0.5, 0.25, 1.0, 0.0, 0.5, 0.1], "count": [-1, 2, 3, 4, 5, 6]})
    path = files.write_csv(tmp_path / "t.csv", frame)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    formula_cells = [cell for column in ("image", "reason") for cell in raw[column] if cell.startswith(FORMULA_STARTS)]
    assert formula_cells == []
    assert raw["probability"].tolist()[0] == "-0.5" and raw["count"].tolist()[0] == "-1"  # numbers untouched
    back = files.read_csv_text(path)
    assert back["image"].tolist() == frame["image"].tolist() and back["reason"].tolist() == frame["reason"].tolist()


def test_every_report_table_shows_names_and_fields_as_text():
    frame = pd.DataFrame({"image": [SCRIPT_NAME, os.fsdecode(NOT_UTF8_NAME)], "view": [MARKUP_MODALITY, "PA"],
                          "images": [1200, 3]}, index=["<script>alert(2)</script>", "b"])
    frame.columns = ["image", "<img src=x onerror=alert(3)>", "images"]
    page = table(frame, caption="<script>alert(5)</script>").to_html()
    assert live_markup(page) == [] and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "1,200" in page and "bad\\xff\\xfe.png" in page
    page.encode("utf-8")  # writable: no lone surrogate left


# --------------------------------------------------------------------------- opening files


def test_a_decompression_bomb_is_refused_from_its_header_everywhere(tmp_path):
    bomb = png_declaring(tmp_path / "bomb.png", 60_000, 60_000)
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImageReadError, match="decompression-bomb|above the limit"):
        read_image(bomb)
    assert "decompression-bomb" in full_integrity_problem(bomb) or "limit" in full_integrity_problem(bomb)
    huge = png_declaring(tmp_path / "huge.png", 12_600, 12_600, bit_depth=16)
    with pytest.raises(ImageReadError, match="12,600 x 12,600 declared in the header.*above the limit"):
        read_image(huge)
    with pytest.raises(ImageReadError, match="Rows 65,535 x Columns 65,535.*above the limit"):
        read_dicom(dicom_claiming(tmp_path / "huge.dcm", 65_535, 65_535))
    # The limit is a setting: a real film above it is refused, and allowed once the limit is raised.
    film = write_png(tmp_path / "film.png", size=100)
    with pytest.raises(ImageReadError, match="10,000 pixels, above the limit of 5,000"):
        read_image(film, max_pixels=5_000)
    assert read_image(film, max_pixels=10_000).shape == (100, 100)


def test_the_pixel_limit_can_be_set_from_the_environment(tmp_path, monkeypatch):
    film = write_png(tmp_path / "film.png", size=100)
    monkeypatch.setenv("CXRUTILS_MAX_IMAGE_PIXELS", "9_999")
    with pytest.raises(ImageReadError, match="above the limit of 9,999"):
        read_image(film)
    monkeypatch.setenv("CXRUTILS_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="CXRUTILS_MAX_IMAGE_PIXELS='lots' is not a number"):
        read_image(film)


def test_a_fifo_named_like_a_film_is_never_opened(tmp_path):
    fifo = tmp_path / "00000001_000.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="FIFO"):
        read_image(fifo)
    with pytest.raises(ImageReadError, match="FIFO"):
        film_format(fifo)
    assert "FIFO" in quick_integrity_problem(fifo) and "FIFO" in full_integrity_problem(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert "a folder, not a regular file" in quick_integrity_problem(folder)


def test_no_refusal_quotes_a_files_bytes(tmp_path):
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "copy.png").write_text(SECRET)  # a text file named like a film
    reasons = [quick_integrity_problem(inside / "copy.png"), full_integrity_problem(inside / "copy.png")]
    (inside / "linked.png").symlink_to(secret)
    records = inspect_films(collect_films([inside])[0], show_progress=False)
    reasons += [record.refusal for record in records]
    assert all(reason for reason in reasons) and not any("SECRET" in reason or "root:" in reason for reason in reasons)
    linked = next(record for record in records if record.image == "linked.png")
    assert linked.refusal == "symbolic link to a file outside the folder given: not followed"


def test_the_dataset_walk_lists_a_fifo_and_survives_a_link_loop(tmp_path):
    images = tmp_path / "images"
    write_png(images / "00000001_000.png")
    write_png(images / "sub" / "00000002_000.png")
    os.mkfifo(images / "00000003_000.png")
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)
    (images / "self").symlink_to(images / "self")  # a link to itself
    index = index_images(images, ["00000001_000.png", "00000002_000.png", "00000003_000.png"])
    assert sorted(index.paths.index) == ["00000001_000.png", "00000002_000.png"] and index.missing == []
    assert list(index.not_files) == ["00000003_000.png"] and "FIFO" in index.not_files["00000003_000.png"][1]
    assert index.duplicates == {}


def test_the_cache_build_skips_bombs_fifos_and_missing_files_and_finishes(tmp_path):
    good = [write_png(tmp_path / "films" / f"{k:08d}_000.png", size=40, value=40 + k) for k in range(3)]
    bomb = png_declaring(tmp_path / "films" / "bomb.png", 60_000, 60_000)
    huge = dicom_claiming(tmp_path / "films" / "huge.dcm", 65_535, 65_535)
    fifo = tmp_path / "films" / "fifo.png"
    os.mkfifo(fifo)
    paths = pd.Series({p.name: str(p) for p in [*good, bomb, huge, fifo]} | {"gone.png": str(tmp_path / "gone.png"),
                                                                              FORMULA_NAME: str(bomb)})
    cache = build_cache(paths, tmp_path / "cache", size=16, workers=1, skip_bad=True)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["state"] == "complete"
    assert sorted(cache.usable_names) == sorted(p.name for p in good)
    reasons = cache.bad_files.set_index("image")["reason"]
    assert set(reasons.index) == {"bomb.png", "huge.dcm", "fifo.png", "gone.png", FORMULA_NAME}
    assert "FIFO" in reasons["fifo.png"] and "above the limit" in reasons["huge.dcm"]
    raw = pd.read_csv(tmp_path / "cache" / "bad_files.csv", dtype=str)
    assert not raw["image"].str.startswith("=").any()  # no formula for a spreadsheet
    assert ImageCache.open(tmp_path / "cache").bad_files["image"].tolist() == cache.bad_files["image"].tolist()


def test_file_problems_with_names_that_are_not_utf8_or_formulas_are_written(tmp_path):
    problems = pd.DataFrame({"image": [os.fsdecode(NOT_UTF8_NAME), FORMULA_NAME],
                             "problem": ["file present, not in the metadata"] * 2, "path": ["", ""]})
    path = write_problems(problems, tmp_path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert raw["image"].tolist() == ["bad\\xff\\xfe.png", "'=1+1.png"]


def test_inference_collects_a_hostile_folder_without_hanging_or_following_links_out(tmp_path, tiny_phantom_root):
    sources = sorted((tiny_phantom_root / "images").iterdir())[:5]
    names = hostile_folder(tmp_path / "in", sources, tmp_path / "outside")
    found, _ = collect_films([tmp_path / "in"])
    records = {record.image: record for record in inspect_films(found, show_progress=False)}
    for name in [*names["good"], names["not_utf8"]]:
        assert records[name].refusal is None, (name, records[name].refusal)
    reasons = {name: records[name].refusal for name in names["bad"]}
    assert "decompression-bomb" in reasons["bomb.png"] and "above the limit" in reasons["huge_16bit.png"]
    assert "above the limit" in reasons["huge_rle.dcm"] and "is not a radiograph" in reasons["markup_modality.dcm"]
    assert "FIFO" in reasons["fifo.png"] and "outside the folder" in reasons["private.png"]
    assert "link to a folder" in reasons["loop"]
    assert not any(SECRET in reason for reason in reasons.values())
    assert Path(tmp_path / "in").is_dir() and records["markup_modality.dcm"].facts["body_part"] == FORMULA_BODY_PART.upper()

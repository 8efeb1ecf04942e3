"""A scored film's figure (``cxrutils.show.inference_view``): drawn without IPython, and the one drawing that
the inference page saves and notebook 05 shows."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from cxrutils.inference.films import FilmRecord
from cxrutils.inference.scoring import ScoredFilm
from cxrutils.labels import FINDINGS
from cxrutils.paths import NOTEBOOKS_DIR
from cxrutils.publish import inference_page
from cxrutils.show import inference_view

POSITIVE = ("Effusion", "Mass")
NO_THRESHOLD = "Hernia"


def _thresholds() -> np.ndarray:
    cuts = np.full(len(FINDINGS), 0.5)
    cuts[FINDINGS.index(NO_THRESHOLD)] = np.nan
    return cuts


def _film(name: str = "$\\frac{$ <b>.png", positives: tuple[str, ...] = POSITIVE, side: int = 64) -> ScoredFilm:
    """A film scored at ``_thresholds()``: ``positives`` at 0.8, every other finding at 0.2."""
    rng = np.random.default_rng(0)
    probabilities = np.array([0.8 if finding in positives else 0.2 for finding in FINDINGS])
    cuts = _thresholds()
    calls = np.where(np.isnan(cuts), np.nan, (probabilities >= np.nan_to_num(cuts, nan=np.inf)).astype(float))
    heatmaps = {finding: rng.random((side // 2, side // 2)).astype(np.float32) for finding in positives}
    facts = {"source_format": "PNG", "width": side, "height": side, "view": ""}
    record = FilmRecord(Path("/films") / name, name, facts)
    return ScoredFilm(record, probabilities, calls, rng.integers(0, 256, (side, side), dtype=np.uint8), heatmaps)


def _images(figure) -> list[np.ndarray]:
    return [ax.images[0].get_array() for ax in figure.axes if ax.images]


def test_the_figure_shows_the_film_its_probabilities_and_an_overlay_per_positive_call():
    film = _film()
    figure = inference_view.film_figure(film, _thresholds())
    drawing = inference_view.draw_film(film)

    film_axes, bar_axes, *overlay_axes = figure.axes
    assert film_axes.images[0].get_array().shape == (256, 256)  # the demo's 64 px, enlarged to be seen
    np.testing.assert_array_equal(film_axes.images[0].get_array(), drawing.film)
    shown = [ax for ax in overlay_axes if ax.images]
    assert [ax.get_title() for ax in shown] == [f"{finding} 0.800" for finding in POSITIVE]
    for ax, finding in zip(shown, POSITIVE):
        np.testing.assert_array_equal(ax.images[0].get_array(), drawing.overlays[finding])
    assert len(overlay_axes) == inference_view.OVERLAY_COLUMNS  # one row, the empty panels hidden

    colours = {finding: bar.get_facecolor() for finding, bar in zip(FINDINGS, bar_axes.patches)}
    assert colours["Effusion"] == to_rgba(inference_view.CALLED)
    assert colours["Atelectasis"] == to_rgba(inference_view.NOT_CALLED)
    assert colours[NO_THRESHOLD] == to_rgba(inference_view.NO_THRESHOLD)
    assert len(bar_axes.lines) == len(FINDINGS) - 1  # a threshold tick for every finding that has one
    assert "Effusion, Mass" in bar_axes.get_title()
    figure.savefig(io.BytesIO(), format="png")  # the film's name holds $...$: shown as text, never mathtext
    assert r"\$\frac{\$" in film_axes.get_title()  # escaped, so mathtext does not parse (or fail on) it


def test_a_film_with_no_positive_call_is_the_film_and_its_bars_only():
    figure = inference_view.film_figure(_film(positives=()), _thresholds())
    assert len(figure.axes) == 2 and "called positive: none" in figure.axes[1].get_title()
    assert "view not recorded" in figure.axes[0].get_title()


def test_a_film_without_its_pixels_or_thresholds_of_the_wrong_shape_are_refused_by_name():
    film = _film(name="resumed.png")
    film.pixels = np.empty((0, 0), np.uint8)
    with pytest.raises(ValueError, match="resumed.png.*pixels were not kept"):
        inference_view.film_figure(film, _thresholds())
    with pytest.raises(ValueError, match=r"thresholds of shape \(13,\)"):
        inference_view.film_figure(_film(), _thresholds()[:13])


def test_the_figure_and_the_page_pictures_are_drawn_without_ipython_or_pyplot(tmp_path):
    # A fresh interpreter in which IPython cannot be imported at all: the command line has no display.
    script = textwrap.dedent(f"""
        import io, sys
        sys.modules["IPython"] = None
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_inference_view import _film, _thresholds
        from cxrutils.publish.inference_page import FilmPictures
        from cxrutils.show.inference_view import film_figure
        png = io.BytesIO()
        film_figure(_film(), _thresholds()).savefig(png, format="png")
        pictures = FilmPictures(sys.argv[1])
        pictures(_film())
        (drawn,) = pictures.films.values()
        print(png.getvalue()[:4] == b"\\x89PNG", len(drawn["overlays"]), "matplotlib.pyplot" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "2", "False"]
    assert len(list((tmp_path / inference_page.OVERLAYS_DIR).glob(f"*{inference_page.OVERLAY_SUFFIX}"))) == 2


def test_the_page_and_notebook_05_draw_a_film_with_the_same_function(tmp_path, monkeypatch):
    drawn: list[str] = []
    draw_film = inference_view.draw_film

    def spy(film: ScoredFilm) -> inference_view.FilmDrawing:
        drawn.append(film.record.image)
        return draw_film(film)

    monkeypatch.setattr(inference_view, "draw_film", spy)
    film = _film(name="chest.png")
    pictures = inference_page.FilmPictures(tmp_path)
    pictures(film)
    figure = inference_view.film_figure(film, _thresholds())
    assert drawn == ["chest.png", "chest.png"]  # the page's picture writer, then the notebook's figure

    files = pictures.films["chest.png"]
    page_pictures = [files["film"]] + [files["overlays"][finding] for finding in POSITIVE]
    assert files["film"] == f"{inference_page.FILMS_DIR}/{inference_page.picture_stem(film.record.path, 'chest.png')}.png"
    shown_pictures = _images(figure)
    assert len(shown_pictures) == len(page_pictures)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / page_pictures[0])), shown_pictures[0])  # lossless
    for saved, shown in zip(page_pictures[1:], shown_pictures[1:], strict=True):  # JPEG: a guide to the eye
        difference = np.abs(np.asarray(Image.open(tmp_path / saved)).astype(int) - shown.astype(int))
        assert difference.mean() < 2 and np.percentile(difference, 99) <= 12, saved

    notebook = nbformat.read(NOTEBOOKS_DIR / "05_inference.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "inference_view.film_figure(film, result.threshold_array)" in code
    # No second drawing of a film, and no thresholds rebuilt by hand from result.thresholds.
    for elsewhere in ("plots.", "overlay_picture", "film_picture", "result.thresholds", "FINDINGS"):
        assert elsewhere not in code, elsewhere
    assert all(not cell.outputs for cell in notebook.cells if cell.cell_type == "code")
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    for node in ast.parse(parameters.source).body:
        ast.literal_eval(node.value)  # literals only


def test_an_overlay_is_matplotlibs_jet_over_the_grey_film_to_one_grey_level():
    """The colour table gives the colours matplotlib's colormap call gives; the float32 blend is within one level of
    the float64 one."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    from cxrutils.show import inference_view

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    for heat in (np.clip(rng.normal(0.5, 0.3, (16, 16)), 0, 1), np.zeros((16, 16)), np.ones((16, 16)),
                 np.linspace(0, 1, 256).reshape(16, 16)):
        heat = heat.astype(np.float32)
        film = inference_view.film_picture(grey).astype(np.float32) / 255.0
        side = film.shape[0]
        resized = np.asarray(Image.fromarray(heat).resize((side, side), Image.Resampling.BILINEAR)).clip(0, 1)
        colours = colormaps["jet"](resized)[..., :3]
        expected = np.rint(((1 - inference_view.HEATMAP_ALPHA) * film[..., None]
                            + inference_view.HEATMAP_ALPHA * colours) * 255).clip(0, 255).astype(np.uint8)
        drawn = inference_view.overlay_picture(grey, heat).astype(int)
        assert drawn.shape == expected.shape and np.abs(drawn - expected).max() <= 1
        assert (drawn == expected).mean() > 0.9  # rounding, not a different colour


def _files(**identifiers: list[str]) -> pd.DataFrame:
    """An inference table of a PNG and a DICOM: every column notebook 05 shows, a path it does not, and the
    identifiers given (the others empty, as scoring writes them)."""
    frame = pd.DataFrame({"image": ["plain.png", "study/IM1"], "status": ["scored", "refused"],
                          "source_format": ["png", "dicom"], "width": [64, 128], "height": [64, 128],
                          "bits_stored": [8, 12], "view": ["", "LL"], "intensity": ["as stored", "window"],
                          "positive_findings": ["", ""], "notes": ["", ""], "path": ["/a/plain.png", "/a/study/IM1"]})
    for keyword in inference_view.PACS_IDENTIFIERS:
        frame[keyword] = identifiers.get(keyword, ["", ""])
    return frame


def test_the_table_of_files_shows_each_pacs_identifier_a_file_has_as_text():
    """Notebook 05's table of files: the DICOM's StudyInstanceUID, SOPInstanceUID and AccessionNumber where present
    (a column nobody has stays out), rendered as text: markup shown, never run; a formula shown as written."""
    from cxrutils.data import dicom
    from cxrutils.inference.films import FACT_COLUMNS
    from cxrutils.show.display import table

    assert inference_view.PACS_IDENTIFIERS == tuple(dicom._IDENTIFIER_FIELDS.values())  # the header's keywords
    assert set(inference_view.PACS_IDENTIFIERS) <= set(FACT_COLUMNS)  # and every inference row has them
    files = _files(StudyInstanceUID=["", "<script>alert(1)</script>"], SOPInstanceUID=["", "1.2.840.5"],
                   AccessionNumber=["", "=1+1"])
    shown = inference_view.files_table(files)
    assert list(shown.columns) == [*inference_view.FILE_TABLE_COLUMNS, "StudyInstanceUID", "SOPInstanceUID",
                                   "AccessionNumber"]
    assert shown.loc[1, "AccessionNumber"] == "=1+1" and shown.loc[0, "StudyInstanceUID"] == ""
    html = table(shown, index=False).to_html()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "=1+1" in html and "1.2.840.5" in html

    assert list(inference_view.files_table(_files()).columns) == list(inference_view.FILE_TABLE_COLUMNS)
    assert inference_view.pacs_identifiers(files.iloc[1]) == {
        "StudyInstanceUID": "<script>alert(1)</script>", "SOPInstanceUID": "1.2.840.5", "AccessionNumber": "=1+1"}
    assert inference_view.pacs_identifiers({"StudyInstanceUID": float("nan"), "AccessionNumber": None}) == {}

    notebook = nbformat.read(NOTEBOOKS_DIR / "05_inference.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "inference_view.files_table(result.table)" in code  # the notebook shows this table, not its own columns

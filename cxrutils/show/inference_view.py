"""How a scored film is drawn, for notebook 05 and the inference page alike.

``draw_film`` is the one drawing of a scored film (``cxrutils.inference.scoring.ScoredFilm``):
the film as the network got it (padded to a square, resized; enlarged to at least
``PICTURE_MIN_SIDE`` px to be seen) and, per finding called positive, its Grad-CAM
heatmap over it in jet colours. The inference page (``cxrutils.publish.inference_page``)
saves those pixels as its PNGs; ``film_figure`` lays the same pixels out beside the
film's 14 probabilities, thresholds and calls, which notebook 05 shows. So a film
looks the same in the notebook and on the page.

``files_table`` is notebook 05's table of every file, with the PACS identifiers
(``PACS_IDENTIFIERS``: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID,
AccessionNumber) that any file has; ``pacs_identifiers`` gives one row's, which the
page shows beside the film's facts and in its table of refused files.

Nothing here imports IPython or pyplot: the command line draws the page's pictures
without a display, and a figure is a plain ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from cxrutils.inference.scoring import ScoredFilm
from cxrutils.labels import FINDINGS
from cxrutils.text import figure_text

PICTURE_MIN_SIDE = 256  # small model inputs (the demo's 64 px) are enlarged to be seen
HEATMAP_ALPHA = 0.35  # as in the evaluation report's gallery
# matplotlib's jet as a table: a colormap call on floats bins them into its N levels exactly this way (x * N,
# truncated, the top clipped), so the table gives the same colours at a tenth of the cost of a call per overlay.
_JET_LEVELS = colormaps["jet"].N
_JET = colormaps["jet"](np.arange(_JET_LEVELS))[:, :3]
_JET_OVER_FILM = (HEATMAP_ALPHA * 255 * _JET).astype(np.float32)  # each colour's share of an overlay pixel
OVERLAY_COLUMNS = 4
CALLED, NOT_CALLED, NO_THRESHOLD = "#c44e52", "#4c72b0", "#bbbbbb"
# What links a result back to the PACS, by DICOM keyword: a DICOM's row holds them ("" where absent; a PNG has
# none). The table of files and the inference page show each one that a film has.
PACS_IDENTIFIERS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")
# The table of files notebook 05 shows: these columns, then each PACS identifier that any file has.
FILE_TABLE_COLUMNS = ("image", "status", "source_format", "width", "height", "bits_stored", "view", "intensity",
                      "positive_findings", "notes")


def pacs_identifiers(row: pd.Series | dict) -> dict[str, str]:
    """The PACS identifiers a file's row holds, by DICOM keyword, as text; the absent (empty, missing) left out."""
    present = {}
    for keyword in PACS_IDENTIFIERS:
        value = row.get(keyword)
        text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
        if text:
            present[keyword] = text
    return present


def files_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every file's row of an inference table, as notebook 05 shows it: ``FILE_TABLE_COLUMNS``, then each PACS
    identifier that at least one file has (as text, for ``cxrutils.show.display.table`` to escape)."""
    shown = [keyword for keyword in PACS_IDENTIFIERS
             if keyword in table and any(pacs_identifiers({keyword: value}) for value in table[keyword])]
    return table[[*FILE_TABLE_COLUMNS, *shown]].reset_index(drop=True)


def film_picture(pixels: np.ndarray) -> np.ndarray:
    """(S, S) uint8 film, enlarged to at least ``PICTURE_MIN_SIDE`` px."""
    side = pixels.shape[0]
    if side >= PICTURE_MIN_SIDE:
        return np.asarray(pixels, dtype=np.uint8)
    scale = int(np.ceil(PICTURE_MIN_SIDE / side))
    return np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((side * scale, side * scale),
                                                                               Image.Resampling.BILINEAR))


def overlay_picture(pixels: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """(D, D, 3) uint8: the film in grey with the [0, 1] heatmap over it in jet colours, at the film picture's size.

    Blended in float32 from a colour table already weighted by the heatmap's opacity: a pixel
    may differ by one grey level from a float64 blend, at a third of the cost (an overlay per
    positive call, several per film).
    """
    film = film_picture(pixels)
    side = film.shape[0]
    resized = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize(
        (side, side), Image.Resampling.BILINEAR)).clip(0, 1)
    levels = np.minimum((resized * _JET_LEVELS).astype(np.intp), _JET_LEVELS - 1)
    blended = (1 - HEATMAP_ALPHA) * film.astype(np.float32)[..., None] + _JET_OVER_FILM[levels]
    return np.rint(blended).clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FilmDrawing:
    """A scored film's pictures: the film (D, D) uint8, and finding -> its overlay (D, D, 3) uint8."""

    film: np.ndarray
    overlays: dict[str, np.ndarray]


def draw_film(film: ScoredFilm) -> FilmDrawing:
    """The film and an overlay per heatmap it carries (the findings called positive, in ``FINDINGS`` order)."""
    if film.pixels.size == 0:
        raise ValueError(f"{film.record.path}: its pixels were not kept (a film beyond keep_films, or one taken "
                         "from an unfinished run's journal); draw the films of result.films")
    picture = film_picture(film.pixels)  # enlarged once, for the film and each of its overlays
    return FilmDrawing(picture, {finding: overlay_picture(picture, heatmap) for finding, heatmap in film.heatmaps.items()})


def film_title(film: ScoredFilm) -> str:
    """The film's name, then its format, size and view, as its header gave them."""
    facts = film.record.facts
    view = facts.get("view") or "view not recorded"
    return f"{film.record.image}\n{facts.get('source_format', '')}, {facts.get('width')} x {facts.get('height')}, {view}"


def film_figure(film: ScoredFilm, thresholds: np.ndarray, columns: int = OVERLAY_COLUMNS) -> Figure:
    """The film beside its 14 probabilities, then a Grad-CAM overlay per finding called positive.

    ``thresholds`` (14,) in ``FINDINGS`` order, NaN where validation chose none
    (``InferenceResult.threshold_array``): a black tick on each bar. A bar is red where
    the finding is called positive, blue where not, grey where there is no threshold.
    The pictures are ``draw_film``'s, the ones the inference page saves.
    """
    cuts = np.asarray(thresholds, dtype=float)
    if cuts.shape != (len(FINDINGS),):
        raise ValueError(f"thresholds of shape {cuts.shape}: expected ({len(FINDINGS)},), one per finding in "
                         "FINDINGS order (InferenceResult.threshold_array)")
    drawing = draw_film(film)
    overlay_rows = -(-len(drawing.overlays) // columns)
    figure = Figure(figsize=(10, 3.8 + 2.7 * overlay_rows), layout="constrained")
    top, bottom = (figure.subfigures(2, 1, height_ratios=[3.8, 2.7 * overlay_rows]) if overlay_rows
                   else (figure, None))
    left, right = top.subplots(1, 2, width_ratios=[1, 1.6])
    left.imshow(drawing.film, cmap="gray", vmin=0, vmax=255)
    left.axis("off")
    left.set_title(figure_text(film_title(film)), fontsize=8)  # a film's name: a $ is not mathtext
    _probability_bars(right, film.probabilities, film.calls, cuts)
    positives = ", ".join(film.positive_findings) or "none"
    right.set_title(figure_text(f"called positive: {positives}"), fontsize=8)
    if bottom is not None:
        axes = bottom.subplots(overlay_rows, columns, squeeze=False).ravel()
        for ax, (finding, overlay) in zip(axes, drawing.overlays.items()):
            ax.imshow(overlay)
            ax.set_title(f"{finding} {film.probabilities[FINDINGS.index(finding)]:.3f}", fontsize=8)
        for ax in axes:
            ax.axis("off")
    return figure


def _probability_bars(ax: Axes, probabilities: np.ndarray, calls: np.ndarray, thresholds: np.ndarray) -> None:
    rows = np.arange(len(FINDINGS))
    colours = np.where(np.isnan(calls), NO_THRESHOLD, np.where(calls == 1, CALLED, NOT_CALLED))
    ax.barh(rows, probabilities, color=colours)
    for row, cut in zip(rows, thresholds):
        if not np.isnan(cut):
            ax.plot([cut, cut], [row - 0.4, row + 0.4], color="black", lw=1.6)
    ax.set_yticks(rows, FINDINGS, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (black: validation threshold; red: called; grey: no threshold)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)

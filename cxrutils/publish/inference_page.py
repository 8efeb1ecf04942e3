"""Inference on new films, published: each film as the network got it, a Grad-CAM overlay per positive call, one page.

``FilmPictures`` is handed to ``infer_films(on_film=...)`` and writes each scored
film's pictures under the output folder as its batch finishes, so no picture waits
in memory: ``films/<name>_<hash>.png`` (the film padded to a square and resized, as
the network got it, lossless) and ``overlays/<name>_<hash>__<finding>.jpg`` (its Grad-CAM
heatmap over it, jet colours; JPEG at quality 95 without chroma subsampling, a tenth of a
PNG's encoding time and a fifth of its size, for a picture that is a guide to the eye); ``<name>`` is the file name made safe and ``<hash>``
comes from the film's path, so a re-run names a film's pictures the same. The
pictures are ``cxrutils.show.inference_view.draw_film``'s, the drawing notebook 05
shows inline (``inference_view.film_figure``).
``write_page`` writes ``inference.html``: the summary, every refused file with its
reason, and each scored film with its 14 probabilities against the thresholds, its
calls, its overlays and what its header says; a DICOM's PACS identifiers
(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, AccessionNumber) beside its facts
or its refusal, so each result can be found again in the PACS. Every name and header
field on the page goes through ``cxrutils.text.html_text``: a file named
``<script>...`` is text.

``InferenceOutput`` is one inference run into one folder, as the command and
notebook 05 do it: the folder's lock (a second run into it stops at once, naming
the first), the pictures, the journal that keeps every finished film on disk, and
at the end the CSV, the JSON and the page.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from cxrutils import files
from cxrutils.inference.journal import InferenceJournal
from cxrutils.inference.scoring import REFUSED, SCORED, InferenceResult, ScoredFilm, call_column, write_results
from cxrutils.labels import FINDINGS
from cxrutils.locks import folder_lock
from cxrutils.predictions import probability_column
from cxrutils.show import inference_view
from cxrutils.text import html_text, printable

PAGE_NAME = "inference.html"
FILMS_DIR, OVERLAYS_DIR = "films", "overlays"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# zlib level 1, not PIL's 6: a 256-px film encodes in 4.5 ms instead of 17 (11% larger). Still PNG: lossless.
PNG_COMPRESS_LEVEL = 1
# The overlays, several per film, as JPEG: 0.3 ms to encode instead of 3 to 17, a fifth of the bytes (a folder of
# 100,000 films has about 370,000), within a few grey levels of the drawing (tested).
OVERLAY_SUFFIX = ".jpg"
OVERLAY_JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0}


def picture_stem(path: str | os.PathLike[str], image: str) -> str:
    """A file name for a film's pictures: its name made safe, and a hash of its path (unique, the same on a re-run)."""
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', Path(printable(image)).stem)[:60]}_{digest}"


class FilmPictures:
    """Writes a scored film's picture and overlays when called with it; ``films`` maps image -> its files."""

    def __init__(self, out_dir: str | os.PathLike[str], with_overlays: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.with_overlays = with_overlays
        self.films: dict[str, dict[str, Any]] = {}
        for folder in (FILMS_DIR, OVERLAYS_DIR):
            (self.out_dir / folder).mkdir(parents=True, exist_ok=True)

    def __call__(self, film: ScoredFilm) -> None:
        stem = picture_stem(film.record.path, film.record.image)
        picture = f"{FILMS_DIR}/{stem}.png"
        if film.resumed:  # scored by a run that stopped: its pictures are on disk already, if it drew them
            overlays = {finding: f"{OVERLAYS_DIR}/{stem}__{finding}{OVERLAY_SUFFIX}"
                        for finding in (film.positive_findings if self.with_overlays else [])}
            self.films[film.record.image] = {
                "film": picture if (self.out_dir / picture).is_file() else "",
                "overlays": {finding: name for finding, name in overlays.items() if (self.out_dir / name).is_file()}}
            return
        drawing = inference_view.draw_film(film)
        Image.fromarray(drawing.film).save(self.out_dir / picture, compress_level=PNG_COMPRESS_LEVEL)
        overlays = {}
        for finding, overlay in drawing.overlays.items():
            overlays[finding] = f"{OVERLAYS_DIR}/{stem}__{finding}{OVERLAY_SUFFIX}"
            Image.fromarray(overlay).save(self.out_dir / overlays[finding], **OVERLAY_JPEG)
        self.films[film.record.image] = {"film": picture, "overlays": overlays}

    def clear(self) -> None:
        """Remove the pictures a finished earlier run left here (a run that did not finish keeps them to resume)."""
        for folder in (FILMS_DIR, OVERLAYS_DIR):
            for old in (self.out_dir / folder).glob("*.png"):
                old.unlink(missing_ok=True)


class InferenceOutput:
    """One inference run into ``out_dir``, held by the folder's lock until ``finish`` (module docstring).

    ``on_film``, ``journal`` and ``with_overlays`` go to ``infer_films``; ``finish``
    writes the results and the page, removes the journal and releases the folder.
    """

    def __init__(self, out_dir: str | os.PathLike[str], with_overlays: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._held = ExitStack()
        self._held.enter_context(folder_lock(self.out_dir, purpose="inference output"))
        try:
            self.journal = InferenceJournal(self.out_dir)
            self.pictures = FilmPictures(self.out_dir, with_overlays)
            if not self.journal.path.is_file():
                self.pictures.clear()
        except BaseException:
            self._held.close()
            raise
        self.with_overlays = with_overlays

    @property
    def on_film(self) -> FilmPictures:
        return self.pictures

    def finish(self, result: InferenceResult, differences: pd.DataFrame | None = None) -> tuple[Path, Path, Path]:
        """``inference.csv``, ``inference.json`` and ``inference.html``; then the journal goes and the lock is released."""
        try:
            csv_path, json_path = write_results(result, self.out_dir, self.pictures.films)
            page = write_page(result, self.out_dir, self.pictures.films, differences)
            self.journal.finish()
        finally:
            self.close()
        return csv_path, json_path, page

    def close(self) -> None:
        """Release the folder (the journal stays, so a re-run continues)."""
        self.journal.close()
        self._held.close()


# --------------------------------------------------------------------------- the page


def _facts_line(row: pd.Series) -> str:
    parts = [f"{row['source_format']}", f"{row['width']} x {row['height']} px", f"{row['bits_stored']}-bit",
             f"grey levels: {row['intensity']}"]
    if row["modality"]:
        parts.append(f"modality {row['modality']}")
    parts.append(f"view {row['view']} ({row['view_source']})" if row["view"] else "view not recorded")
    if pd.notna(row["pixel_spacing_row_mm"]):
        parts.append(f"pixel spacing {row['pixel_spacing_row_mm']:g} x {row['pixel_spacing_column_mm']:g} mm "
                     f"({row['pixel_spacing_source']})")
    if row["transfer_syntax"]:
        parts.append(str(row["transfer_syntax"]))
    parts.extend(f"{keyword} {value}" for keyword, value in inference_view.pacs_identifiers(row).items())
    return " · ".join(html_text(str(part)) for part in parts)


def _refused_table(refused: pd.DataFrame) -> str:
    """Every refused file with its reason, and its PACS identifiers where any refused file has one (a lateral
    DICOM is refused, and still has to be found in the PACS)."""
    if refused.empty:
        return "<p>None: every file was scored.</p>"
    identifiers = [inference_view.pacs_identifiers(row) for _, row in refused.iterrows()]
    with_identifiers = any(identifiers)
    rows = []
    for r, found in zip(refused.itertuples(), identifiers, strict=True):
        cells = (f"<td>{html_text(r.image)}<div class='path'>{html_text(r.path)}</div></td>"
                 f"<td>{html_text(r.reason)}</td>")
        if with_identifiers:
            cells += "<td class='pacs'>" + "".join(f"<div>{html_text(keyword)} {html_text(value)}</div>"
                                                   for keyword, value in found.items()) + "</td>"
        rows.append(f"<tr>{cells}</tr>")
    header = "<tr><th>file</th><th>reason</th>" + ("<th>PACS identifiers</th>" if with_identifiers else "") + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _findings_table(row: pd.Series, thresholds: dict[str, float | None]) -> str:
    lines = []
    for finding in FINDINGS:
        probability = row[probability_column(finding)]
        cut = thresholds.get(finding)
        call = row[call_column(finding)]
        called = pd.notna(call) and call == 1
        verdict = "POSITIVE" if called else ("negative" if pd.notna(call) else "no threshold")
        lines.append(f"<tr class='{'positive' if called else ''}'><td>{html_text(finding)}</td>"
                     f"<td>{probability:.3f}</td><td>{'—' if cut is None else f'{cut:.3f}'}</td>"
                     f"<td>{verdict}</td></tr>")
    return ("<table class='findings'><tr><th>finding</th><th>probability</th><th>threshold</th><th>call</th></tr>"
            + "".join(lines) + "</table>")


def write_page(result: InferenceResult, out_dir: str | os.PathLike[str], pictures: dict[str, dict[str, Any]],
               differences: pd.DataFrame | None = None) -> Path:
    """``inference.html`` in ``out_dir``: summary, refused files, and every scored film (module docstring)."""
    out = Path(out_dir)
    table = result.table
    summary = result.summary()
    banner = ("<p class='synthetic'><b>SYNTHETIC TRAINING DATA.</b> This model was trained on rendered phantoms: its "
              "outputs say nothing about real chest X-rays.</p>" if result.synthetic else "")
    refused_html = _refused_table(table[table["status"] == REFUSED])
    notes_by_image = {} if differences is None else dict(zip(differences["image"], differences["differs"]))
    cards = []
    for _, row in table[table["status"] == SCORED].iterrows():
        film_files = pictures.get(row["image"], {})
        film = (f"<img class='film' src='{html_text(film_files['film'])}' alt=''>" if film_files.get("film")
                else "")
        overlays = "".join(
            f"<figure><img src='{html_text(path)}' alt=''><figcaption>{html_text(finding)} "
            f"{row[probability_column(finding)]:.3f}</figcaption></figure>"
            for finding, path in film_files.get("overlays", {}).items())
        positives = row["positive_findings"].replace("|", ", ") or "none"
        extra = [row["notes"]] if row["notes"] else []
        if row["image"] in notes_by_image:
            extra.append(f"against the training films: {notes_by_image[row['image']]}")
        cards.append(
            f"<section class='card'><h3>{html_text(row['image'])}</h3>"
            f"<p class='facts'>{_facts_line(row)}</p>"
            f"<p><b>Called positive:</b> {html_text(positives)}</p>"
            f"<div class='row'>{film}{_findings_table(row, result.thresholds)}</div>"
            + (f"<div class='overlays'>{overlays}</div>" if overlays else "")
            + "".join(f"<p class='note'>{html_text(text)}</p>" for text in extra) + "</section>")
    reasons = "".join(f"<li>{count} × {html_text(reason)}</li>" for reason, count in
                      summary["refused_by_reason"].items())
    page = _PAGE.format(
        run=html_text(str(result.run_dir)), banner=banner, headline=html_text(result.headline),
        method=html_text(result.threshold_method), input_size=result.input_size, cache_size=result.cache_size,
        gradcam=html_text(result.gradcam_layer or "not taken"), device=html_text(result.device),
        reasons=f"<ul>{reasons}</ul>" if reasons else "", refused=refused_html, cards="".join(cards),
        epoch=html_text(str(result.checkpoint.get("best_epoch", result.checkpoint.get("epoch", "")))),
    )
    return files.atomic_write_text(out / PAGE_NAME, page)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Inference: {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 80rem; }}
table {{ border-collapse: collapse; margin: .3rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .2rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }}
.synthetic {{ background: #b00020; color: white; padding: .6em 1em; border-radius: 6px; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }}
.row {{ display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }}
img.film {{ width: 256px; height: 256px; image-rendering: auto; }}
.overlays {{ display: flex; gap: .6rem; flex-wrap: wrap; }}
figure {{ margin: 0; }} figure img {{ width: 200px; height: 200px; }}
figcaption {{ font-size: .8em; text-align: center; }}
tr.positive td {{ color: #b00020; font-weight: 600; }}
.facts, .path, .note, .pacs {{ font-size: .85em; color: #555; }}
</style></head><body>
<h1>Inference with run {run}</h1>
{banner}
<p><b>{headline}.</b> Calls at the run's <code>{method}</code> thresholds, chosen on its validation split at
training time (a finding is called when its probability is at least its threshold). Best checkpoint (epoch {epoch}),
films padded to a square, resized to {cache_size} px and then {input_size} px, as in training and evaluation;
Grad-CAM on {gradcam}; device {device}. Written by <code>cxrutils infer</code> or notebook 05.</p>
{reasons}
<h2>Refused files</h2>
{refused}
<h2>Scored films</h2>
<p>Each film as the network got it (padded to a square), its 14 probabilities against the thresholds, and a Grad-CAM
overlay for each finding called positive: where the evidence for that finding was, not a diagnosis.</p>
{cards}
</body></html>
"""

"""A trained run on new films: probabilities, calls at the run's validation thresholds, Grad-CAM, refusals.

``infer_films(run_dir, paths)`` needs only the run folder (settings, best checkpoint,
thresholds; not the data the run was trained on). It inspects every file under
``paths`` (``cxrutils.inference.films``), decodes the films that may be scored
exactly as the image cache does, scores them through the one inference loop
(``engine.predict.predict_logits``, so through the same ``prepare_batch`` as
training and evaluation), calls each finding at the run's validation threshold, and
takes Grad-CAM of every finding called positive. It returns an ``InferenceResult``:
one row per file, scored or refused with its reason; ``write_results`` saves it as
``inference.csv`` and ``inference.json``. Drawing (overlays, the HTML page) lives in
``cxrutils.publish.inference_page``.

Films stream through: each scored film is handed to ``on_film`` as its batch
finishes, and with ``keep_films=False`` (or a number: the first films only) its
pixels and heatmaps are not kept, so a folder of 100,000 films needs the memory of
one batch. With a ``journal`` (``cxrutils.inference.journal``) every film is on disk
as soon as its batch is done, and a re-run into the same folder continues where a
crash stopped it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrutils import files
from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import (
    GRADCAM_PIXELS_PER_PASS,
    gradcam_films_per_pass,
    gradcam_layer_for,
    gradcam_per_film,
    scores_and_gradcam,
)
from cxrutils.engine.loader import make_loader
from cxrutils.engine.model import ChestXrayNet
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.predict import predict_logits, probabilities_of
from cxrutils.engine.runtime import autocast_dtype, select_device
from cxrutils.inference.films import (
    DECIMAL_FACTS,
    FACT_COLUMNS,
    INTEGER_FACTS,
    FilmDataset,
    FilmRecord,
    collect_films,
    decode_failure,
    inspect_films,
)
from cxrutils.inference.journal import InferenceJournal, restored_arrays
from cxrutils.labels import FINDINGS
from cxrutils.predictions import predictions_table
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar
from cxrutils.settings import TrainConfig
from cxrutils.stats.metrics import binarise
from cxrutils.stats.thresholds import METHODS

CSV_NAME = "inference.csv"
JSON_NAME = "inference.json"
SCORED, REFUSED = "scored", "refused"
CALL_PREFIX = "call_"


def call_column(finding: str) -> str:
    return f"{CALL_PREFIX}{finding}"


@dataclass
class InferenceModel:
    """A run's best checkpoint ready to score new films, with the thresholds its calls use."""

    run_dir: Path
    config: TrainConfig  # config.json's settings: cache_size, input_size, amp, channels_last, batch_size
    model: ChestXrayNet
    device: torch.device
    threshold_method: str
    thresholds: dict[str, float | None]  # thresholds.json's entry for the method, chosen on validation
    gradcam_layer: str
    checkpoint: dict[str, Any]  # epoch, best_epoch, best_val_auroc_mean
    synthetic: bool  # trained on phantoms

    @property
    def threshold_array(self) -> np.ndarray:
        """(14,) in FINDINGS order; NaN where validation could choose none."""
        return np.array([np.nan if self.thresholds.get(f) is None else self.thresholds[f] for f in FINDINGS])


def load_inference_model(
    run_dir: str | os.PathLike[str], threshold_method: str = "youden", device: str = "auto",
    gradcam_layer: str = "auto",
) -> InferenceModel:
    """The run's best checkpoint (loaded with ``weights_only=True``) on ``device``, and its validation thresholds."""
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    run_dir = run_folder.finished_run_dir(run_dir)
    config = run_folder.read_run_config(run_dir)
    model, _, details = run_folder.load_run_model(run_dir)
    torch_device = select_device(device)
    model = model.to(torch_device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return InferenceModel(
        run_dir=run_dir, config=config, model=model, device=torch_device, threshold_method=threshold_method,
        thresholds=run_folder.thresholds_of(run_dir, threshold_method),
        gradcam_layer=gradcam_layer_for(config.input_size, gradcam_layer, config.arch), checkpoint=details,
        synthetic=bool(run_folder.read_config(run_dir).get("synthetic")),
    )


@dataclass
class ScoredFilm:
    """One scored film: its record, its 14 probabilities and calls, the pixels the network got, its heatmaps."""

    record: FilmRecord
    probabilities: np.ndarray  # (14,) in FINDINGS order
    calls: np.ndarray  # (14,) 1.0 positive, 0.0 negative, NaN where the run has no threshold
    pixels: np.ndarray  # (cache_size, cache_size) uint8: the film padded to a square and resized
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # finding -> (input_size, input_size) in [0, 1]
    resumed: bool = False  # taken from the journal of an unfinished run: no pixels, no heatmaps

    @property
    def positive_findings(self) -> list[str]:
        return [finding for finding, call in zip(FINDINGS, self.calls) if call == 1]


@dataclass
class InferenceResult:
    """Every file handed to inference, scored or refused, and how it was scored."""

    run_dir: Path
    threshold_method: str
    thresholds: dict[str, float | None]
    input_size: int
    cache_size: int
    gradcam_layer: str | None  # None: Grad-CAM was not taken
    checkpoint: dict[str, Any]
    synthetic: bool
    device: str
    table: pd.DataFrame  # one row per file (module docstring of write_results)
    films: list[ScoredFilm]  # the scored films with pixels and heatmaps (empty with keep_films=False)
    given_twice: list[str]  # files reached through two of the paths given, scored once
    seconds: dict[str, float]

    @property
    def threshold_array(self) -> np.ndarray:
        """(14,) in FINDINGS order; NaN where validation could choose none."""
        return np.array([np.nan if self.thresholds.get(f) is None else self.thresholds[f] for f in FINDINGS])

    @property
    def n_scored(self) -> int:
        return int((self.table["status"] == SCORED).sum())

    @property
    def n_refused(self) -> int:
        return int((self.table["status"] == REFUSED).sum())

    @property
    def refusals(self) -> pd.DataFrame:
        """image, path, reason of every refused file."""
        return self.table.loc[self.table["status"] == REFUSED, ["image", "path", "reason"]].reset_index(drop=True)

    @property
    def headline(self) -> str:
        return f"{len(self.table)} files: {self.n_scored} scored, {self.n_refused} refused"

    def summary(self) -> dict[str, Any]:
        """Counts: files, scored, refused (and by reason), positive calls per finding, films per second."""
        scored = self.table[self.table["status"] == SCORED]
        calls = scored[[call_column(f) for f in FINDINGS]]
        seconds = self.seconds.get("score", 0.0)
        return {
            "files": len(self.table), "scored": self.n_scored, "refused": self.n_refused,
            "refused_by_reason": dict(Counter(self.table.loc[self.table["status"] == REFUSED, "reason"])),
            "given_twice": len(self.given_twice),
            "positive_calls": {f: int((calls[call_column(f)] == 1).sum()) for f in FINDINGS},
            "films_per_second": self.n_scored / seconds if seconds > 0 else None,
            "seconds": self.seconds,
        }

    def to_document(self) -> dict[str, Any]:
        """What inference.json holds: the model, the thresholds, the summary and every file's row."""
        return {
            "run_dir": self.run_dir, "checkpoint": self.checkpoint, "synthetic": self.synthetic,
            "device": self.device, "input_size": self.input_size, "cache_size": self.cache_size,
            "threshold_method": self.threshold_method, "thresholds": self.thresholds,
            "gradcam_layer": self.gradcam_layer, "summary": self.summary(), "given_twice": self.given_twice,
            "films": self.table,
        }


def infer_films(
    run: str | os.PathLike[str] | InferenceModel,
    paths: Sequence[str | os.PathLike[str]],
    threshold_method: str = "youden",
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    with_gradcam: bool = True,
    keep_films: bool | int = True,
    on_film: Callable[[ScoredFilm], Any] | None = None,
    show_progress: bool = True,
    max_pixels: int | None = None,
    journal: InferenceJournal | None = None,
) -> InferenceResult:
    """Score every film under ``paths`` with the run's best checkpoint (module docstring).

    ``run`` is a run folder or an ``InferenceModel`` already loaded (its own threshold
    method and device then apply). ``num_workers`` loader processes decode films
    (0: in this process; None: ``default_workers``, from the cores and the films). ``on_film`` receives each scored film as its batch
    finishes (and each film taken from the ``journal``, with ``resumed`` set);
    ``keep_films`` keeps every film's pixels and heatmaps (True), none (False) or
    those of the first ``keep_films`` films scored. ``max_pixels``: the largest film
    decoded (``cxrutils.data.images.max_pixels_allowed``).
    """
    loaded = run if isinstance(run, InferenceModel) else load_inference_model(run, threshold_method, device)
    started = time.perf_counter()
    found, given_twice = collect_films(paths)
    with stage("inference headers", films=len(found)):
        records = inspect_films(found, show_progress=show_progress, max_pixels=max_pixels)
    inspected = time.perf_counter()
    scored: dict[int, ScoredFilm] = {}
    to_score = [record for record in records if not record.refused]
    if journal is not None:
        journal.start(_identity(loaded, with_gradcam, max_pixels))
        to_score = _resume(journal, to_score, scored, on_film)
    keep = len(records) if keep_films is True else int(keep_films)
    kept: list[ScoredFilm] = []
    with stage("inference", films=len(to_score)):
        for record, film in _score(loaded, to_score, batch_size, num_workers, with_gradcam, show_progress,
                                   max_pixels):
            if film is None:
                if journal is not None:
                    journal.add(record.path, refusal=record.refusal)
                continue
            scored[id(record)] = film
            if on_film is not None:
                on_film(film)
            if journal is not None:
                journal.add(record.path, film.probabilities, film.calls)
            if len(kept) < keep:
                kept.append(film)
            else:
                film.pixels, film.heatmaps = np.empty((0, 0), np.uint8), {}
    finished = time.perf_counter()
    return InferenceResult(
        run_dir=loaded.run_dir, threshold_method=loaded.threshold_method, thresholds=loaded.thresholds,
        input_size=loaded.config.input_size, cache_size=loaded.config.cache_size,
        gradcam_layer=loaded.gradcam_layer if with_gradcam else None, checkpoint=loaded.checkpoint,
        synthetic=loaded.synthetic, device=str(loaded.device), table=_table(records, scored, loaded),
        films=kept, given_twice=given_twice,
        seconds={"headers": inspected - started, "score": finished - inspected, "total": finished - started},
    )


def _identity(loaded: InferenceModel, with_gradcam: bool, max_pixels: int | None) -> dict[str, Any]:
    """What must be the same for a journal's films to stand in a new run's results."""
    return {"run_dir": str(loaded.run_dir), "checkpoint": loaded.checkpoint, "threshold_method": loaded.threshold_method,
            "thresholds": loaded.thresholds, "input_size": loaded.config.input_size,
            "cache_size": loaded.config.cache_size, "gradcam_layer": loaded.gradcam_layer if with_gradcam else None,
            "max_pixels": max_pixels}


def _resume(journal: InferenceJournal, records: list[FilmRecord], scored: dict[int, ScoredFilm],
            on_film: Callable[[ScoredFilm], Any] | None) -> list[FilmRecord]:
    """Take the journal's films into ``scored`` (or refuse them as it says); the records still to score."""
    remaining = []
    for record in records:
        entry = journal.prior(record.path)
        if entry is None:
            remaining.append(record)
        elif "refusal" in entry:
            record.refusal = entry["refusal"]
        else:
            probabilities, calls = restored_arrays(entry)
            film = ScoredFilm(record, probabilities, calls, np.empty((0, 0), np.uint8), resumed=True)
            scored[id(record)] = film
            if on_film is not None:
                on_film(film)
    return remaining


def default_workers(films: int, batch_size: int, cpus: int | None = None) -> int:
    """Loader processes for ``films``: a core for each but this one's, at most 8, and none beyond the batches there are.

    Decoding a 1024-px PNG or a 16-bit DICOM costs more than scoring it on a GPU, so one
    decoding process caps a GPU box near 100 films/s; a worker also costs a second or so to
    start, which a handful of films never pays back.
    """
    cpus = os.cpu_count() if cpus is None else cpus
    return max(0, min(8, (cpus or 1) - 1, -(-films // batch_size) - 1))


def _score(
    loaded: InferenceModel, records: list[FilmRecord], batch_size: int | None, num_workers: int | None,
    with_gradcam: bool,
    show_progress: bool, max_pixels: int | None = None,
) -> Any:
    """Yield (record, ``ScoredFilm``) per record that decodes, (record, None) for one that does not (refused in place)."""
    if not records:
        return
    config = loaded.config
    batch_size = batch_size or config.batch_size
    num_workers = default_workers(len(records), batch_size) if num_workers is None else num_workers
    loader = make_loader(FilmDataset([record.path for record in records], config.cache_size, max_pixels),
                         batch_size=batch_size, shuffle=False, seed=config.seed, num_workers=num_workers)
    layer = loaded.model.stage(loaded.gradcam_layer)
    # Scored in float32 (a CPU, or amp off), Grad-CAM's forward is the scoring forward: one pass a film. Under
    # autocast the scores come from the same bf16/fp16 forward as evaluation's, and Grad-CAM (float32) has its own.
    one_forward = with_gradcam and autocast_dtype(loaded.device, config.amp) is None
    bar = progress_bar(total=len(records), desc="scoring films", unit="film", disable=not show_progress)
    start = 0
    try:
        for pixels, decoded in loader:
            batch = records[start : start + len(pixels)]
            start += len(pixels)
            ok = decoded[:, 0].numpy() == 1
            heatmaps: list[torch.Tensor] | None = None
            if one_forward:
                probabilities, calls, heatmaps = _scores_and_heatmaps(loaded, layer, pixels, ok)
            else:
                # The one inference loop, a batch at a time, so the pixels stay here for Grad-CAM and the pictures.
                logits, _ = predict_logits(loaded.model, [(pixels, decoded)], loaded.device, config.input_size,
                                           config.amp, config.channels_last, show_progress=False)
                probabilities = probabilities_of(logits)
                calls = _calls(loaded, probabilities)
            films: list[ScoredFilm] = []
            outcomes: list[tuple[FilmRecord, ScoredFilm | None]] = []
            for position, record in enumerate(batch):
                if not ok[position]:
                    record.refusal = decode_failure(record.path, max_pixels)
                    outcomes.append((record, None))
                    continue
                films.append(ScoredFilm(record, probabilities[position], calls[position], pixels[position, 0].numpy()))
                outcomes.append((record, films[-1]))
                if heatmaps is not None:
                    maps = heatmaps[position].cpu().numpy().astype(np.float32)
                    films[-1].heatmaps.update(zip(films[-1].positive_findings, maps))
            if with_gradcam and not one_forward:
                _add_heatmaps(loaded, layer, films, pixels[torch.from_numpy(ok)])
            yield from outcomes
            bar.update(len(batch))
    finally:
        bar.close()


def _calls(loaded: InferenceModel, probabilities: np.ndarray) -> np.ndarray:
    """1 where a probability reaches its finding's validation threshold, 0 below it, NaN where there is none."""
    cut = loaded.threshold_array
    return np.where(np.isnan(cut), np.nan, binarise(probabilities, np.nan_to_num(cut, nan=np.inf)))


def _scores_and_heatmaps(loaded: InferenceModel, layer: torch.nn.Module, pixels: torch.Tensor,
                         ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
    """Probabilities, calls and, from the same forward, each film's maps of its positive calls (in FINDINGS order)."""
    config = loaded.config
    images = prepare_batch(pixels, loaded.device, config.input_size, config.channels_last)
    chosen: list[tuple[np.ndarray, np.ndarray]] = []  # each pass's probabilities and calls, in order

    def positive_calls(logits: torch.Tensor) -> list[list[int]]:
        probabilities = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
        calls = _calls(loaded, probabilities)
        first = sum(len(p) for p, _ in chosen)
        chosen.append((probabilities, calls))
        # A film that did not decode scored zeros: no maps for it (it is refused below).
        return [[k for k in range(len(FINDINGS)) if calls[i, k] == 1] if ok[first + i] else []
                for i in range(len(probabilities))]

    _, heatmaps = scores_and_gradcam(loaded.model, images, positive_calls, layer=layer,
                                     films_per_pass=_films_per_gradcam_pass(config.input_size))
    probabilities = np.concatenate([p for p, _ in chosen])
    calls = np.concatenate([c for _, c in chosen])
    return probabilities, calls, heatmaps


def _films_per_gradcam_pass(input_size: int) -> int:
    """Films per Grad-CAM pass: ``engine.gradcam``'s bound, the evaluation's too (read here, so a test can lower it)."""
    return gradcam_films_per_pass(input_size, GRADCAM_PIXELS_PER_PASS)


def _add_heatmaps(loaded: InferenceModel, layer: torch.nn.Module, films: list[ScoredFilm],
                  pixels: torch.Tensor) -> None:
    """Grad-CAM of every finding called positive; a film goes through the network once for all of its findings."""
    positive = [index for index, film in enumerate(films) if film.positive_findings]
    size = _films_per_gradcam_pass(loaded.config.input_size)
    for start in range(0, len(positive), size):
        chunk = positive[start : start + size]
        images = prepare_batch(pixels[torch.tensor(chunk)], loaded.device, loaded.config.input_size,
                               channels_last=False)
        findings = [films[index].positive_findings for index in chunk]
        maps = gradcam_per_film(loaded.model, images, findings, layer=layer, films_per_pass=size)
        pairs = [(index, finding) for index, found in zip(chunk, findings) for finding in found]  # the maps' order
        for (index, finding), heatmap in zip(pairs, maps.cpu().numpy().astype(np.float32)):
            films[index].heatmaps[finding] = heatmap


def _table(records: list[FilmRecord], scored: Mapping[int, ScoredFilm], loaded: InferenceModel) -> pd.DataFrame:
    """One row per file: the predictions-table columns, then status, reason, calls and the header's facts."""
    probabilities = np.full((len(records), len(FINDINGS)), np.nan)
    calls = np.full((len(records), len(FINDINGS)), np.nan)
    for row, record in enumerate(records):
        film = scored.get(id(record))
        if film is not None:
            probabilities[row], calls[row] = film.probabilities, film.calls
    table = predictions_table([record.image for record in records], [None] * len(records), probabilities)
    table["status"] = [REFUSED if id(record) not in scored else SCORED for record in records]
    table["reason"] = [record.refusal or "" for record in records]
    table["path"] = [str(record.path) for record in records]
    table["threshold_method"] = loaded.threshold_method
    for k, finding in enumerate(FINDINGS):
        table[call_column(finding)] = pd.array(calls[:, k], dtype="Int8") if len(records) else pd.array([], "Int8")
    table["positive_findings"] = ["|".join(scored[id(r)].positive_findings) if id(r) in scored else ""
                                  for r in records]
    for column in FACT_COLUMNS:
        values = [record.facts.get(column) for record in records]
        if column in INTEGER_FACTS:
            table[column] = pd.array(values, dtype="Int64")
        elif column in DECIMAL_FACTS:
            table[column] = np.array([np.nan if value is None else value for value in values], dtype=float)
        else:
            table[column] = ["" if value is None else str(value) for value in values]
    table["notes"] = ["; ".join(record.notes) for record in records]
    return table


def write_results(result: InferenceResult, out_dir: str | os.PathLike[str],
                  pictures: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Path, Path]:
    """``inference.csv`` (one row per file) and ``inference.json`` (the model, thresholds, summary, rows) in ``out_dir``.

    The CSV's columns: image, patient_id (empty: new films carry no patient of the
    run), ``prob_<finding>`` x 14 (the predictions-table layout), status (scored or
    refused), reason, path, threshold_method, ``call_<finding>`` x 14 (1, 0, or empty
    where the run has no threshold), positive_findings, the header's facts (format,
    size, bits, photometric, modality, view and its source, body part, pixel spacing
    and its source, transfer syntax, how values became grey levels, orientation),
    notes, and with ``pictures`` (image -> {"film": file, "overlays": {finding: file}})
    the pictures' files relative to ``out_dir``.
    """
    out = Path(out_dir)
    table = result.table.copy()
    if pictures is not None:
        table["film_picture"] = [pictures.get(image, {}).get("film", "") for image in table["image"]]
        table["overlays"] = ["|".join(pictures.get(image, {}).get("overlays", {}).values()) for image in table["image"]]
    # Names, paths and header fields as text: not UTF-8 is written as \xNN, and no cell runs in a spreadsheet.
    csv_path = files.write_csv(out / CSV_NAME, table, float_format="%.6g")
    json_path = files.write_json(out / JSON_NAME, {**result.to_document(), "films": table})
    return csv_path, json_path

"""Grad-CAM against the regions an external collection publishes: VinDr-CXR's and RSNA's boxes, SIIM-ACR's masks.

``localize_external(run_dir, films, predictions)`` takes the films ``evaluate_external``
scored and, for each positive film with a region of a mapped finding, computes the run's
Grad-CAM of that finding and scores it against the region:

- **Regions** come from the collection's own metadata (``vindr.boxes``, ``rsna.boxes``,
  ``siim.masks``: each says its rule in ``REGION_RULE``); malformed rows are set apart and
  counted by the readers, never scored. CheXpert and PadChest publish none for these films.
- **Films** are decoded as the scoring decodes them (``preparation.prepare_film``: the film
  read, padded to a centred square, resized to the run's cache size; here in its two steps,
  so the film's stored size is known) and go through ``prepare_batch`` to the input size,
  so the heatmap is in the square model frame. A region is mapped into that frame by asking,
  for each model pixel's centre, where it falls on the film as stored: through the square's
  padding and scale (as ``localization.box_to_heatmap``), a DICOM's orientation steps
  (``dicom.orient``, undone), and the collection's frame (RSNA and SIIM draw on 1024 x 1024
  films and are scaled onto a film stored at another size, as NIH's boxes are; VinDr draws
  in each film's own pixels, and a box reaching beyond its film as stored is set apart). A
  box is the pixels whose centre lies in it, exactly ``localization.box_mask`` of the mapped
  box; a mask is read at the nearest pixel. A phantom VinDr root's boxes were scaled from the
  real films' pixels onto its phantom films when it was written
  (``external_roots.scale_vindr_boxes``), so on phantoms too they fall inside their films and
  are scored.
- **Scores**, per region, with the heatmap binarised at ``HEATMAP_THRESHOLD``: the pointing
  game (the heatmap's maximum, the plateau pixel nearest its centroid as in
  ``localization.pointing_game_hit``, lies in the region), IoBB (the detected region's share
  inside the region, Wang et al. 2017) and IoU (intersection over union); T(IoBB) accuracy
  at ``T_IOBB`` and T(IoU) at ``T_IOU`` (Wang et al. 2017's thresholds) are the shares of
  regions reaching T. A mask uses the same definitions with the mask for the box.
- **Chance**: ``RANDOM_REPEATS`` smooth random heatmaps per region (``localization.random_heatmaps``
  on the Grad-CAM layer's grid), scored the same way and averaged per region.
- **Intervals**: patients resampled with replacement (all regions of a drawn patient come
  along), vectorised over the resamples; the Grad-CAM - random difference per region is
  resampled with the same draws, so its interval is paired.

``max_films`` (default ``DEFAULT_MAX_FILMS``) caps how many films are Grad-CAM'd: whole
patients drawn at random with the seed, stated in the result. Film names stay text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrutils.data.external import ExternalFilms, collection_reader, rsna, siim, vindr
from cxrutils.data.external.common import sample_whole_patients
from cxrutils.data.film_files import ImageReadError, max_pixels_allowed
from cxrutils.data.images import IMAGE_SUFFIXES, film_format, read_image
from cxrutils.data.preparation import to_square
from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import gradcam_films_per_pass, gradcam_grid, gradcam_layer_for, gradcam_per_film
from cxrutils.engine.network_input import denormalize, prepare_batch
from cxrutils.engine.runtime import select_device
from cxrutils.evaluate.localization import (
    ALL_ROW,
    HEATMAP_THRESHOLD,
    T_IOBB,
    T_IOU,
    metric_keys,
    metric_label,
    random_heatmaps,
    resampled_accuracies,
)
from cxrutils.progress import progress_bar
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval

REGION_READERS = {"vindr": vindr.boxes, "rsna": rsna.boxes, "siim": siim.masks}
REGION_RULES = {"vindr": vindr.REGION_RULE, "rsna": rsna.REGION_RULE, "siim": siim.REGION_RULE}
DEFAULT_MAX_FILMS = 500  # films Grad-CAM'd: seconds on a GPU, minutes on a CPU, at 224 px
RANDOM_REPEATS = 20
STORED_FRAME_TOLERANCE = 0.01  # a box may reach this share of the film beyond its edge, as NIH's may
LISTED_LIMIT = 1000  # set-apart rows listed by name in external.json; all are counted
EXAMPLES = 6  # films kept with their pixels, heatmap and region for the report's pictures (not in the JSON)
SYNTHETIC_NOTE = ("SYNTHETIC: the phantom films' lesions are not drawn inside the published boxes or masks, so "
                  "Grad-CAM has nothing to find there; these scores are near chance by construction and say nothing "
                  "about localization on real films.")


def no_regions_reason(collection: str) -> str | None:
    """Why a collection has no localization (None: it publishes regions)."""
    if collection in REGION_READERS:
        return None
    return f"{collection_reader(collection).title} publishes no boxes or masks for these films"


# --------------------------------------------------------------------------- regions read


def read_regions(films: ExternalFilms) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(regions, set apart) from the collection's metadata files as read (``vindr.REGION_COLUMNS``)."""
    reader = collection_reader(films.collection)
    read = REGION_READERS[films.collection]
    parts = [read(reader.read_raw(Path(path)), films.options) for path in films.metadata_files]
    return (pd.concat([regions for regions, _ in parts], ignore_index=True),
            pd.concat([apart for _, apart in parts], ignore_index=True))


# --------------------------------------------------------------------------- films and frames


@dataclass(frozen=True)
class FilmGeometry:
    """Where a film's pixels went: the stored frame (a DICOM's Rows x Columns), its orientation steps, the decoded size."""

    stored_height: int  # as the file stores it, before any orientation step
    stored_width: int
    orientation: tuple[bool, bool, bool] = (False, False, False)  # dicom.orient's (transpose, mirror, flip)

    @property
    def decoded_shape(self) -> tuple[int, int]:
        """(height, width) of the film after its orientation steps: what ``to_square`` pads."""
        transpose = self.orientation[0]
        return (self.stored_width, self.stored_height) if transpose else (self.stored_height, self.stored_width)


def decode_film(path: str, cache_size: int, max_pixels: int | None = None) -> tuple[np.ndarray, FilmGeometry]:
    """``prepare_film(path, cache_size)``'s pixels, and the film's geometry; ``ImageReadError`` as it raises.

    ``prepare_film`` is ``to_square(read_image(path))``; ``read_image`` is split here only to
    keep a DICOM's header (its stored size and orientation steps), which a region's
    coordinates refer to.
    """
    max_pixels = max_pixels_allowed(max_pixels)
    if not os.fspath(path).lower().endswith(IMAGE_SUFFIXES) and film_format(path) == "dicom":
        from cxrutils.data.dicom import read_dicom_film

        film, header = read_dicom_film(path, max_pixels=max_pixels)
        geometry = FilmGeometry(int(header.rows), int(header.columns), tuple(bool(s) for s in header.orientation))
    else:
        film = read_image(path, max_pixels)
        geometry = FilmGeometry(*film.shape)
    return to_square(film, cache_size), geometry


def stored_points(geometry: FilmGeometry, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel centre of the ``size``² model frame: (x, y) on the film as stored (float), and whether it is on it.

    The inverse of the way a film reaches the model: ``to_square``'s centred padding and the
    resize (as ``localization.box_to_heatmap`` maps forward), then ``dicom.orient``'s steps undone.
    """
    height, width = geometry.decoded_shape
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    centres = (np.arange(size) + 0.5) * (side / size)
    u = np.broadcast_to(centres[None, :] - left, (size, size))  # column on the decoded film
    v = np.broadcast_to(centres[:, None] - top, (size, size))  # row on the decoded film
    on_film = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    transpose, mirror, flip = geometry.orientation
    if flip:
        v = height - v
    if mirror:
        u = width - u
    x, y = (v, u) if transpose else (u, v)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), on_film


def region_in_model_frame(region: pd.Series | dict[str, Any], geometry: FilmGeometry, size: int) -> np.ndarray:
    """bool (size, size): the model pixels whose centre falls in the region (box, or mask at the nearest pixel)."""
    x, y, on_film = stored_points(geometry, size)
    frame_width, frame_height = float(region["frame_width"]), float(region["frame_height"])
    if np.isfinite(frame_width) and np.isfinite(frame_height):  # drawn on a film of that size: scaled onto this one
        x = x * (frame_width / geometry.stored_width)
        y = y * (frame_height / geometry.stored_height)
    if region["kind"] == "mask":
        mask = siim.film_mask(str(region["encodings"]), int(frame_height), int(frame_width))
        rows = np.clip(np.floor(y).astype(np.int64), 0, mask.shape[0] - 1)
        cols = np.clip(np.floor(x).astype(np.int64), 0, mask.shape[1] - 1)
        return on_film & mask[rows, cols]
    left, top, w, h = (float(region[c]) for c in ("x", "y", "w", "h"))
    return on_film & (x >= left) & (x < left + w) & (y >= top) & (y < top + h)


def beyond_stored_film(region: pd.Series | dict[str, Any], geometry: FilmGeometry) -> bool:
    """A box in the film's own frame (VinDr) reaching beyond the film as stored by more than the tolerance."""
    if np.isfinite(float(region["frame_width"])) or region["kind"] != "box":
        return False  # drawn on a known frame, checked by the reader and scaled onto the film
    slack_x = STORED_FRAME_TOLERANCE * geometry.stored_width
    slack_y = STORED_FRAME_TOLERANCE * geometry.stored_height
    x, y, w, h = (float(region[c]) for c in ("x", "y", "w", "h"))
    return bool(x + w > geometry.stored_width + slack_x or y + h > geometry.stored_height + slack_y)


# --------------------------------------------------------------------------- scores


def pointing_points(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): each map's maximum, the plateau pixel nearest the plateau's centroid (``pointing_game_hit``'s rule)."""
    maps = np.asarray(heatmaps, dtype=np.float64)
    rows = np.empty(len(maps), dtype=np.int64)
    cols = np.empty(len(maps), dtype=np.int64)
    for k, values in enumerate(maps):
        plateau_rows, plateau_cols = np.nonzero(values >= values.max() - 1e-9)
        nearest = int(np.argmin((plateau_rows - plateau_rows.mean()) ** 2 + (plateau_cols - plateau_cols.mean()) ** 2))
        rows[k], cols[k] = plateau_rows[nearest], plateau_cols[nearest]
    return rows, cols


def region_scores(heatmaps: np.ndarray, regions: np.ndarray, threshold: float = HEATMAP_THRESHOLD,
                  t_iobb: tuple[float, ...] = T_IOBB, t_iou: tuple[float, ...] = T_IOU) -> pd.DataFrame:
    """Per (heatmap, region mask) pair: pointing hit, IoBB, IoU, the pixel counts, and each T's 0/1
    (``localization.metric_keys``).

    IoBB = |detected ∩ region| / |detected| and IoU = |detected ∩ region| / |detected ∪ region|
    with detected = {heatmap >= threshold}; both 0 when nothing is detected.
    """
    maps = np.asarray(heatmaps, dtype=np.float64)
    masks = np.asarray(regions, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"need one (H, W) region per heatmap: heatmaps {maps.shape}, regions {masks.shape}")
    detected = maps >= threshold
    inter = (detected & masks).sum(axis=(1, 2)).astype(np.float64)
    detected_area = detected.sum(axis=(1, 2)).astype(np.float64)
    region_area = masks.sum(axis=(1, 2)).astype(np.float64)
    union = detected_area + region_area - inter
    rows, cols = pointing_points(maps)
    scores = pd.DataFrame({
        "region_pixels": region_area.astype(int), "detected_pixels": detected_area.astype(int),
        "pointing_hit": masks[np.arange(len(masks)), rows, cols],
        "iobb": np.divide(inter, detected_area, out=np.zeros_like(inter), where=detected_area > 0),
        "iou": np.divide(inter, union, out=np.zeros_like(inter), where=union > 0),
    })
    scores["pointing_game"] = scores["pointing_hit"].astype(float)
    for t in t_iobb:
        scores[f"t_iobb_{t:g}"] = (scores["iobb"] >= t).astype(float)
    for t in t_iou:
        scores[f"t_iou_{t:g}"] = (scores["iou"] >= t).astype(float)
    return scores


def summary_table(scored: pd.DataFrame, metrics: list[str], n_resamples: int, seed: int,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Long table, a row per (finding or ``all``, metric): Grad-CAM, random, Grad-CAM - random, with paired intervals.

    The intervals are NIH localization's (``localization.resampled_accuracies``): one patient
    bootstrap for every finding and for Grad-CAM and its difference from random, region by region.
    """
    gradcam = scored[metrics].to_numpy(dtype=np.float64)
    chance = scored[[f"random_{m}" for m in metrics]].to_numpy(dtype=np.float64)
    findings = scored["finding"].to_numpy(dtype=object)
    groups, draws = resampled_accuracies(np.hstack([gradcam, gradcam - chance]), findings,
                                         scored["patient_id"].astype(str).to_numpy(), n_resamples, seed)
    rows = []
    for g, group in enumerate(groups):
        member = np.ones(len(scored), bool) if group == ALL_ROW else findings == group
        part = scored[member]
        for k, metric in enumerate(metrics):
            low, high, _ = percentile_interval(draws[:, g, k], confidence)
            diff_low, diff_high, _ = percentile_interval(draws[:, g, len(metrics) + k], confidence)
            rows.append({"finding": group, "metric": metric, "label": metric_label(metric), "regions": len(part),
                         "films": int(part["film"].nunique()), "patients": int(part["patient_id"].nunique()),
                         "gradcam": float(gradcam[member, k].mean()), "ci_low": low, "ci_high": high,
                         "random": float(chance[member, k].mean()),
                         "difference": float((gradcam[member, k] - chance[member, k]).mean()),
                         "difference_ci_low": diff_low, "difference_ci_high": diff_high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the result


@dataclass
class LocalizedExample:
    """One scored film for the report's pictures: what the network saw, its heatmap, the region."""

    film: str
    finding: str
    pixels: np.ndarray  # (input_size, input_size) in [0, 1]
    heatmap: np.ndarray  # (input_size, input_size) in [0, 1]
    region: np.ndarray  # bool (input_size, input_size), the union of the film's regions of the finding
    pointing_hit: bool


@dataclass
class ExternalLocalization:
    """Grad-CAM against a collection's regions, or why there is none (``available`` False and ``reason``)."""

    collection: str
    available: bool
    reason: str = ""
    synthetic: bool = False
    rule: str = ""
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # summary_table
    regions: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per scored region, with its scores
    set_apart: pd.DataFrame = field(default_factory=pd.DataFrame)  # row, film, field, value, reason, malformed
    counts: dict[str, int] = field(default_factory=dict)  # how the regions read became the regions scored
    sampled: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # heatmap size, layer, thresholds, bootstrap, baseline
    examples: list[LocalizedExample] = field(default_factory=list)

    @property
    def headline(self) -> str:
        if not self.available:
            return f"{self.collection}: no localization ({self.reason})"
        row = self.table[(self.table["finding"] == ALL_ROW) & (self.table["metric"] == "pointing_game")].iloc[0]
        return (f"{self.collection}: pointing game {row['gradcam']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
                f"against {row['random']:.3f} for random heatmaps, {int(row['regions']):,} regions on "
                f"{int(row['films']):,} films")

    def to_document(self) -> dict[str, Any]:
        """external.json's ``localization``."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        reasons = self.set_apart.groupby("reason", sort=True).size() if not self.set_apart.empty else pd.Series()
        return {
            "available": True, "synthetic": self.synthetic, "note": SYNTHETIC_NOTE if self.synthetic else "",
            "rule": self.rule, "headline": self.headline, "settings": self.settings, "sampled": self.sampled,
            "counts": self.counts, "table": self.table, "regions": self.regions,
            "set_apart": {"by_reason": {str(reason): int(n) for reason, n in reasons.items()},
                          "total": int(len(self.set_apart)), "listed": self.set_apart.head(LISTED_LIMIT)},
        }


def unavailable(collection: str, reason: str) -> ExternalLocalization:
    return ExternalLocalization(collection=collection, available=False, reason=reason)


# --------------------------------------------------------------------------- the evaluation


def _set_apart_row(region: pd.Series, reason: str) -> dict[str, Any]:
    return {"row": int(region["row"]), "film": region["film"], "field": region["kind"],
            "value": f"{region['finding']} ({region['source_class']})", "reason": reason, "malformed": False}


def localize_external(
    run_dir: str | os.PathLike[str],
    films: ExternalFilms,
    predictions: pd.DataFrame,
    *,
    max_films: int | None = DEFAULT_MAX_FILMS,
    n_bootstrap: int = 1000,
    seed: int = 0,
    repeats: int = RANDOM_REPEATS,
    threshold: float = HEATMAP_THRESHOLD,
    device: str = "auto",
    films_per_pass: int | None = None,
    show_progress: bool = True,
) -> ExternalLocalization:
    """Grad-CAM of each positive scored film's regions, scored against them and against chance (module docstring).

    ``predictions`` are the films the evaluation scored (``film``, ``path``, ``patient_id`` and
    the 14 labels): only those, positive for a region's finding, are localized.
    """
    reason = no_regions_reason(films.collection)
    if reason is not None:
        return unavailable(films.collection, reason)
    if max_films is not None and max_films < 1:
        raise ValueError(f"max_films must be at least 1 (or None: every film with a region), got {max_films}")
    run_dir = run_folder.finished_run_dir(run_dir)
    regions, set_apart = read_regions(films)
    counts: dict[str, int] = {"regions_read": int(len(regions)), "rows_set_apart": int(len(set_apart)),
                              "malformed_rows": int(set_apart["malformed"].sum())}
    scored_films = predictions.drop_duplicates("film").set_index("film")
    on_scored = regions["film"].isin(scored_films.index).to_numpy()
    labels = np.array([scored_films.at[film, finding] if ok else np.nan
                       for film, finding, ok in zip(regions["film"], regions["finding"], on_scored)], dtype=float)
    positive = regions["positive"].to_numpy() & (labels == 1)
    counts["on_films_not_scored"] = int((~on_scored).sum())  # missing, refused, not chosen, or not frontal
    counts["on_films_negative_for_the_finding"] = int((on_scored & ~positive).sum())
    candidates = regions[on_scored & positive].copy()
    candidates["patient_id"] = scored_films.loc[candidates["film"], "patient_id"].astype(str).to_numpy()
    candidates["path"] = scored_films.loc[candidates["film"], "path"].astype(str).to_numpy()
    if candidates.empty:
        return unavailable(films.collection, f"no scored film positive for a mapped finding has a region "
                                             f"({counts['regions_read']:,} regions read)")
    film_table = candidates.drop_duplicates("film")[["film", "patient_id", "path"]]
    chosen = sample_whole_patients(film_table, max_films, seed)
    candidates = candidates[candidates["film"].isin(set(chosen["film"]))].reset_index(drop=True)
    sampled = {"max_films": max_films, "films_with_regions": int(len(film_table)),
               "patients_with_regions": int(film_table["patient_id"].nunique()), "films_chosen": int(len(chosen)),
               "patients_chosen": int(chosen["patient_id"].nunique()), "seed": seed,
               "draw": "whole patients at random until max_films films"}

    model, config, _ = run_folder.load_run_model(run_dir)
    torch_device = select_device(device)
    model = model.to(torch_device)
    layer_name = gradcam_layer_for(config.input_size, "auto", config.arch)
    layer = model.stage(layer_name)
    size, grid = config.input_size, gradcam_grid(config.input_size, layer_name)
    per_pass = films_per_pass or gradcam_films_per_pass(size)
    metrics = metric_keys()
    by_film = {film: part for film, part in candidates.groupby("film", sort=False)}
    order = list(by_film)
    results: list[pd.DataFrame] = []
    extra_apart: list[dict[str, Any]] = []
    examples: list[LocalizedExample] = []
    bar = progress_bar(total=len(order), desc="Grad-CAM on external regions", unit="film", disable=not show_progress)
    for chunk_number, start in enumerate(range(0, len(order), per_pass)):
        pixels, wanted, region_rows, region_masks, map_of_region = [], [], [], [], []
        for film in order[start : start + per_pass]:
            part = by_film[film]
            try:
                square, geometry = decode_film(part["path"].iloc[0], config.cache_size)
            except ImageReadError as err:
                extra_apart += [_set_apart_row(r, f"the film did not decode: {err.reason}") for _, r in part.iterrows()]
                continue
            findings: list[str] = []
            for _, region in part.iterrows():
                if beyond_stored_film(region, geometry):
                    extra_apart.append(_set_apart_row(region, "beyond the film as stored"))
                    continue
                mask = region_in_model_frame(region, geometry, size)
                if not mask.any():
                    extra_apart.append(_set_apart_row(region, "smaller than one pixel of the model frame"))
                    continue
                if region["finding"] not in findings:
                    findings.append(region["finding"])
                region_rows.append(region)
                region_masks.append(mask)
                map_of_region.append((len(pixels), findings.index(region["finding"])))
            if findings:
                pixels.append(square)
                wanted.append(findings)
        bar.update(min(per_pass, len(order) - start))
        if not pixels:
            continue
        inputs = prepare_batch(torch.from_numpy(np.stack(pixels))[:, None], torch_device, size, channels_last=False)
        maps = gradcam_per_film(model, inputs, wanted, layer=layer, films_per_pass=per_pass).cpu().numpy()
        first_map = np.cumsum([0, *(len(found) for found in wanted)])
        heatmaps = maps[[first_map[film] + k for film, k in map_of_region]]
        masks = np.stack(region_masks)
        scores = region_scores(heatmaps, masks, threshold)
        chance = np.zeros((len(masks), len(metrics)))
        for repeat in range(repeats):
            noise = random_heatmaps(len(masks), size, seed=(seed * 100003 + chunk_number) * 1009 + repeat, grid=grid)
            chance += region_scores(noise, masks, threshold)[metrics].to_numpy()
        chance /= max(repeats, 1)
        table = pd.DataFrame(region_rows)[["film", "patient_id", "finding", "source_class", "rad_id", "kind", "row"]]
        table = pd.concat([table.reset_index(drop=True), scores], axis=1)
        for k, metric in enumerate(metrics):
            table[f"random_{metric}"] = chance[:, k]
        results.append(table)
        if len(examples) < EXAMPLES:
            shown = denormalize(inputs.detach().float())[:, 0].cpu().numpy()
            for film_index, found in enumerate(wanted):
                for k, finding in enumerate(found):
                    picked = [i for i, pair in enumerate(map_of_region) if pair == (film_index, k)]
                    if len(examples) < EXAMPLES:
                        examples.append(LocalizedExample(
                            film=str(table["film"].iloc[picked[0]]), finding=finding, pixels=shown[film_index],
                            heatmap=maps[first_map[film_index] + k], region=masks[picked].any(axis=0),
                            pointing_hit=bool(table["pointing_hit"].iloc[picked[0]])))
    bar.close()
    apart = pd.concat([set_apart, pd.DataFrame(extra_apart, columns=list(vindr.SET_APART_COLUMNS))],
                      ignore_index=True)
    counts["set_apart_after_reading"] = len(extra_apart)
    if not results:
        return unavailable(films.collection, "no region could be mapped onto a decoded film (see the reasons set "
                                             "apart)")
    scored = pd.concat(results, ignore_index=True)
    counts["regions_scored"] = int(len(scored))
    synthetic = bool(films.synthetic or run_folder.read_config(run_dir).get("synthetic"))
    return ExternalLocalization(
        collection=films.collection, available=True, synthetic=synthetic, rule=REGION_RULES[films.collection],
        table=summary_table(scored, metrics, n_bootstrap, seed), regions=scored, set_apart=apart, counts=counts,
        sampled=sampled,
        settings={"heatmap_size": size, "gradcam_layer": layer_name, "gradcam_grid": grid,
                  "heatmap_threshold": threshold, "t_iobb": list(T_IOBB), "t_iou": list(T_IOU),
                  "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "confidence": CONFIDENCE,
                                "resampling": "patients, with replacement; Grad-CAM and random paired"},
                  "random_baseline": {"repeats": repeats, "grid": grid, "seed": seed}},
        examples=examples,
    )


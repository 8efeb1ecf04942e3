"""Grad-CAM heatmaps and how well they point at the radiologists' boxes.

- ``gradcam``: Selvaraju et al. 2017 on the model's ``gradcam_layer`` (the last
  stage of its backbone: DenseNet121's denseblock4, ResNet-50's layer4, ...), from a
  forward hook and ``autograd.grad``, so no parameter's ``.grad`` is touched.
- Boxes in ``BBox_List_2017.csv`` are in the 1024-px frame of the original NIH
  PNGs; users often train from resized copies (512, 256, 224 px). ``place_boxes``
  maps each box onto its film as stored (``bboxes.boxes_in_stored_frame``), sets
  apart boxes that fall outside their film, and maps the rest into the model frame:
  the film padded to a centred square and resized (``cxrutils.data.cache.to_square``),
  which ``box_to_heatmap`` follows.
- Scores: the pointing game (is the heatmap's maximum inside the box?) and, as in
  Wang et al. 2017's Table 3, T(IoBB) accuracy at T = 0.1 ... 0.9 (share of boxes
  whose intersection over the detected region is at least T) and T(IoU) accuracy at
  T = 0.1 ... 0.7 (intersection over union). The detected region is the thresholded
  heatmap itself; Wang et al. drew boxes around its connected components first.
  A seeded random-heatmap baseline gives the chance level for the same boxes: small
  boxes are hard for any heatmap.
- Uncertainty: a patient has several films and boxes, so every accuracy (and the
  Grad-CAM minus random difference, paired by box) gets a patient-bootstrap interval
  (``localization_intervals``): patients are drawn with replacement, each box
  counting as often as its patient is drawn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrutils.data.bboxes import boxes_in_stored_frame
from cxrutils.data.images import image_header
from cxrutils.engine.gradcam import finding_index, gradcam_per_film
from cxrutils.engine.gradcam import gradcam as gradcam  # re-exported: localization.gradcam, as documented above
from cxrutils.engine.network_input import prepare_batch
from cxrutils.labels import FINDINGS
from cxrutils.progress import progress_bar
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.metrics import _patient_codes, _patient_draw_chunks

Box = tuple[float, float, float, float]  # x, y, w, h
# Wang et al. 2017, Table 3: T(IoBB) at 0.1 to 0.9 and T(IoU) at 0.1 to 0.7.
T_IOBB: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
T_IOU: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
HEATMAP_THRESHOLD = 0.5  # a pixel is in the detected region where the [0, 1] heatmap is at least this
ALL_ROW = "all"
POINTING_GAME = "pointing_game"
# One patient's boxes say nothing about how patients vary: a row needs boxes from this many patients for an interval.
MIN_PATIENTS_FOR_INTERVAL = 2
RESAMPLING = "patients, with replacement (each box counts as often as its patient is drawn)"
DEFINITIONS = {
    "pointing_game": "share of boxes that contain the heatmap's maximum (the centre of a flat maximum)",
    "t_iobb_T": "share of boxes with IoBB >= T; IoBB = |region ∩ box| / |region|, region = the pixels where the "
                "[0, 1] heatmap is >= heatmap_threshold (the thresholded map itself, not boxes drawn around its "
                "components as Wang et al. 2017 did); 0 when the region is empty",
    "t_iou_T": "share of boxes with IoU >= T; IoU = |region ∩ box| / |region ∪ box|, same region",
    "random_baseline": "the same accuracies for smooth random heatmaps as coarse as Grad-CAM's, each box's hit "
                       "averaged over the draws: the chance level the box sizes alone give",
    "versus_random": "Grad-CAM minus random, paired by box, with the interval from the same patient resamples; "
                     "beats_chance is true when the whole interval lies above 0 (one-sided test at (1 - "
                     "confidence) / 2), p_one_sided the share of resamples (+1 / resamples + 1) whose difference "
                     "is <= 0; neither is adjusted for the many findings and thresholds compared",
    "intervals": "percentile intervals over patient-bootstrap resamples: patients drawn with replacement, all "
                 "boxes of a drawn patient counted each time it is drawn; resamples without a box of the row's "
                 f"finding are left out for that row; a row with boxes from fewer than {MIN_PATIENTS_FOR_INTERVAL} "
                 "patients gets no interval",
}


def metric_keys(t_iobb: Sequence[float] = T_IOBB, t_iou: Sequence[float] = T_IOU) -> list[str]:
    """The accuracy columns, in table order: ``pointing_game``, ``t_iobb_<T>`` ..., ``t_iou_<T>`` ..."""
    return [POINTING_GAME, *(f"t_iobb_{t:g}" for t in t_iobb), *(f"t_iou_{t:g}" for t in t_iou)]


def metric_label(key: str) -> str:
    """``pointing_game`` -> ``pointing game``, ``t_iobb_0.1`` -> ``T(IoBB) 0.1``, ``t_iou_0.5`` -> ``T(IoU) 0.5``."""
    if key == POINTING_GAME:
        return "pointing game"
    for prefix, name in (("t_iobb_", "T(IoBB)"), ("t_iou_", "T(IoU)")):
        if key.startswith(prefix):
            return f"{name} {key[len(prefix):]}"
    raise KeyError(f"not a localization metric: {key!r}")


# --------------------------------------------------------------------------- box geometry


def box_to_heatmap(box: Box, image_width: float, image_height: float, heatmap_size: int) -> Box:
    """Map a box (x, y, w, h) from stored-image pixels to a ``heatmap_size``² square.

    Follows ``cxrutils.data.cache.to_square``: the image is padded with zeros to a centred
    square of side max(width, height), then resized. ``image_width``/``image_height``
    are the stored file's size (1024 x 1024 for NIH PNGs), not the metadata's
    ``width``/``height``, which describe the original film before NIH resized it.
    """
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive, got {image_width} x {image_height}")
    side = max(image_width, image_height)
    left, top = (side - image_width) // 2, (side - image_height) // 2
    scale = heatmap_size / side
    x, y, w, h = box
    return ((x + left) * scale, (y + top) * scale, w * scale, h * scale)


def stored_image_sizes(paths: pd.Series) -> pd.DataFrame:
    """Width and height of each image file (image name -> path), read from the file header only."""
    sizes = [image_header(path)[:2] for path in paths.to_numpy()]  # a FIFO or a bomb is refused by name, not opened
    return pd.DataFrame(sizes, index=paths.index, columns=["width", "height"])


def boxes_to_heatmap(boxes: pd.DataFrame, image_sizes: pd.DataFrame, heatmap_size: int) -> pd.DataFrame:
    """``boxes`` (image, finding, x, y, w, h) with x, y, w, h mapped from stored-film to heatmap pixels.

    The boxes must already be on the films as stored (``bboxes.boxes_in_stored_frame``;
    ``place_boxes`` does both steps). ``image_sizes`` is indexed by image with width and
    height of the stored files (``stored_image_sizes``). A box on an image without a
    size is an error naming it.
    """
    missing = sorted(set(boxes["image"]) - set(image_sizes.index))
    if missing:
        raise KeyError(
            f"no stored size for {len(missing)} boxed images, e.g. {missing[0]}; "
            "pass stored_image_sizes(...) covering every boxed image"
        )
    mapped = boxes.copy()
    width = image_sizes.loc[boxes["image"], "width"].to_numpy(dtype=float)
    height = image_sizes.loc[boxes["image"], "height"].to_numpy(dtype=float)
    side = np.maximum(width, height)
    scale = heatmap_size / side
    mapped["x"] = (boxes["x"].to_numpy(float) + (side - width) // 2) * scale
    mapped["y"] = (boxes["y"].to_numpy(float) + (side - height) // 2) * scale
    mapped["w"] = boxes["w"].to_numpy(float) * scale
    mapped["h"] = boxes["h"].to_numpy(float) * scale
    return mapped


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (col + 0.5, row + 0.5) lies in the box [x, x + w) x [y, y + h)."""
    x, y, w, h = box
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    inside_rows = (rows >= y) & (rows < y + h)
    inside_cols = (cols >= x) & (cols < x + w)
    return inside_rows[:, None] & inside_cols[None, :]


# --------------------------------------------------------------------------- scores


def pointing_game_hit(heatmap: Any, box: Box) -> bool:
    """True when the heatmap's maximum falls inside the box.

    An upsampled coarse map has a flat plateau at its maximum (it reaches the image
    edge for an edge cell), and the first pixel of it in row-major order would always
    be its top-left corner; the point taken is the plateau pixel nearest its centroid.
    """
    values = np.asarray(heatmap, dtype=np.float64)
    rows, cols = np.nonzero(values >= values.max() - 1e-9)
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return bool(box_mask(box, values.shape)[rows[nearest], cols[nearest]])


def iobb(heatmap: Any, box: Box, threshold: float = 0.5) -> float:
    """Intersection over the detected region: |{heatmap >= threshold} ∩ box| / |{heatmap >= threshold}|.

    Wang et al. 2017 binarise the heatmap and score the detected region against the
    ground-truth box by the share of the region that lies in the box (here the
    region itself, not boxes drawn around its components). 0 when nothing passes
    the threshold.
    """
    values = np.asarray(heatmap, dtype=np.float64)
    region = values >= threshold
    area = int(region.sum())
    if area == 0:
        return 0.0
    return float((region & box_mask(box, values.shape)).sum() / area)


def iou(heatmap: Any, box: Box, threshold: float = 0.5) -> float:
    """Intersection over union: |R ∩ box| / |R ∪ box| with R = {heatmap >= threshold}.

    The region is the thresholded heatmap itself, as in ``iobb`` (Wang et al. 2017 drew a
    box around each connected component of it first). 0 when the union is empty.
    """
    values = np.asarray(heatmap, dtype=np.float64)
    region = values >= threshold
    inside = box_mask(box, values.shape)
    union = int((region | inside).sum())
    if union == 0:
        return 0.0
    return float((region & inside).sum() / union)


def _overlaps(maps: np.ndarray, coordinates: np.ndarray, threshold: float, chunk: int = 64) -> tuple[np.ndarray, ...]:
    """(IoBB, IoU) of each map with its box, as ``iobb`` and ``iou`` count them, a chunk of maps at a time."""
    n, height, width = maps.shape
    rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
    iobbs, ious = np.zeros(n), np.zeros(n)
    for start in range(0, n, chunk):
        region = maps[start : start + chunk] >= threshold
        x, y, w, h = (coordinates[start : start + chunk, i, None] for i in range(4))
        inside_rows = ((rows >= y) & (rows < y + h)).astype(np.float32)  # (chunk, H)
        inside_cols = ((cols >= x) & (cols < x + w)).astype(np.float32)  # (chunk, W)
        intersection = np.einsum("nhw,nh,nw->n", region.astype(np.float32), inside_rows, inside_cols)
        area = region.sum(axis=(1, 2)).astype(np.float64)
        box_area = inside_rows.sum(axis=1).astype(np.float64) * inside_cols.sum(axis=1)
        union = area + box_area - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iobbs[start : start + chunk] = np.where(area > 0, intersection / area, 0.0)
            ious[start : start + chunk] = np.where(union > 0, intersection / union, 0.0)
    return iobbs, ious


def score_boxes(heatmaps: Any, boxes: pd.DataFrame, threshold: float = HEATMAP_THRESHOLD) -> pd.DataFrame:
    """Per box: pointing-game hit, IoBB and IoU; ``heatmaps[i]`` belongs to row i of ``boxes``.

    ``boxes`` must already be in heatmap pixels (``boxes_to_heatmap``).
    """
    maps = np.asarray(heatmaps)
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"need one (H, W) heatmap per box: {len(boxes)} boxes, heatmaps of shape {maps.shape}")
    scored = boxes.reset_index(drop=True).copy()
    coordinates = scored[["x", "y", "w", "h"]].to_numpy(float).reshape(-1, 4)
    scored["pointing_hit"] = [pointing_game_hit(m, tuple(b)) for m, b in zip(maps, coordinates)]
    scored["iobb"], scored["iou"] = _overlaps(maps, coordinates, threshold)
    return scored


def localization_scores(
    heatmaps: Any, boxes: pd.DataFrame, threshold: float = HEATMAP_THRESHOLD, t_iobb: Sequence[float] = T_IOBB,
    t_iou: Sequence[float] = T_IOU,
) -> pd.DataFrame:
    """Per finding (and ``all``): boxes, pointing-game accuracy, T(IoBB) and T(IoU) accuracies.

    T(IoBB) accuracy at T is the share of boxes with IoBB >= T, T(IoU) the share with
    IoU >= T (Wang et al. 2017, Table 3; ``metrics.wang2017_localization`` holds their
    figures).
    """
    scored = score_boxes(heatmaps, boxes, threshold)
    return _aggregate(scored, t_iobb, t_iou)


def box_hits(scored: pd.DataFrame, t_iobb: Sequence[float] = T_IOBB, t_iou: Sequence[float] = T_IOU) -> pd.DataFrame:
    """Per box (``score_boxes``' rows), 1.0 or 0.0 for each accuracy of ``metric_keys``: did this box count?"""
    hits = {POINTING_GAME: scored["pointing_hit"].to_numpy(dtype=np.float64)}
    hits |= {f"t_iobb_{t:g}": (scored["iobb"].to_numpy(float) >= t).astype(np.float64) for t in t_iobb}
    if len(t_iou):
        if "iou" not in scored.columns:
            raise KeyError("the scored boxes have no iou column: score them with score_boxes")
        hits |= {f"t_iou_{t:g}": (scored["iou"].to_numpy(float) >= t).astype(np.float64) for t in t_iou}
    return pd.DataFrame(hits, index=scored.index)


def _row_order(findings: Sequence[str]) -> list[str]:
    """The findings in ``FINDINGS`` order (any other name after them, sorted): the table's rows before ``all``."""
    present = set(findings)
    return [f for f in FINDINGS if f in present] + sorted(present - set(FINDINGS))


def hit_table(hits: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """Per finding and ``all``: boxes and the mean of each column of ``hits`` (one row per box)."""
    findings = np.asarray(findings, dtype=object)
    if len(findings) != len(hits):
        raise ValueError(f"{len(findings)} findings for {len(hits)} boxes")
    values = hits.to_numpy(dtype=np.float64)
    rows = {}
    for finding in _row_order(list(findings)):
        part = values[findings == finding]
        rows[finding] = {"boxes": len(part), **dict(zip(hits.columns, part.mean(axis=0)))}
    rows[ALL_ROW] = {"boxes": len(values), **dict(zip(hits.columns, values.mean(axis=0) if len(values) else
                                                            np.full(values.shape[1], np.nan)))}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["boxes", *hits.columns])
    table.index.name = "finding"
    table["boxes"] = table["boxes"].astype(int)
    return table


def _aggregate(scored: pd.DataFrame, t_iobb: Sequence[float], t_iou: Sequence[float] = T_IOU) -> pd.DataFrame:
    return hit_table(box_hits(scored, t_iobb, t_iou), scored["finding"].to_numpy())


# --------------------------------------------------------------------------- chance level


def random_heatmaps(count: int, size: int, seed: int = 0, grid: int = 7) -> np.ndarray:
    """(count, size, size) smooth random maps in [0, 1]: uniform noise on a ``grid``² lattice, upsampled.

    ``grid`` 7 matches every backbone's last stage at 224 px, so the blobs are as coarse
    as Grad-CAM's; white noise at full resolution would be a harder, unfair baseline.
    """
    chunks = list(_random_heatmap_chunks(count, size, seed, grid, chunk=max(count, 1)))
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size))


def _random_heatmap_chunks(count: int, size: int, seed: int, grid: int, chunk: int = 128) -> Iterator[np.ndarray]:
    """``random_heatmaps(count, size, seed, grid)`` in slices of ``chunk`` maps: the same maps, less memory at once."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, grid, grid, generator=generator, dtype=torch.float64)
    for start in range(0, count, chunk):
        maps = F.interpolate(coarse[start : start + chunk], size=(size, size), mode="bilinear",
                             align_corners=False)[:, 0]
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - low
        yield ((maps - low) / span.clamp_min(1e-12)).numpy()


def random_baseline_hits(
    boxes: pd.DataFrame,
    heatmap_size: int,
    threshold: float = HEATMAP_THRESHOLD,
    seed: int = 0,
    repeats: int = 20,
    t_iobb: Sequence[float] = T_IOBB,
    t_iou: Sequence[float] = T_IOU,
    grid: int = 7,
) -> pd.DataFrame:
    """Per box, each accuracy's hit rate over ``repeats`` draws of random heatmaps (``box_hits`` averaged).

    Draw r uses seed ``seed * 100003 + r``, as ``random_baseline_scores`` always has. Rows
    follow ``boxes``' order (index reset), so they pair with the Grad-CAM hits box by box.
    """
    if len(boxes) == 0:
        raise ValueError("no boxes to score")
    placed = boxes.reset_index(drop=True)
    total = pd.DataFrame(0.0, index=placed.index, columns=metric_keys(t_iobb, t_iou))
    for repeat in range(repeats):
        scored = []
        start = 0
        for maps in _random_heatmap_chunks(len(placed), heatmap_size, seed * 100003 + repeat, grid):
            scored.append(score_boxes(maps, placed.iloc[start : start + len(maps)], threshold))
            start += len(maps)
        total += box_hits(pd.concat(scored, ignore_index=True), t_iobb, t_iou).to_numpy()
    rates = total / repeats
    rates.attrs.update({"repeats": repeats, "seed": seed, "grid": grid})
    return rates


def random_baseline_scores(
    boxes: pd.DataFrame,
    heatmap_size: int,
    threshold: float = HEATMAP_THRESHOLD,
    seed: int = 0,
    repeats: int = 20,
    t_iobb: Sequence[float] = T_IOBB,
    grid: int = 7,
    t_iou: Sequence[float] = T_IOU,
) -> pd.DataFrame:
    """``localization_scores`` of random heatmaps for the same boxes, averaged over ``repeats`` draws.

    The chance level the Grad-CAM scores must beat: what the boxes' sizes alone give.
    (The mean over draws of each finding's accuracy is the finding's mean of each box's
    hit rate over the draws: ``random_baseline_hits``, aggregated.)
    """
    rates = random_baseline_hits(boxes, heatmap_size, threshold, seed, repeats, t_iobb, t_iou, grid)
    table = hit_table(rates, boxes["finding"].to_numpy())
    table.attrs.update(rates.attrs)
    return table


# --------------------------------------------------------------------------- intervals


@dataclass
class LocalizationIntervals:
    """Accuracies with patient-bootstrap intervals: Grad-CAM, random heatmaps, and their difference.

    ``scores`` and ``baseline``: rows per finding and ``all``; ``boxes``, ``patients``, then
    each accuracy followed by ``<key>_ci_low`` and ``<key>_ci_high``. ``versus_random``:
    long format, one row per (finding, metric) with ``difference`` (Grad-CAM minus random,
    paired by box), ``ci_low``, ``ci_high``, ``p_one_sided``, ``beats_chance`` and
    ``resamples`` (those with a box of the finding; 0, and no interval, for a finding whose
    boxes come from fewer than ``MIN_PATIENTS_FOR_INTERVAL`` patients). Each frame's attrs hold
    ``n_resamples``, ``seed``, ``confidence`` and ``resampling``.
    """

    scores: pd.DataFrame
    baseline: pd.DataFrame
    versus_random: pd.DataFrame


def resampled_accuracies(
    hits: Any, findings: Sequence[str], patient_ids: Any, n_resamples: int = 1000, seed: int = 0,
) -> tuple[list[str], np.ndarray]:
    """(rows, (n_resamples, rows, metrics) accuracies) over patient-bootstrap resamples of the boxes.

    ``hits`` is (boxes, metrics): 0/1 hits or any per-box value (a hit rate, a difference);
    each resample's accuracy for a row is the mean over the resampled boxes of the row's
    finding (``all``: every box), NaN when none was drawn. Rows: the findings (``FINDINGS``
    order), then ``all``. Patients are drawn as ``metrics.bootstrap_auroc`` draws them (same
    ``seed`` and patients, same resamples): per-patient sums and counts, weighted by how
    often each patient is drawn, so no box is touched inside the resample loop.
    """
    values = np.asarray(hits, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    findings = np.asarray(findings, dtype=object)
    if not len(values) == len(findings):
        raise ValueError(f"{len(values)} boxes of hits, {len(findings)} findings")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    codes, n_patients = _patient_codes(patient_ids, len(values))
    rows = [*_row_order(list(findings)), ALL_ROW]
    n_rows, n_metrics = len(rows), values.shape[1]
    sums = np.zeros((n_patients, n_rows, n_metrics))  # per patient: hits summed over its boxes of each row
    counts = np.zeros((n_patients, n_rows))  # per patient: its boxes of each row
    for r, row in enumerate(rows):
        member = np.ones(len(values), bool) if row == ALL_ROW else findings == row
        counts[:, r] = np.bincount(codes[member], minlength=n_patients)
        for m in range(n_metrics):
            sums[:, r, m] = np.bincount(codes[member], weights=values[member, m], minlength=n_patients)
    resampled = np.empty((n_resamples, n_rows, n_metrics))
    done = 0
    for draws in _patient_draw_chunks(n_patients, n_resamples, seed):  # (chunk, patients): times each is drawn
        drawn_hits = (draws @ sums.reshape(n_patients, -1)).reshape(len(draws), n_rows, n_metrics)
        drawn_boxes = draws @ counts
        with np.errstate(divide="ignore", invalid="ignore"):
            resampled[done : done + len(draws)] = np.where(drawn_boxes[..., None] > 0,
                                                           drawn_hits / drawn_boxes[..., None], np.nan)
        done += len(draws)
    return rows, resampled


def localization_intervals(
    hits: pd.DataFrame,
    random_rates: pd.DataFrame,
    findings: Sequence[str],
    patient_ids: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> LocalizationIntervals:
    """Grad-CAM and random-heatmap accuracies with patient-bootstrap intervals, and their paired difference.

    ``hits`` (``box_hits``) and ``random_rates`` (``random_baseline_hits``) have one row per box
    in the same order and the same metric columns; ``findings`` and ``patient_ids`` name each
    box's finding and patient. One set of resamples serves all three, so the difference is
    paired by box and patient.
    """
    if list(hits.columns) != list(random_rates.columns) or len(hits) != len(random_rates):
        raise ValueError("hits and random_rates must have the same boxes (rows) and metrics (columns)")
    keys = list(hits.columns)
    gradcam_values = hits.to_numpy(dtype=np.float64)
    random_values = random_rates.to_numpy(dtype=np.float64)
    stacked = np.concatenate([gradcam_values, random_values], axis=1)
    rows, resampled = resampled_accuracies(stacked, findings, patient_ids, n_resamples, seed)
    n = len(keys)
    patients_per_row = _patients_per_row(findings, patient_ids, rows)
    too_few = (patients_per_row < MIN_PATIENTS_FOR_INTERVAL).to_numpy()
    resampled[:, too_few] = np.nan  # a single patient's boxes: every resample is that patient, or nothing
    gradcam_resampled, random_resampled = resampled[..., :n], resampled[..., n:]
    difference_resampled = gradcam_resampled - random_resampled  # a difference of means over the same boxes

    attrs = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence, "resampling": RESAMPLING}
    scores = _with_intervals(hit_table(hits, findings), gradcam_resampled, rows, keys, patients_per_row, confidence)
    baseline = _with_intervals(hit_table(random_rates, findings), random_resampled, rows, keys, patients_per_row,
                               confidence)
    difference = scores[keys] - baseline[keys]
    records = []
    for r, row in enumerate(rows):
        for m, key in enumerate(keys):
            samples = difference_resampled[:, r, m]
            low, high, used = percentile_interval(samples, confidence)
            finite = samples[np.isfinite(samples)]
            records.append({
                "finding": row, "metric": key, "boxes": int(scores.loc[row, "boxes"]),
                "gradcam": scores.loc[row, key], "random": baseline.loc[row, key],
                "difference": difference.loc[row, key], "ci_low": low, "ci_high": high,
                "p_one_sided": (1 + int((finite <= 0).sum())) / (1 + used) if used else np.nan,
                "beats_chance": bool(used and low > 0), "resamples": used,
            })
    versus_random = pd.DataFrame(records)
    for frame in (scores, baseline, versus_random):
        frame.attrs.update(attrs)
    baseline.attrs.update(random_rates.attrs)
    return LocalizationIntervals(scores=scores, baseline=baseline, versus_random=versus_random)


def _patients_per_row(findings: Sequence[str], patient_ids: Any, rows: list[str]) -> pd.Series:
    frame = pd.DataFrame({"finding": np.asarray(findings, dtype=object), "patient": np.asarray(patient_ids)})
    counts = frame.groupby("finding")["patient"].nunique()
    counts[ALL_ROW] = frame["patient"].nunique()
    return counts.reindex(rows).astype(int)


def _with_intervals(point: pd.DataFrame, resampled: np.ndarray, rows: list[str], keys: list[str],
                    patients: pd.Series, confidence: float) -> pd.DataFrame:
    """``point`` (``hit_table``) with ``patients`` after ``boxes`` and each key followed by its interval."""
    table = point.reindex(rows)
    columns: dict[str, Any] = {"boxes": table["boxes"].astype(int), "patients": patients}
    for m, key in enumerate(keys):
        bounds = [percentile_interval(resampled[:, r, m], confidence)[:2] for r in range(len(rows))]
        columns[key] = table[key]
        columns[f"{key}_ci_low"] = [low for low, _ in bounds]
        columns[f"{key}_ci_high"] = [high for _, high in bounds]
    result = pd.DataFrame(columns, index=table.index)
    result.index.name = "finding"
    return result


# --------------------------------------------------------------------------- heatmaps for boxed images


def box_heatmaps(
    model: nn.Module,
    cache: Any,
    boxes: pd.DataFrame,
    input_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    layer: nn.Module | None = None,
    desc: str = "Grad-CAM",
) -> np.ndarray:
    """Grad-CAM (len(boxes), input_size, input_size) for each box's image and finding.

    Pixels come from the image cache (``cxrutils.data.cache.ImageCache``) through the same
    ``prepare_batch`` as training and prediction, so the heatmap is in the square
    model frame that ``boxes_to_heatmap`` maps boxes into. Each image goes through the
    network once for all its boxed findings (``gradcam_per_film``), ``batch_size``
    images per pass; boxes of the same image and finding share one map.
    """
    device = torch.device(device)
    model = model.to(device)
    pixels = cache.pixels
    keys = list(zip(boxes["image"], [finding_index(f) for f in boxes["finding"]]))
    wanted: dict[str, list[int]] = {}  # image -> its boxed findings, each once, in order of first box
    for image, finding in keys:
        if finding not in wanted.setdefault(image, []):
            wanted[image].append(finding)
    images = list(wanted)
    position = {pair: p for p, pair in enumerate((image, f) for image in images for f in wanted[image])}
    boxes_on = Counter(image for image, _ in keys)
    rows = cache.rows(images)
    maps = []
    bar = progress_bar(total=len(boxes), desc=desc, unit="map", done=f"{desc}: {{n:,}} heatmaps")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.from_numpy(np.asarray(pixels[rows[start : start + batch_size]]))[:, None]
        inputs = prepare_batch(batch, device, input_size, channels_last=False)
        found = [wanted[image] for image in chunk]
        maps.append(gradcam_per_film(model, inputs, found, layer=layer, films_per_pass=batch_size).cpu().numpy())
        bar.update(sum(boxes_on[image] for image in chunk))
    bar.close()
    if not maps:
        return np.zeros((0, input_size, input_size))
    return np.concatenate(maps)[[position[key] for key in keys]]  # one map per box, shared by its image's finding


def place_boxes(boxes: pd.DataFrame, paths: pd.Series, heatmap_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Boxes from ``BBox_List_2017.csv`` (1024-px NIH frame) -> (boxes in heatmap pixels, boxes outside their film).

    Each boxed film's stored size is read from its file (``paths``: image name -> path),
    the boxes are scaled onto it and then padded and resized with it into the
    ``heatmap_size``² model frame. A box that falls outside its film even after the
    scaling (a cropped film, or another film under the same name) is returned in the
    second frame, in stored-film pixels, with the film's size: report it, never score
    it as a miss. The first frame keeps ``boxes``' row order, without those.
    """
    sizes = boxed_image_sizes(paths, boxes["image"])
    stored = boxes_in_stored_frame(boxes, sizes)
    outside = stored[stored["outside"]].drop(columns="outside")
    outside = outside.join(sizes.rename(columns={"width": "film_width", "height": "film_height"}), on="image")
    inside = stored[~stored["outside"]].drop(columns="outside")
    return boxes_to_heatmap(inside, sizes, heatmap_size), outside.reset_index(drop=True)


def boxed_image_sizes(paths: pd.Series, images: Sequence[str]) -> pd.DataFrame:
    """``stored_image_sizes`` for just ``images`` (the boxed ones), naming any without a file."""
    wanted = pd.Index(pd.unique(pd.Series(list(images))))
    missing = wanted.difference(paths.index)
    if len(missing):
        raise FileNotFoundError(f"{len(missing)} boxed images have no file, e.g. {missing[0]}")
    return stored_image_sizes(paths.loc[wanted])

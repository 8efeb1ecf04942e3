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
- Scores: the pointing game (is the heatmap's maximum inside the box?) and
  Wang et al. 2017's T(IoBB) accuracy (share of boxes whose intersection over the
  detected region is at least T). A seeded random-heatmap baseline gives the
  chance level for the same boxes: small boxes are hard for any heatmap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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

Box = tuple[float, float, float, float]  # x, y, w, h
T_IOBB: tuple[float, ...] = (0.1, 0.25, 0.5)
ALL_ROW = "all"


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


def score_boxes(heatmaps: Any, boxes: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per box: pointing-game hit and IoBB; ``heatmaps[i]`` belongs to row i of ``boxes``.

    ``boxes`` must already be in heatmap pixels (``boxes_to_heatmap``).
    """
    maps = np.asarray(heatmaps)
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"need one (H, W) heatmap per box: {len(boxes)} boxes, heatmaps of shape {maps.shape}")
    scored = boxes.reset_index(drop=True).copy()
    coordinates = scored[["x", "y", "w", "h"]].to_numpy(float)
    scored["pointing_hit"] = [pointing_game_hit(m, tuple(b)) for m, b in zip(maps, coordinates)]
    scored["iobb"] = [iobb(m, tuple(b), threshold) for m, b in zip(maps, coordinates)]
    return scored


def localization_scores(
    heatmaps: Any, boxes: pd.DataFrame, threshold: float = 0.5, t_iobb: Sequence[float] = T_IOBB
) -> pd.DataFrame:
    """Per finding (and ``all``): boxes, pointing-game accuracy, T(IoBB) accuracies.

    T(IoBB) accuracy at T is the share of boxes with IoBB >= T (Wang et al. 2017
    report T = 0.1; see ``metrics.wang2017_localization``).
    """
    scored = score_boxes(heatmaps, boxes, threshold)
    return _aggregate(scored, t_iobb)


def _aggregate(scored: pd.DataFrame, t_iobb: Sequence[float]) -> pd.DataFrame:
    def summary(part: pd.DataFrame) -> dict[str, Any]:
        row: dict[str, Any] = {"boxes": len(part), "pointing_game": part["pointing_hit"].mean()}
        for t in t_iobb:
            row[f"t_iobb_{t:g}"] = (part["iobb"] >= t).mean()
        return row

    order = [f for f in FINDINGS if f in set(scored["finding"])] + sorted(set(scored["finding"]) - set(FINDINGS))
    rows = {finding: summary(scored[scored["finding"] == finding]) for finding in order}
    rows[ALL_ROW] = summary(scored)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "finding"
    table["boxes"] = table["boxes"].astype(int)
    return table


# --------------------------------------------------------------------------- chance level


def random_heatmaps(count: int, size: int, seed: int = 0, grid: int = 7) -> np.ndarray:
    """(count, size, size) smooth random maps in [0, 1]: uniform noise on a ``grid``² lattice, upsampled.

    ``grid`` 7 matches every backbone's last stage at 224 px, so the blobs are as coarse
    as Grad-CAM's; white noise at full resolution would be a harder, unfair baseline.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, grid, grid, generator=generator, dtype=torch.float64)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return ((maps - low) / span.clamp_min(1e-12)).numpy()


def random_baseline_scores(
    boxes: pd.DataFrame,
    heatmap_size: int,
    threshold: float = 0.5,
    seed: int = 0,
    repeats: int = 20,
    t_iobb: Sequence[float] = T_IOBB,
    grid: int = 7,
) -> pd.DataFrame:
    """``localization_scores`` of random heatmaps for the same boxes, averaged over ``repeats`` draws.

    The chance level the Grad-CAM scores must beat: what the boxes' sizes alone give.
    """
    if len(boxes) == 0:
        raise ValueError("no boxes to score")
    tables = []
    for repeat in range(repeats):
        maps = random_heatmaps(len(boxes), heatmap_size, seed=seed * 100003 + repeat, grid=grid)
        tables.append(localization_scores(maps, boxes, threshold, t_iobb))
    mean = pd.concat(tables).groupby(level=0, sort=False).mean()
    mean["boxes"] = tables[0]["boxes"]
    mean.attrs.update({"repeats": repeats, "seed": seed, "grid": grid})
    return mean


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

"""Glue for notebook 03: one run folder scored on one split, from predictions to ``metrics.json``.

The statistics live in ``cxrutils.metrics`` (patient bootstrap, thresholded
reports, calibration, subgroups) and ``cxrutils.localization`` (Grad-CAM and its
scores), the figures in ``cxrutils.plots``. This module opens the run folder,
scores the split with the run's best checkpoint, takes the decision thresholds
from the run's ``thresholds.json`` (chosen on validation at training time: nothing
here looks at the scored labels to pick one), prepares what the localization and
gallery sections draw, and writes what the notebook shows into the run folder.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from IPython.display import HTML

from cxrutils import localization, metrics, run_folder
from cxrutils.cache import ImageCache
from cxrutils.dataset import NIHDataset
from cxrutils.labels import FINDINGS
from cxrutils.model import DENSE_BLOCK_STRIDES, GRAY_MEAN, GRAY_STD, ChestXrayDenseNet
from cxrutils.paths import resolve
from cxrutils.profiling import stage
from cxrutils.predict import SPLITS, TTA_SUFFIX, load_run_model, predict_split, prediction_arrays
from cxrutils.thresholds import METHODS
from cxrutils.train import (
    Distributed,
    TrainConfig,
    load_training_dataset,
    open_image_cache,
    prepare_batch,
    read_run_config,
    select_device,
)

METRICS_NAME = "metrics.json"
CONFIDENCE = 0.95
CALIBRATION_BINS = 10
RANDOM_BASELINE_REPEATS = 20
# DenseNet121's last dense block sees the input downsampled 32 times (7 x 7 at 224 px):
# the random baseline's blobs are made as coarse as Grad-CAM's.
GALLERY_KINDS: dict[str, str] = {"TP": "true positives", "FP": "false positives", "FN": "false negatives"}

_BOX = "padding:.7em 1em;border-radius:6px;margin:.5em 0;"
_AMBER = _BOX + "background:#fff4e5;color:#5f3b00;border-left:6px solid #e69500;"
_RED = _BOX + "background:#b00020;color:white;"
_NEUTRAL = _BOX + "background:#f1f3f4;color:#222;border-left:6px solid #888;"


def note(text: str, tone: str = "amber") -> HTML:
    """A short boxed note shown in place of (or beside) a section: ``amber``, ``red`` or ``neutral``."""
    style = {"amber": _AMBER, "red": _RED, "neutral": _NEUTRAL}[tone]
    return HTML(f"<div style='{style}'>{html.escape(text)}</div>")


# --------------------------------------------------------------------------- the run and its predictions


def metrics_name(split: str, tta_hflip: bool = False) -> str:
    """``metrics.json`` for the test split, else ``metrics_<split>[_hflip_tta].json``: none overwrites another."""
    name = split + (TTA_SUFFIX if tta_hflip else "")
    return METRICS_NAME if name == "test" else f"metrics_{name}.json"


@dataclass
class RunEvaluation:
    """A run scored on one split: its settings, dataset, predictions and validation thresholds."""

    run_dir: Path
    config: TrainConfig  # config.json's settings (its cache_dir is the resolved folder the run trained from)
    dataset: NIHDataset
    split: str
    tta_hflip: bool
    predictions: pd.DataFrame  # image, patient_id, prob_<finding> x 14, the 14 labels
    labels: np.ndarray  # (n, 14) int8
    probabilities: np.ndarray  # (n, 14) float64
    patient_ids: np.ndarray
    threshold_method: str
    thresholds_by_finding: dict[str, float | None]  # the run's thresholds.json entry, untouched
    gradcam_layer: str = "denseblock4"  # the dense block Grad-CAM reads (the last one, unless the input is tiny)
    _cache: ImageCache | None = field(default=None, repr=False)
    _model: ChestXrayDenseNet | None = field(default=None, repr=False)

    @property
    def gradcam_grid(self) -> int:
        """Cells per side of the Grad-CAM map: the input size over the chosen block's stride."""
        return max(1, self.input_size // DENSE_BLOCK_STRIDES[self.gradcam_layer])

    def gradcam_module(self) -> torch.nn.Module:
        return self.model().dense_block(self.gradcam_layer)

    @property
    def thresholds(self) -> np.ndarray:
        """The validation thresholds in ``FINDINGS`` order; NaN where validation could not choose one."""
        return metrics.threshold_array(self.thresholds_by_finding)

    @property
    def has_thresholds(self) -> bool:
        """False when validation could choose no threshold at all (nothing can be binarised)."""
        return bool(np.isfinite(self.thresholds).any())

    @property
    def n_images(self) -> int:
        return len(self.predictions)

    @property
    def n_patients(self) -> int:
        return int(pd.unique(self.patient_ids).size)

    @property
    def not_scored(self) -> list[str]:
        return list(self.predictions.attrs.get("not_scored", []))

    @property
    def input_size(self) -> int:
        return int(self.config.input_size)

    @property
    def device(self) -> torch.device:
        return select_device(self.config.device, Distributed())

    def image_cache(self) -> ImageCache:
        """The run's image cache (``train.open_image_cache``: reused while the files are unchanged, else rebuilt)."""
        if self._cache is None:
            self._cache = open_image_cache(self.dataset, self.config)
        return self._cache

    @property
    def images_match_training(self) -> bool | None:
        """Whether the image cache still holds the files the run trained on (None: the run did not record them)."""
        trained_on = run_folder.read_config(self.run_dir).get("cache_fingerprint")
        return None if trained_on is None else trained_on == self.image_cache().fingerprint

    def model(self) -> ChestXrayDenseNet:
        """The run's best checkpoint, in eval mode on the evaluation device."""
        if self._model is None:
            model, _, _ = load_run_model(self.run_dir)
            self._model = model.to(self.device)
        return self._model

    def image_metadata(self) -> pd.DataFrame:
        """The metadata rows of the scored images, in prediction order."""
        return self.dataset.metadata.set_index("image").loc[self.predictions["image"]].reset_index()


def load_evaluation(
    runs_dir: str | os.PathLike[str],
    run_name: str,
    split: str = "test",
    threshold_method: str = "youden",
    tta_hflip: bool = False,
    gradcam_layer: str = "denseblock4",
) -> RunEvaluation:
    """Open ``<runs_dir>/<run_name>``, score ``split`` with its best checkpoint, read its validation thresholds.

    ``gradcam_layer`` is the dense block Grad-CAM reads: the last one by default; a
    tiny input (the CPU demo's 64 px makes denseblock4 a 2 x 2 grid) may need denseblock3.

    Scoring goes through ``predict.predict_split``, which writes
    ``predictions_<split>.csv`` into the run folder. The thresholds are the
    ``threshold_method`` entry of the run's ``thresholds.json``, written by training
    from the validation predictions of the best epoch; they are used unchanged.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if gradcam_layer not in DENSE_BLOCK_STRIDES:
        raise ValueError(f"gradcam_layer must be one of {sorted(DENSE_BLOCK_STRIDES)}, got {gradcam_layer!r}")
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    run_dir = resolve(runs_dir) / run_name
    for required in (run_folder.CONFIG_NAME, run_folder.BEST_CHECKPOINT, run_folder.THRESHOLDS_NAME):
        if not (run_dir / required).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {required}: it is not a finished training run. Train it first (notebook 02, "
                "or python -m cxrutils.train --config ...), or set runs_dir/run_name to an existing run."
            )
    config = read_run_config(run_dir)  # config.json also records facts that are not settings: dropped
    all_thresholds = run_folder.read_thresholds(run_dir)
    if threshold_method not in all_thresholds:
        raise KeyError(
            f"{run_dir / run_folder.THRESHOLDS_NAME} has no {threshold_method!r} thresholds; "
            f"it holds {sorted(all_thresholds)}"
        )
    dataset = load_training_dataset(config)
    predictions = predict_split(run_dir, split, tta_hflip=tta_hflip, dataset=dataset)
    labels, probabilities, patient_ids = prediction_arrays(predictions)
    return RunEvaluation(
        run_dir=run_dir,
        config=config,
        dataset=dataset,
        split=split,
        tta_hflip=tta_hflip,
        predictions=predictions,
        labels=labels,
        probabilities=probabilities,
        patient_ids=patient_ids,
        threshold_method=threshold_method,
        thresholds_by_finding=dict(all_thresholds[threshold_method]),
        gradcam_layer=gradcam_layer,
    )


def describe(evaluation: RunEvaluation) -> str:
    """Markdown: what was scored, with which checkpoint, and where the thresholds come from."""
    attrs = evaluation.predictions.attrs
    missing = [f for f in FINDINGS if evaluation.thresholds_by_finding.get(f) is None]
    lines = [
        f"- **Run:** `{evaluation.run_dir}`; best checkpoint from epoch {attrs.get('best_epoch', '?')} "
        f"(mean validation AUROC {attrs.get('best_val_auroc_mean', float('nan')):.3f}), scored on "
        f"`{attrs.get('device', '?')}`" + (" with horizontal-flip test-time augmentation." if evaluation.tta_hflip
                                          else ", without test-time augmentation."),
        f"- **Split:** `{evaluation.split}` ({evaluation.dataset.split_kind} split): "
        f"{evaluation.n_images} images of {evaluation.n_patients} patients"
        + (f" ({len(evaluation.not_scored)} not in the image cache, not scored)." if evaluation.not_scored else "."),
        f"- **Thresholds:** `{evaluation.threshold_method}`, read from `{run_folder.THRESHOLDS_NAME}` in the run "
        "folder, chosen on the validation predictions at training time"
        + (f"; none could be chosen for {', '.join(missing)} (validation had one label value only)." if missing
           else "."),
    ]
    return "\n".join(lines)


def images_caveat(evaluation: RunEvaluation) -> HTML:
    """A warning when the images under the data root changed since training (e.g. the demo was rebuilt); else empty."""
    if evaluation.images_match_training is False:
        return note(
            f"The images under {evaluation.config.data_root} are not the ones this run was trained on (the image "
            "cache fingerprint differs from the one in config.json): the files were replaced or rebuilt since. "
            "The numbers below score the model on today's files; retrain it to evaluate a matched pair.",
            tone="red",
        )
    return HTML("")


def threshold_caveat(evaluation: RunEvaluation) -> HTML:
    """A warning when the scored split is not held out from threshold choice or training; empty otherwise."""
    if evaluation.split == "val":
        return note(
            "These are the validation images the thresholds were chosen on (and that picked the best epoch): "
            "the operating points below are optimistic. Score split='test' for an honest estimate."
        )
    if evaluation.split == "train":
        return note("These are the training images: every number below is optimistic, not an estimate of "
                    "performance on new patients.")
    return HTML("")


# --------------------------------------------------------------------------- per-class summary


def auroc_table(evaluation: RunEvaluation, n_resamples: int, seed: int) -> pd.DataFrame:
    """``metrics.bootstrap_auroc`` of the scored split: per-finding and mean AUROC with patient-bootstrap CIs."""
    with stage("bootstrap AUROC", images=evaluation.n_images, resamples=n_resamples):
        return metrics.bootstrap_auroc(evaluation.labels, evaluation.probabilities, evaluation.patient_ids,
                                       n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE)


def summary_table(
    auroc: pd.DataFrame, average_precision: np.ndarray, operating: pd.DataFrame
) -> pd.DataFrame:
    """Per finding: AUROC [CI], AP, validation threshold, sensitivity, specificity, positives; then the mean.

    ``auroc`` from ``metrics.bootstrap_auroc``, ``average_precision`` from
    ``metrics.per_class_average_precision``, ``operating`` from ``metrics.operating_points``.
    """
    rows = auroc.index  # the findings, then the mean
    table = pd.DataFrame(
        {
            "AUROC": auroc["auroc"],
            "CI low": auroc["ci_low"],
            "CI high": auroc["ci_high"],
            "AP": pd.Series(average_precision, index=list(FINDINGS)).reindex(rows),
            "threshold (val)": operating["threshold"].reindex(rows),
            "sensitivity": operating["sensitivity"].reindex(rows),
            "specificity": operating["specificity"].reindex(rows),
            "positives": auroc["positives"],
        },
        index=rows,
    )
    notes = []
    for finding in table.index:
        if finding == metrics.MEAN_ROW:
            notes.append(f"over {len(auroc.attrs['mean_over'])} findings with a defined AUROC")
            continue
        parts = []
        if operating.loc[finding, "positives"] == 0:
            parts.append("no positives in this split: AUROC, AP and sensitivity undefined")
        elif operating.loc[finding, "negatives"] == 0:
            parts.append("no negatives in this split")
        if not np.isfinite(operating.loc[finding, "threshold"]):
            parts.append("no validation threshold")
        notes.append("; ".join(parts))
    table["note"] = notes
    table.index.name = "finding"
    return table


def headline(auroc: pd.DataFrame, evaluation: RunEvaluation) -> str:
    """``mean AUROC 0.812 [0.795, 0.829] (test, n=25596 images)``, or say that it is undefined."""
    mean = auroc.loc[metrics.MEAN_ROW]
    where = f"({evaluation.split}{', hflip TTA' if evaluation.tta_hflip else ''}, n={evaluation.n_images} images)"
    if not np.isfinite(mean["auroc"]):
        return f"mean AUROC undefined: no finding has both positives and negatives {where}"
    return f"mean AUROC {mean['auroc']:.3f} [{mean['ci_low']:.3f}, {mean['ci_high']:.3f}] {where}"


# --------------------------------------------------------------------------- subgroups


def subgroup_columns(evaluation: RunEvaluation) -> dict[str, pd.Series]:
    """Each scored image's sex, age band and view (PA/AP), in prediction order."""
    rows = evaluation.image_metadata()
    return {
        "sex": rows["sex"].rename("sex"),
        "age band": metrics.age_band(rows["age_years"]).rename("age band"),
        "view": rows["view"].rename("view"),
    }


def subgroup_table(evaluation: RunEvaluation, n_resamples: int, seed: int) -> pd.DataFrame:
    """``metrics.subgroup_auroc`` for sex, age band and view, concatenated (long format)."""
    with stage("subgroups", images=evaluation.n_images, resamples=n_resamples):
        tables = [
            metrics.subgroup_auroc(
                evaluation.labels, evaluation.probabilities, evaluation.patient_ids, groups,
                n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE,
            )
            for groups in subgroup_columns(evaluation).values()
        ]
    table = pd.concat(tables, ignore_index=True)
    table.attrs["mean_over"] = {t["subgroup"].iloc[0]: t.attrs["mean_over"] for t in tables if len(t)}
    table.attrs["images_without_group"] = {
        t["subgroup"].iloc[0]: t.attrs["images_without_group"] for t in tables if len(t)
    }
    return table


def subgroup_means(subgroups: pd.DataFrame) -> pd.DataFrame:
    """The mean-AUROC rows of ``subgroup_table``, one per subgroup value, with how many findings each mean covers.

    Within one variable (e.g. age band) every group's mean covers the same findings:
    those with positives and negatives in every group of that variable.
    """
    mean_over = subgroups.attrs.get("mean_over", {})
    means = subgroups[subgroups["finding"] == metrics.MEAN_ROW].copy()
    means["findings in mean"] = [len(mean_over.get(name, [])) for name in means["subgroup"]]
    columns = ["subgroup", "value", "auroc", "ci_low", "ci_high", "findings in mean", "images", "patients"]
    return means[columns].set_index(["subgroup", "value"])


# --------------------------------------------------------------------------- localization


@dataclass
class LocalizationResult:
    """Grad-CAM on the split's boxed images, scored against the boxes and against random heatmaps."""

    boxes: pd.DataFrame  # image, finding, x, y, w, h in heatmap pixels, pointing_hit, iobb
    heatmaps: np.ndarray  # (boxes, input_size, input_size)
    scores: pd.DataFrame  # localization.localization_scores
    baseline: pd.DataFrame  # localization.random_baseline_scores
    heatmap_size: int
    outside: pd.DataFrame  # boxes that fall outside their film as stored: reported, not scored


def boxes_in_split(evaluation: RunEvaluation) -> pd.DataFrame:
    """The dataset's boxes that lie on scored images of the split, in stored-image pixels."""
    boxes = evaluation.dataset.boxes
    return boxes[boxes["image"].isin(set(evaluation.predictions["image"]))].reset_index(drop=True)


def localization_unavailable(evaluation: RunEvaluation) -> str | None:
    """Why the localization section cannot be computed, or None when it can."""
    if evaluation.dataset.boxes.empty:
        return ("No bounding-box file was found under the data root, so localization is not scored "
                "(real NIH: put BBox_List_2017.csv next to Data_Entry_2017.csv).")
    if boxes_in_split(evaluation).empty:
        return (f"None of the {len(evaluation.dataset.boxes)} bounding boxes lies on a scored image of the "
                f"{evaluation.split} split (real NIH: the boxes are on official test images), so localization "
                "is not scored.")
    return None


def localize(evaluation: RunEvaluation, seed: int = 0, repeats: int = RANDOM_BASELINE_REPEATS) -> LocalizationResult:
    """Grad-CAM for each box's image and finding, scored; and the random-heatmap chance level for the same boxes.

    Boxes are in the 1024-px NIH frame; ``localization.place_boxes`` maps them onto each
    film as stored (its size read from the file) and into the square model frame the
    heatmaps live in. Boxes that fall outside their film are set apart
    (``LocalizationResult.outside``), never scored as misses.
    """
    reason = localization_unavailable(evaluation)
    if reason:
        raise ValueError(reason)
    with stage("Grad-CAM localization") as facts:
        result = _localize(evaluation, seed, repeats)
        facts["boxes"] = len(result.boxes)
    return result


def _localize(evaluation: RunEvaluation, seed: int, repeats: int) -> LocalizationResult:
    boxes = boxes_in_split(evaluation)
    assert evaluation.dataset.index is not None  # localization_unavailable: there are scored images
    size = evaluation.input_size
    mapped, outside = localization.place_boxes(boxes, evaluation.dataset.index.paths, size)
    if mapped.empty:
        raise ValueError(f"all {len(boxes)} boxes of the {evaluation.split} split fall outside their films: the "
                         "films are not the NIH films the boxes were drawn on (or were cropped); nothing to score")
    heatmaps = localization.box_heatmaps(
        evaluation.model(), evaluation.image_cache(), mapped, size, device=evaluation.device,
        batch_size=evaluation.config.batch_size, layer=evaluation.gradcam_module(),
    )
    scored = localization.score_boxes(heatmaps, mapped)
    grid = evaluation.gradcam_grid
    return LocalizationResult(
        boxes=scored,
        heatmaps=heatmaps,
        scores=localization.localization_scores(heatmaps, mapped),
        baseline=localization.random_baseline_scores(mapped, size, seed=seed, repeats=repeats, grid=grid),
        heatmap_size=size,
        outside=outside,
    )


def outside_boxes_note(result: LocalizationResult) -> HTML:
    """Which boxes fall outside their film as stored (and so were not scored); empty when none does."""
    if result.outside.empty:
        return HTML("")
    films = result.outside["image"].nunique()
    examples = ", ".join(f"{row.image} ({row.finding})" for row in result.outside.head(5).itertuples())
    return note(
        f"{len(result.outside)} box(es) on {films} film(s) fall outside the film as stored, even after scaling "
        f"from the 1024-px frame of BBox_List_2017.csv to the stored size (e.g. {examples}). The film was cropped, "
        "or is not the NIH film the box was drawn on. These boxes are not scored (a miss would be wrong): they "
        "are listed under localization.outside_film in metrics.json."
    )


def gradcam_resolution_note(evaluation: RunEvaluation) -> HTML:
    """A warning when the last dense block is so coarse that Grad-CAM can hardly point anywhere; empty otherwise."""
    grid = evaluation.gradcam_grid
    if grid >= 4 and evaluation.gradcam_layer == "denseblock4":
        return HTML("")
    if grid >= 4:
        return note(
            f"Grad-CAM here reads {evaluation.gradcam_layer} ({grid} x {grid} at {evaluation.input_size} px), not "
            "the last dense block, whose map would be too coarse to point anywhere at this input size. The random "
            "baseline uses the same grid.",
            tone="neutral",
        )
    return note(
        f"At {evaluation.input_size} px {evaluation.gradcam_layer} is {grid} x {grid}, so every Grad-CAM map is a "
        f"bilinearly upsampled {grid} x {grid} grid whose maximum is often a flat block at the image's edge, and "
        "the pointing game says little. The random baseline is equally coarse, so the comparison with it stays fair."
    )


def localization_table(result: LocalizationResult) -> pd.DataFrame:
    """Pointing game and T(IoBB) accuracies: this model, random heatmaps, and Wang et al. 2017 (T = 0.1)."""
    findings = list(result.scores.index)
    wang = metrics.wang2017_localization()
    columns: dict[tuple[str, str], pd.Series] = {("", "boxes"): result.scores["boxes"]}
    metric_names = {"pointing_game": "pointing game"} | {
        f"t_iobb_{t:g}": f"T(IoBB) {t:g}" for t in localization.T_IOBB
    }
    for column, label in metric_names.items():
        columns[(label, "this model")] = result.scores[column]
        columns[(label, "random heatmaps")] = result.baseline[column].reindex(findings)
        if column == "t_iobb_0.1":
            columns[(label, "Wang et al. 2017")] = wang.reindex(findings)
    table = pd.DataFrame(columns, index=findings)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "finding"
    return table


# --------------------------------------------------------------------------- gallery


def gallery_examples(evaluation: RunEvaluation, per_kind: int) -> pd.DataFrame:
    """Up to ``per_kind`` true positives, false positives and false negatives at the validation thresholds.

    The most confident of each kind (TP and FP: highest probability; FN: lowest),
    one finding at a time before any finding repeats; for TP and FN, images with a
    box for the finding come first so the box can be drawn. Columns: kind, image,
    finding, probability, threshold, and the first box of that finding on the image
    (x, y, w, h in stored-image pixels; NaN when there is none).
    """
    columns = ["kind", "image", "finding", "probability", "threshold", "x", "y", "w", "h"]
    if per_kind < 1:
        return pd.DataFrame(columns=columns)
    cut = evaluation.thresholds
    images = evaluation.predictions["image"].to_numpy()
    boxed = evaluation.dataset.boxes.drop_duplicates(["image", "finding"]).set_index(["image", "finding"])
    frames = []
    for k, finding in enumerate(FINDINGS):
        if not np.isfinite(cut[k]):
            continue
        positive = evaluation.labels[:, k] == 1
        flagged = evaluation.probabilities[:, k] >= cut[k]
        for kind, mask in (("TP", positive & flagged), ("FP", ~positive & flagged), ("FN", positive & ~flagged)):
            frames.append(pd.DataFrame({"kind": kind, "image": images[mask], "finding": finding,
                                        "probability": evaluation.probabilities[mask, k], "threshold": cut[k]}))
    candidates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns[:5])
    keys = pd.MultiIndex.from_arrays([candidates["image"], candidates["finding"]])
    candidates["has_box"] = keys.isin(boxed.index)
    picked = []
    for kind in GALLERY_KINDS:
        part = candidates[candidates["kind"] == kind].copy()
        part["confidence"] = part["probability"] if kind != "FN" else -part["probability"]
        by_box = kind != "FP"
        part = part.sort_values(["has_box", "confidence"] if by_box else ["confidence"],
                                ascending=[False, False] if by_box else [False], kind="stable")
        part["repeat"] = part.groupby("finding").cumcount()  # first of each finding before any second
        picked.append(part.sort_values("repeat", kind="stable").head(per_kind))
    examples = pd.concat(picked, ignore_index=True)
    box_values = boxed[["x", "y", "w", "h"]].reindex(pd.MultiIndex.from_arrays([examples["image"],
                                                                                examples["finding"]]))
    examples[["x", "y", "w", "h"]] = box_values.to_numpy(dtype=float)
    return examples[columns]


def model_frame_images(evaluation: RunEvaluation, images: list[str]) -> np.ndarray:
    """(N, input_size, input_size) in [0, 1]: the cached images as the network sees them, before normalization."""
    cache = evaluation.image_cache()
    if not images:
        return np.zeros((0, evaluation.input_size, evaluation.input_size))
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(images)]))[:, None]
    inputs = prepare_batch(pixels, torch.device("cpu"), evaluation.input_size, channels_last=False)
    return (inputs * GRAY_STD + GRAY_MEAN).clamp(0, 1)[:, 0].numpy()


def gallery_panels(
    evaluation: RunEvaluation, examples: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, float, float] | None], list[str]]:
    """Images, Grad-CAM heatmaps (for each example's finding), boxes and titles for ``plots.localization_gallery``.

    Images and heatmaps are in the square model frame; boxes are mapped into it.
    """
    size = evaluation.input_size
    if examples.empty:
        return np.zeros((0, size, size)), np.zeros((0, size, size)), [], []
    with stage("gallery Grad-CAM", images=len(examples)):
        heatmaps = localization.box_heatmaps(
            evaluation.model(), evaluation.image_cache(), examples[["image", "finding"]], size,
            device=evaluation.device, batch_size=evaluation.config.batch_size, layer=evaluation.gradcam_module(),
        )
    images = model_frame_images(evaluation, examples["image"].tolist())
    boxes: list[tuple[float, float, float, float] | None] = [None] * len(examples)
    with_box = examples.dropna(subset=["x"])
    if len(with_box):
        assert evaluation.dataset.index is not None
        mapped, _ = localization.place_boxes(with_box, evaluation.dataset.index.paths, size)  # outside: not drawn
        for position, row in zip(mapped.index, mapped[["x", "y", "w", "h"]].itertuples(index=False)):
            boxes[examples.index.get_loc(position)] = tuple(float(v) for v in row)  # type: ignore[assignment]
    titles = [
        f"{row.kind}: {row.finding}\np={row.probability:.2f} (thr {row.threshold:.2f})\n{row.image}"
        for row in examples.itertuples()
    ]
    return images, heatmaps, boxes, titles


# --------------------------------------------------------------------------- published context


def context_table(evaluation: RunEvaluation, auroc: pd.DataFrame) -> pd.DataFrame:
    """``metrics.reference_results`` with this run added, each row labelled with its split.

    ``comparable with this run``: the same kind of split, this run scored on its
    test split, and real images. Phantoms are comparable with nothing.
    """
    kind = evaluation.dataset.split_kind
    this_split = {"official": "official", "random": "random patient split"}.get(kind, kind)
    mean = auroc.loc[metrics.MEAN_ROW]
    this_run = {
        "model": f"this run ({evaluation.run_dir.name}): DenseNet121, {evaluation.config.weights} init",
        "input": f"{evaluation.input_size} px",
        "mean_auroc": mean["auroc"],
        "ci_low": mean["ci_low"],
        "ci_high": mean["ci_high"],
        "split": f"{this_split} ({evaluation.split} images)" + (", SYNTHETIC phantoms" if evaluation.dataset.synthetic
                                                                 else ""),
        "source": "this report",
        "comparable_to_official_split": kind == "official" and evaluation.split == "test"
        and not evaluation.dataset.synthetic,
    }
    table = metrics.reference_results()
    comparable = (table["split"] == this_split) & (evaluation.split == "test") & (not evaluation.dataset.synthetic)
    table["comparable with this run"] = comparable.map({True: "yes, roughly", False: "no"})
    table = pd.concat([pd.DataFrame([{**this_run, "comparable with this run": "-"}]), table], ignore_index=True)
    columns = ["model", "input", "mean_auroc", "ci_low", "ci_high", "split", "comparable_to_official_split",
               "comparable with this run", "source"]
    return table[columns].set_index("model")


def context_note(evaluation: RunEvaluation) -> HTML:
    """Which split this run used, and what that allows comparing it with."""
    kind = evaluation.dataset.split_kind
    if evaluation.dataset.synthetic:
        return note(
            f"This run was scored on SYNTHETIC phantoms ({kind} split format). Its AUROC measures how well the "
            "network finds painted shapes; comparing it with any published chest X-ray result below is "
            "meaningless. The table is here only to show where real results stand.",
            tone="red",
        )
    if evaluation.split != "test":
        return note(f"This run was scored on its {evaluation.split} split, not on held-out test images: it is "
                    "comparable with none of the published test results.")
    if kind == "official":
        return note("This run used the official split (test_list.txt): only rows marked 'official' are of the "
                    "same kind, and even those differ in preprocessing, input size and training budget.",
                    tone="neutral")
    if kind == "random":
        return note("This run used a RANDOM patient split (no official split lists under the data root). Random "
                    "splits have a healthier test set and score about 0.03 higher than the official split: only "
                    "the random-split rows are of the same kind, and the official-split rows are NOT comparable.")
    return note(f"This run's split kind is {kind!r}: it is comparable with none of these rows.")


# --------------------------------------------------------------------------- metrics.json


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and NA become null, numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    return value


def _by_row(table: pd.DataFrame, columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Row label -> {column: value}, each column keeping its own type (counts stay integers)."""
    part = table if columns is None else table[columns]
    return {str(index): values for index, values in part.to_dict(orient="index").items()}


def metrics_document(
    evaluation: RunEvaluation,
    *,
    auroc: pd.DataFrame,
    average_precision: np.ndarray,
    operating: pd.DataFrame,
    report: pd.DataFrame | None,
    calibration: pd.DataFrame,
    subgroups: pd.DataFrame,
    localization_result: LocalizationResult | None,
    localization_note: str | None,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Everything the notebook shows, as plain JSON: what ``write_metrics`` saves."""
    mean = auroc.loc[metrics.MEAN_ROW]
    per_class = {
        finding: {
            "auroc": auroc.loc[finding, "auroc"],
            "ci_low": auroc.loc[finding, "ci_low"],
            "ci_high": auroc.loc[finding, "ci_high"],
            "average_precision": ap,
            "positives": auroc.loc[finding, "positives"],
            "negatives": auroc.loc[finding, "negatives"],
            "bootstrap_resamples_used": auroc.loc[finding, "n_resamples"],
        }
        for finding, ap in zip(FINDINGS, average_precision)
    }
    if localization_result is not None:
        located: dict[str, Any] = {
            "available": True,
            "boxes": len(localization_result.boxes),
            "boxes_outside_film": len(localization_result.outside),
            "outside_film": localization_result.outside.to_dict(orient="records"),
            "heatmap_size": localization_result.heatmap_size,
            "gradcam_layer": evaluation.gradcam_layer,
            "gradcam_grid": evaluation.gradcam_grid,
            "scores": _by_row(localization_result.scores),
            "random_baseline": _by_row(localization_result.baseline),
            "random_baseline_repeats": localization_result.baseline.attrs.get("repeats"),
            "wang2017_t_iobb_0.1": metrics.wang2017_localization().to_dict(),
        }
    else:
        located = {"available": False, "note": localization_note}
    document = {
        "run": evaluation.run_dir.name,
        "run_dir": str(evaluation.run_dir),
        "checkpoint": {k: evaluation.predictions.attrs.get(k) for k in ("checkpoint", "epoch", "best_epoch",
                                                                          "best_val_auroc_mean")},
        "split": evaluation.split,
        "split_kind": evaluation.dataset.split_kind,
        "synthetic": evaluation.dataset.synthetic,
        "data_source": evaluation.dataset.description,
        "tta_hflip": evaluation.tta_hflip,
        "images_match_training": evaluation.images_match_training,
        "n_images": evaluation.n_images,
        "n_patients": evaluation.n_patients,
        "not_scored": len(evaluation.not_scored),
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "confidence": CONFIDENCE,
                      "resampling": auroc.attrs.get("resampling")},
        "mean_auroc": {"auroc": mean["auroc"], "ci_low": mean["ci_low"], "ci_high": mean["ci_high"],
                       "over": auroc.attrs.get("mean_over"), "bootstrap_resamples_used": int(mean["n_resamples"])},
        "per_class": per_class,
        "thresholds": {
            "method": evaluation.threshold_method,
            "source": f"{run_folder.THRESHOLDS_NAME} in the run folder: chosen on validation predictions at "
                      "training time, used unchanged",
            "values": evaluation.thresholds_by_finding,
        },
        "operating_points": _by_row(operating.drop(columns=["note"])),
        "classification_report": None if report is None else _by_row(report.drop(columns=["note"])),
        "calibration": {
            "n_bins": calibration.attrs.get("n_bins"),
            "mean_ece": calibration["ece"].mean(),
            "mean_brier": calibration["brier"].mean(),
            "per_class": _by_row(calibration[["ece", "brier", "mean_probability", "prevalence"]]),
        },
        "subgroups": {
            "table": subgroups.to_dict(orient="records"),
            "mean_over": subgroups.attrs.get("mean_over"),
            "images_without_group": subgroups.attrs.get("images_without_group"),
        },
        "localization": located,
    }
    return _plain(document)


def write_metrics(evaluation: RunEvaluation, document: dict[str, Any]) -> Path:
    """Save ``document`` into the run folder (atomically) as ``metrics_name(split, tta_hflip)``."""
    path = evaluation.run_dir / metrics_name(evaluation.split, evaluation.tta_hflip)
    run_folder.write_json(path, document)
    return path

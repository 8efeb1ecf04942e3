"""Glue for notebook 04: a run folder against TorchXRayVision models, from weights to ``comparison.json``.

The statistics live in ``cxrutils.comparison``, the model adapter in
``cxrutils.txv`` and the figures in ``cxrutils.plots``. This module opens the run
folder, loads whichever weights are there (and says exactly which file is missing
otherwise), scores our cached images with each model, and writes what the
notebook shows into the run folder as ``comparison.json``.

A comparison is skipped, never failed, when no weights file is present: the
machine is offline by design, so missing weights are the normal case, and the
report then says which file to fetch, from where, and where to put it.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, Markdown, display
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from cxrutils import run_folder
from cxrutils.cache import ImageCache
from cxrutils.comparison import (
    MEAN_ROW,
    OURS,
    TXV,
    AurocComparison,
    PairedPredictions,
    classification_comparison,
    compare_auroc,
    comparison_caveats,
    pair_predictions,
    side_by_side,
    subgroup_comparison,
)
from cxrutils.dataset import NIHDataset
from cxrutils.labels import FINDINGS
from cxrutils.paths import resolve
from cxrutils.predict import predict_split
from cxrutils.profiling import stage
from cxrutils.thresholds import METHODS, ThresholdMethod
from cxrutils.train import (
    Distributed,
    TrainConfig,
    image_cache_dir,
    load_training_dataset,
    open_image_cache,
    read_run_config,
    select_device,
)
from cxrutils.txv import (
    RANDOM_INIT_LABEL,
    TxvModel,
    TxvWeightsNotFoundError,
    load_txv_model,
    predict_txv,
    txv_predictions_frame,
    txv_spec,
    weights_path,
)

COMPARISON_NAME = "comparison.json"
NO_WEIGHTS_REASON = "no weights"
SUBGROUPS: tuple[str, ...] = ("sex", "view")

_BOX = "padding:.8em 1em;border-radius:6px;margin:.5em 0;"
_AMBER = _BOX + "background:#fff4e5;color:#5f3b00;border-left:6px solid #e69500;"
_RED = _BOX + "background:#b00020;color:white;"


# --------------------------------------------------------------------------- the run


@dataclass
class RunContext:
    """What the comparison reads from one run folder: its settings, its dataset and its image cache."""

    run_dir: Path
    config: TrainConfig
    dataset: NIHDataset
    cache_dir: Path
    _cache: ImageCache | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def image_cache(self) -> ImageCache:
        """The cache the run trained from (built again only if it was deleted)."""
        if self._cache is None:
            self._cache = open_image_cache(self.dataset, self.config)
        return self._cache


def open_run(runs_dir: str | os.PathLike[str], run_name: str) -> RunContext:
    """The run folder ``<runs_dir>/<run_name>``, its training settings and the dataset it was trained on."""
    run_dir = resolve(runs_dir) / run_name
    if not (run_dir / run_folder.CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {run_folder.CONFIG_NAME}: it is not a trained run. Train it first "
            f"(notebook 02, or python -m cxrutils.train --config ...), or set runs_dir/run_name to an existing run."
        )
    config = read_run_config(run_dir)
    return RunContext(run_dir=run_dir, config=config, dataset=load_training_dataset(config),
                      cache_dir=image_cache_dir(config))


def our_predictions(run_dir: Path, split: str, dataset: NIHDataset | None = None) -> tuple[pd.DataFrame, str]:
    """Our predictions on ``split`` and where they came from.

    ``predictions_<split>.csv`` is read when it is newer than ``checkpoint_best.pt``;
    otherwise (absent, or written before the best checkpoint changed) the split is
    scored again with ``predict_split``, which rewrites the file.
    """
    path = run_dir / run_folder.predictions_name(split)
    checkpoint = run_dir / run_folder.BEST_CHECKPOINT
    if path.is_file() and (not checkpoint.is_file() or path.stat().st_mtime >= checkpoint.stat().st_mtime):
        return run_folder.read_predictions(run_dir, split), f"read from {path.name}"
    reason = "older than checkpoint_best.pt" if path.is_file() else "not in the run folder"
    predict_split(run_dir, split, dataset=dataset)
    # Read back what was written, so this run and later ones (which read the file) score the same numbers.
    return run_folder.read_predictions(run_dir, split), f"{path.name} {reason}: scored now with checkpoint_best.pt"


def validation_predictions(run_dir: Path) -> pd.DataFrame:
    """``predictions_val.csv``, written by training at its best epoch."""
    path = run_dir / run_folder.predictions_name("val")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: training writes it at the best epoch, and the decision "
                                "thresholds are chosen on it. Finish (or resume) the training run first.")
    return run_folder.read_predictions(run_dir, "val")


# --------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class MissingWeights:
    """A requested model whose release file is not in the weights folder."""

    model: str
    weights_file: str
    folder: Path
    url: str


@dataclass
class LoadedModels:
    """The requested TorchXRayVision models: those that loaded and those whose weights are missing."""

    requested: list[str]
    models: list[TxvModel]
    missing: list[MissingWeights]
    random_init: bool

    @property
    def skipped(self) -> bool:
        """True when nothing can be compared."""
        return not self.models


def load_models(
    names: Sequence[str], weights_dir: str | os.PathLike[str] | None, *, random_init: bool, seed: int = 0
) -> LoadedModels:
    """Load each named model; a missing weights file is recorded, not raised.

    An unknown name or a file that is there but does not load still raises: those
    are mistakes to fix, not the offline case.
    """
    if isinstance(names, str) or not names:
        raise ValueError(f"txv_models must be a non-empty list of model names, got {names!r}")
    models, missing = [], []
    for name in names:
        try:
            models.append(load_txv_model(name, weights_dir, random_init=random_init, seed=seed))
        except TxvWeightsNotFoundError:
            spec, path = txv_spec(name), weights_path(name, weights_dir)
            missing.append(MissingWeights(name, spec.weights_file, path.parent, spec.weights_url))
    return LoadedModels(requested=list(names), models=models, missing=missing, random_init=random_init)


def models_table(loaded: LoadedModels) -> pd.DataFrame:
    """One row per requested model: whether it loaded, its file, what it was trained on."""
    found = {model.name: model for model in loaded.models}
    rows = []
    for name in loaded.requested:
        spec = txv_spec(name)
        model = found.get(name)
        if model is None:
            status = "weights missing: skipped"
        else:
            status = RANDOM_INIT_LABEL if model.random_init else f"loaded from {model.weights_path}"
        rows.append({"model": name, "status": status, "weights file": spec.weights_file,
                     "trained on": spec.trained_on, "has seen NIH images": spec.includes_nih_images,
                     "input px": spec.resolution, "NIH findings scored": len(spec.finding_outputs)})
    return pd.DataFrame(rows).set_index("model")


def enable_instructions(missing: Sequence[MissingWeights]) -> list[str]:
    """How to make the skipped comparisons run, step by step."""
    folders = sorted({str(m.folder) for m in missing})
    return [
        "On a machine with internet, download each file from its URL in the table (nothing is downloaded here).",
        f"Copy it, under exactly that file name, into {' or '.join(folders)} "
        "(or into any folder and pass --set weights_dir=/that/folder).",
        "Run this notebook again: python -m cxrutils.reports --profile <profile> --only 04.",
        "The release files are pickled PyTorch modules that torchxrayvision loads with weights_only=False, which "
        "can run code stored in the file: use only files you downloaded yourself from these URLs.",
    ]


def skipped_section(loaded: LoadedModels) -> HTML:
    """The "Comparison skipped" notice with the missing files, their folders and URLs; empty when none is missing."""
    if not loaded.missing:
        return HTML("")
    rows = "".join(
        f"<tr><td>{html.escape(m.model)}</td><td><code>{html.escape(m.weights_file)}</code></td>"
        f"<td><code>{html.escape(str(m.folder))}</code></td>"
        f"<td><a href='{html.escape(m.url)}'>{html.escape(m.url)}</a></td></tr>"
        for m in loaded.missing
    )
    steps = "".join(f"<li>{html.escape(step)}</li>" for step in enable_instructions(loaded.missing))
    if loaded.skipped:
        title = "Comparison skipped: no TorchXRayVision weights"
        lead = "None of the requested models' weights files is present, so nothing below is computed."
    else:
        title = f"{len(loaded.missing)} model(s) skipped: no weights"
        lead = "These models are left out; the others are compared below."
    return HTML(
        f"<div style='{_AMBER}'><h3 style='margin-top:0'>{html.escape(title)}</h3><p>{html.escape(lead)}</p>"
        "<table><thead><tr><th>model</th><th>weights file</th><th>expected in folder</th><th>download URL</th>"
        f"</tr></thead><tbody>{rows}</tbody></table><p><b>To enable the comparison:</b></p><ol>{steps}</ol>"
        "<p>The test-only switch <code>use_random_txv_weights_for_testing=True</code> runs the pipeline on "
        "random weights; its numbers say nothing about TorchXRayVision.</p></div>"
    )


def cap_note(inputs: ComparisonInputs | None) -> HTML:
    """Says that (and how) the compared films were capped; empty when every film is compared."""
    if inputs is None or not inputs.capped:
        return HTML("")
    parts = [f"{len(frame):,} of {inputs.full_sizes[split][0]:,} {split} films"
             for split, frame in ((inputs.split, inputs.test), ("val", inputs.validation))]
    return HTML(
        f"<div style='{_AMBER}'><b>Capped comparison.</b> txv_max_images = {inputs.max_images:,}: both models are "
        f"compared on {' and '.join(parts)}, whole patients drawn at random (seeded). TorchXRayVision's 224 px pass "
        "over every film is GPU work; this CPU run compares a sample, so its intervals are wider than a full "
        "comparison's. Set txv_max_images: null to compare every film.</div>"
    )


def caveats_banner(names: Sequence[str], random_init: bool) -> HTML:
    """What a reader must know first: the leakage of NIH-trained models into the official test set, and more.

    Shown whether or not the weights are present. With random weights, a red
    banner says so before anything else.
    """
    caveats = list(dict.fromkeys(c for name in names for c in comparison_caveats(name, random_init)))
    parts = []
    if random_init:
        parts.append(f"<div style='{_RED}'><b>{html.escape(RANDOM_INIT_LABEL)}.</b> Every TorchXRayVision "
                     "number in this report comes from random weights (use_random_txv_weights_for_testing=True), "
                     "for testing the pipeline only.</div>")
        caveats = [c for c in caveats if not c.startswith(RANDOM_INIT_LABEL)]
    items = "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
    parts.append(f"<div style='{_AMBER}'><b>Read this comparison with these caveats:</b><ul>{items}</ul></div>")
    return HTML("".join(parts))


# --------------------------------------------------------------------------- predictions and comparison


@dataclass
class ComparisonInputs:
    """Our predictions on the compared split and on validation, and the images both models read."""

    split: str
    test: pd.DataFrame
    validation: pd.DataFrame
    source: dict[str, str]  # split -> where our predictions came from
    cache: ImageCache
    full_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (images, patients) before a cap
    max_images: int | None = None

    @property
    def capped(self) -> bool:
        return any(self.full_sizes[split][0] > len(frame)
                   for split, frame in ((self.split, self.test), ("val", self.validation)))


def prepare_inputs(
    run: RunContext, split: str, loaded: LoadedModels, max_images: int | None = None, seed: int = 0
) -> ComparisonInputs | None:
    """Our predictions and the image cache; None (nothing read, nothing predicted) when no model loaded.

    ``max_images`` caps the films each split is compared on (a seeded draw of whole
    patients): TorchXRayVision's 224 px pass over 25k films is GPU work, and a CPU
    rehearsal compares a labelled sample instead. None compares every film.
    """
    if split == "val":
        raise ValueError("split='val' would score the models on the images their thresholds are chosen on; "
                         "compare on 'test' (or 'train')")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1 (or None for every film), got {max_images}")
    if loaded.skipped:
        return None
    test, source = our_predictions(run.run_dir, split, run.dataset)
    validation = validation_predictions(run.run_dir)
    full_sizes = {name: (len(frame), int(frame["patient_id"].nunique()))
                  for name, frame in ((split, test), ("val", validation))}
    if max_images is not None:
        test, validation = (_patient_sample(frame, max_images, seed) for frame in (test, validation))
    return ComparisonInputs(split=split, test=test, validation=validation,
                            source={split: source, "val": "read from predictions_val.csv (written by training)"},
                            cache=run.image_cache(), full_sizes=full_sizes, max_images=max_images)


def _patient_sample(predictions: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most ``max_images`` rows, whole patients drawn at random (seeded), in the table's own order."""
    if len(predictions) <= max_images:
        return predictions
    films = predictions.groupby("patient_id", sort=True).size()
    order = films.index[np.random.default_rng(seed).permutation(films.size)]
    kept = order[np.cumsum(films.reindex(order).to_numpy()) <= max_images]
    return predictions[predictions["patient_id"].isin(kept)].reset_index(drop=True)


def inputs_table(inputs: ComparisonInputs, loaded: LoadedModels) -> pd.DataFrame:
    """Images and patients per split, where our scores came from, and the resize each TXV model needs."""
    rows = {}
    for split, frame in ((inputs.split, inputs.test), ("val", inputs.validation)):
        images, patients = inputs.full_sizes.get(split, (len(frame), frame["patient_id"].nunique()))
        rows[split] = {"images": len(frame), "patients": frame["patient_id"].nunique(),
                       "of images": images, "of patients": patients, "our predictions": inputs.source[split]}
    table = pd.DataFrame(rows).T
    resize = {m.name: (f"{inputs.cache.size} px cache -> {m.resolution} px"
                       + (" (upsampled: less detail than the model was trained with)"
                          if inputs.cache.size < m.resolution else ""))
              for m in loaded.models}
    for name, text in resize.items():
        table[f"{name} input"] = text
    return table.rename_axis("split")


@dataclass
class ModelComparison:
    """Everything the notebook shows for one TorchXRayVision model."""

    model: TxvModel
    test: PairedPredictions
    validation: PairedPredictions
    auroc: AurocComparison
    classification: pd.DataFrame
    subgroups: pd.DataFrame
    split: str
    threshold_method: str

    @property
    def names(self) -> dict[str, str]:
        return self.test.names

    @property
    def random_init(self) -> bool:
        return self.model.random_init


def _txv_frame(model: TxvModel, inputs: ComparisonInputs, ours: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """TXV's predictions on exactly our images; labels and patients from the metadata, so pairing checks ours."""
    images = ours["image"].astype(str).tolist()
    rows = metadata.drop_duplicates("image").set_index("image").loc[images]
    probabilities = predict_txv(model, inputs.cache, names=images)
    return txv_predictions_frame(model, probabilities, images, rows["patient_id"].tolist(), rows[list(FINDINGS)])


def compare_models(
    run: RunContext,
    inputs: ComparisonInputs | None,
    models: Sequence[TxvModel],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold_method: str = "youden",
    device: str = "auto",
) -> list[ModelComparison]:
    """Score the same images with each model and compare it with ours; [] when there is nothing to compare.

    The TorchXRayVision models run on ``device`` ("auto": CUDA, then MPS, then the CPU).
    """
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    if inputs is None or not models:
        return []
    torch_device = select_device(device, Distributed())
    metadata = run.dataset.metadata
    ours_name = f"DenseNet121 (run {run.name})"
    results = []
    for model in models:
        model.to(torch_device)
        paired = {}
        with stage("TXV predict", images=len(inputs.test) + len(inputs.validation)):
            for key, ours in (("test", inputs.test), ("val", inputs.validation)):
                paired[key] = pair_predictions(ours, _txv_frame(model, inputs, ours, metadata),
                                               txv_name=model.name, random_init=model.random_init,
                                               ours_name=ours_name)
        test = paired["test"]
        method: ThresholdMethod = threshold_method  # type: ignore[assignment]
        with stage("comparison statistics", images=len(test), resamples=n_bootstrap):
            auroc = compare_auroc(test, n_resamples=n_bootstrap, seed=seed)
            classification = classification_comparison(test, paired["val"], method=method,
                                                       txv_op_thresholds=model.op_thresholds)
            subgroups = subgroup_comparison(test, metadata, by=SUBGROUPS, n_resamples=n_bootstrap, seed=seed)
        results.append(ModelComparison(
            model=model,
            test=test,
            validation=paired["val"],
            auroc=auroc,
            classification=classification,
            subgroups=subgroups,
            split=inputs.split,
            threshold_method=threshold_method,
        ))
    return results


def show_figure(figure: Figure) -> None:
    """Display a figure where the call is (inside a loop, not at the end of the cell) and close it."""
    display(figure)
    plt.close(figure)


def each_model(comparisons: Sequence[ModelComparison]) -> Iterator[ModelComparison]:
    """Yield each comparison under a heading naming the model; say so once when there is none."""
    if not comparisons:
        display(Markdown("*Comparison skipped: no TorchXRayVision model was loaded (see section 1).*"))
    for result in comparisons:
        display(Markdown(f"### {result.names[TXV]}"))
        yield result


# --------------------------------------------------------------------------- tables for display


def _interval_text(value: Any, low: Any, high: Any, signed: bool = False) -> str:
    if pd.isna(value):
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(value)
    return text if pd.isna(low) else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def _p_text(value: Any) -> str:
    return "" if pd.isna(value) else f"{value:.2g}"


def auroc_display(result: ModelComparison) -> Styler:
    """Per-finding AUROC of both models with CIs, the difference with its CI and DeLong's p (raw, Holm, BH)."""
    table = result.auroc.table
    level = f"{result.auroc.confidence:.0%} CI"
    shown = pd.DataFrame({
        "positives": table["positives"],
        f"ours AUROC [{level}]": [_interval_text(*r) for r in
                                  table[["auroc_ours", "ours_ci_low", "ours_ci_high"]].itertuples(index=False)],
        f"TXV AUROC [{level}]": [_interval_text(*r) for r in
                                 table[["auroc_txv", "txv_ci_low", "txv_ci_high"]].itertuples(index=False)],
        f"difference [{level}]": [_interval_text(*r, signed=True) for r in
                                  table[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "DeLong p": table["p_value"].map(_p_text),
        "p (Holm)": table["p_holm"].map(_p_text),
        "p (BH)": table["p_bh"].map(_p_text),
        "note": table["note"],
    }, index=table.index)
    return shown.style.format(na_rep="").set_caption(_caption(result, f"AUROC on {len(result.test)} {result.split} images, "
                                                    f"{result.auroc.n_resamples} patient-bootstrap resamples"))


def classification_display(result: ModelComparison) -> Styler:
    """Both models side by side at validation-chosen thresholds, and TXV at its own op_threshs."""
    wide = side_by_side(result.classification, metrics=("threshold", "sensitivity", "specificity", "ppv", "f1"))
    thresholds = [c for c in wide.columns if c[2] == "threshold"]
    styled = wide.style.format("{:.2f}", na_rep="–").format("{:.3g}", subset=thresholds, na_rep="–")
    return styled.set_caption(
        _caption(result, f"thresholds: {result.threshold_method} on our validation images "
                         f"({len(result.validation)}), or TorchXRayVision's published op_threshs"))


def subgroup_display(result: ModelComparison) -> Styler:
    """Mean AUROC of both models and their difference within each sex and view."""
    table = result.subgroups
    means = table[table["finding"] == MEAN_ROW]
    shown = pd.DataFrame({
        "subgroup": means["subgroup"], "value": means["value"], "images": means["images"],
        "patients": means["patients"],
        "ours mean AUROC [CI]": [_interval_text(*r) for r in
                                 means[["auroc_ours", "ours_ci_low", "ours_ci_high"]].itertuples(index=False)],
        "TXV mean AUROC [CI]": [_interval_text(*r) for r in
                                means[["auroc_txv", "txv_ci_low", "txv_ci_high"]].itertuples(index=False)],
        "difference [CI]": [_interval_text(*r, signed=True) for r in
                            means[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "note": means["note"],
    }).set_index(["subgroup", "value"])
    return shown.style.set_caption(_caption(result, "mean over the findings scored in every group of a subgroup"))


def subgroup_differences(result: ModelComparison) -> pd.DataFrame:
    """Finding x (subgroup, value): the AUROC difference (ours - TXV), blank where a group has too few positives."""
    rows = result.subgroups[result.subgroups["finding"] != MEAN_ROW]
    wide = rows.set_index(["finding", "subgroup", "value"])["difference"].astype(np.float64).unstack(["subgroup",
                                                                                                       "value"])
    return wide.reindex(index=[f for f in FINDINGS if f in wide.index])


def _caption(result: ModelComparison, detail: str) -> str:
    return f"ours: {result.names[OURS]}; TXV: {result.names[TXV]}. {detail}."


# --------------------------------------------------------------------------- results on disk


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _records(table: pd.DataFrame, index: str | None = None) -> list[dict[str, Any]]:
    """Rows as plain JSON values (NaN and NA become null, so the file is strict JSON)."""
    frame = table.reset_index() if index else table
    return [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def mean_difference_text(result: ModelComparison) -> Markdown:
    """The mean AUROC difference with its paired interval, in words."""
    mean = result.auroc.table.loc[MEAN_ROW]
    label = f"**{RANDOM_INIT_LABEL}.** " if result.random_init else ""
    if pd.isna(mean["difference"]):
        return Markdown(f"{label}No mean difference: no finding has enough positives and negatives here.")
    interval = ("no interval: no resample had every averaged finding" if pd.isna(mean["diff_ci_low"]) else
                f"{result.auroc.confidence:.0%} CI {mean['diff_ci_low']:+.3f} to {mean['diff_ci_high']:+.3f}, "
                f"from {mean['n_resamples']} of {result.auroc.n_resamples} paired patient resamples")
    return Markdown(
        f"{label}**Mean AUROC difference** (ours − TXV) over {len(result.auroc.mean_over)} findings: "
        f"**{mean['difference']:+.3f}** ({interval}); ours {mean['auroc_ours']:.3f}, TXV {mean['auroc_txv']:.3f}."
    )


def mean_difference(result: ModelComparison) -> dict[str, Any]:
    mean = result.auroc.table.loc[MEAN_ROW]
    return {"difference": _json_value(mean["difference"]), "ci_low": _json_value(mean["diff_ci_low"]),
            "ci_high": _json_value(mean["diff_ci_high"]), "auroc_ours": _json_value(mean["auroc_ours"]),
            "auroc_txv": _json_value(mean["auroc_txv"]), "confidence": result.auroc.confidence,
            "findings": list(result.auroc.mean_over)}


def model_record(result: ModelComparison) -> dict[str, Any]:
    """One model's comparison as plain JSON."""
    table = result.auroc.table
    per_class = table.drop(index=MEAN_ROW)
    record = {
        "display_name": result.names[TXV],
        "random_init": result.random_init,
        "label": RANDOM_INIT_LABEL if result.random_init else "",
        "weights_path": None if result.model.weights_path is None else str(result.model.weights_path),
        "trained_on": result.model.spec.trained_on,
        "includes_nih_images": result.model.spec.includes_nih_images,
        "images": len(result.test),
        "patients": int(pd.unique(result.test.patient_ids).size),
        "validation_images": len(result.validation),
        "findings": list(result.test.findings),
        "per_class": _records(per_class, index="finding"),
        "mean_difference": mean_difference(result),
        "p_values": {f: {"delong": _json_value(r["p_value"]), "holm": _json_value(r["p_holm"]),
                         "bh": _json_value(r["p_bh"])} for f, r in per_class.iterrows()},
        "delong_clusters": result.auroc.delong_clusters,
        "classification": _records(result.classification),
        "subgroups": _records(result.subgroups),
        "op_thresholds": {f: _json_value(v) for f, v in result.model.op_thresholds.items()},
        "caveats": list(result.auroc.caveats),
    }
    return record


def headline(loaded: LoadedModels, comparisons: Sequence[ModelComparison]) -> str:
    """One line for the report index."""
    if loaded.skipped:
        files = ", ".join(f"{m.model} ({m.weights_file})" for m in loaded.missing)
        return f"TorchXRayVision comparison skipped: no weights for {files}"
    parts = []
    for result in comparisons:
        mean = mean_difference(result)
        label = f"{RANDOM_INIT_LABEL}: " if result.random_init else ""
        ci = (f" [{result.auroc.confidence:.0%} CI {mean['ci_low']:+.3f}, {mean['ci_high']:+.3f}]"
              if mean["ci_low"] is not None else "")
        value = "n/a" if mean["difference"] is None else f"{mean['difference']:+.3f}"
        parts.append(f"{label}mean AUROC diff ours - {result.model.name} {value}{ci} "
                     f"over {len(mean['findings'])} findings")
    if loaded.missing:
        parts.append(f"skipped (no weights): {', '.join(m.model for m in loaded.missing)}")
    return "; ".join(parts)


def write_comparison_json(
    run: RunContext,
    loaded: LoadedModels,
    comparisons: Sequence[ModelComparison],
    settings: dict[str, Any],
) -> Path:
    """``comparison.json`` in the run folder: per model its tables, or why it was skipped and how to enable it."""
    caveats = list(dict.fromkeys(c for name in loaded.requested for c in comparison_caveats(name, loaded.random_init)))
    payload: dict[str, Any] = {
        "status": "skipped" if loaded.skipped else "ok",
        "status_reason": NO_WEIGHTS_REASON if loaded.skipped else "",
        "headline": headline(loaded, comparisons),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": str(run.run_dir),
        "data_source": run.dataset.description,
        "synthetic": run.dataset.synthetic,
        "random_init": loaded.random_init,
        "random_init_label": RANDOM_INIT_LABEL if loaded.random_init else "",
        "settings": settings,
        "requested_models": list(loaded.requested),
        "missing_weights": [{"model": m.model, "weights_file": m.weights_file, "folder": str(m.folder),
                             "url": m.url} for m in loaded.missing],
        "instructions": enable_instructions(loaded.missing) if loaded.missing else [],
        "caveats": caveats,
        "models": {result.model.name: model_record(result) for result in comparisons},
    }
    path = run.run_dir / COMPARISON_NAME
    run_folder.write_json(path, payload)
    return path


def summary_facts(
    run: RunContext, loaded: LoadedModels, comparisons: Sequence[ModelComparison], comparison_json: Path
) -> dict[str, Any]:
    """The keyword arguments for ``cxrutils.reports.write_summary``."""
    return {
        "status": "skipped" if loaded.skipped else "ok",
        "status_reason": NO_WEIGHTS_REASON if loaded.skipped else "",
        "headline": headline(loaded, comparisons),
        "data_source": run.dataset.description,
        "synthetic": run.dataset.synthetic,
        "run_dir": str(run.run_dir),
        "comparison_json": str(comparison_json),
        "random_init": loaded.random_init,
        "missing_weights": [m.weights_file for m in loaded.missing],
        "mean_auroc_difference": {r.model.name: mean_difference(r) for r in comparisons},
    }

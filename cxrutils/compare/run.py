"""A run against TorchXRayVision models, from weights to ``comparison.json``: compute, never show.

``compare_run(run_dir, models)`` opens the run folder (``run_folder.open_run``), loads
whichever weights are there (a missing file is recorded with where to put it: offline
is the normal case here), scores our cached films with each model and compares it with
ours (``cxrutils.stats.paired``). It returns a ``ComparisonResult``; ``write_comparison``
saves it in the run folder as ``comparison.json`` (``run_folder.write_comparison``).
Notebook 04 and ``cxrutils compare`` both call it. Display lives in
``cxrutils.show.comparison_view``.

The operating points follow the evaluation's rules (``cxrutils.stats.operating``: the
run's threshold method, ``target_sensitivity``, ``target_specificity``, chosen on our
validation films for both models) and its subgroup rule (``subgroup_min_positive_patients``):
the defaults are the evaluation's, so notebooks 03 and 04 read one setting alike.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils import files
from cxrutils.compare.comparison import (
    OperatingComparison,
    compare_operating_points,
    comparison_caveats,
    operating_rules,
    pair_with_txv,
    subgroup_difference_grid,
)
from cxrutils.compare.provenance import DEFAULT_MODELS, headline_model, provenance
from cxrutils.compare.txv import (
    RANDOM_INIT_LABEL,
    TxvModel,
    TxvWeightsNotFoundError,
    load_txv_model,
    predict_txv,
    radiologist_only_outputs,
    txv_predictions_frame,
    txv_spec,
    weights_path,
)
from cxrutils.data.cache import ImageCache
from cxrutils.data.radiologist_labels import read_radiologist_labels
from cxrutils.engine import run_folder
from cxrutils.engine.model import BACKBONES
from cxrutils.engine.predict import predict_split
from cxrutils.engine.runtime import select_device
from cxrutils.evaluate.evaluation import SUBGROUP_MIN_POSITIVE_PATIENTS, TARGET_SENSITIVITY, TARGET_SPECIFICITY
from cxrutils.evaluate.radiologist import RadiologistResult, score_against_radiologists
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.profiling import stage
from cxrutils.stats.cohort import ClusterFacts, cluster_facts
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.stats.paired import (
    TXV,
    AurocComparison,
    PairedPredictions,
    classification_comparison,
    compare_auroc,
    subgroup_comparison,
)
from cxrutils.stats.thresholds import METHODS, ThresholdMethod

NO_WEIGHTS_REASON = "no weights"
SUBGROUPS: tuple[str, ...] = ("sex", "view")


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
                     "trained on": spec.trained_on, "official test films": provenance(name).verdict,
                     "input px": spec.resolution, "NIH findings scored": len(spec.finding_outputs)})
    return pd.DataFrame(rows).set_index("model")


def enable_instructions(missing: Sequence[MissingWeights]) -> list[str]:
    """How to make the skipped comparisons run, step by step."""
    folders = sorted({str(m.folder) for m in missing})
    return [
        "On a machine with internet, download each file from its URL in the table (nothing is downloaded here).",
        f"Copy it, under exactly that file name, into {' or '.join(folders)} "
        "(or into any folder and pass --set weights_dir=/that/folder).",
        "Run this notebook again: cxrutils reports --profile <profile> --only 04.",
        "The release files are pickled PyTorch modules that torchxrayvision loads with weights_only=False, which "
        "can run code stored in the file: use only files you downloaded yourself from these URLs.",
    ]


# --------------------------------------------------------------------------- the films both models score


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

    def table(self, models: Sequence[TxvModel]) -> pd.DataFrame:
        """Images and patients per split, where our scores came from, and the resize each model needs."""
        rows = {}
        for split, frame in ((self.split, self.test), ("val", self.validation)):
            images, patients = self.full_sizes.get(split, (len(frame), frame["patient_id"].nunique()))
            rows[split] = {"images": len(frame), "patients": frame["patient_id"].nunique(),
                           "of images": images, "of patients": patients, "our predictions": self.source[split]}
        table = pd.DataFrame(rows).T
        for model in models:
            table[f"{model.name} input"] = (f"{self.cache.size} px cache -> {model.resolution} px"
                                            + (" (upsampled: less detail than the model was trained with)"
                                               if self.cache.size < model.resolution else ""))
        return table.rename_axis("split")


def our_predictions(run: run_folder.Run, split: str) -> tuple[pd.DataFrame, str]:
    """Our predictions on ``split`` and where they came from.

    ``predictions_<split>.csv`` is read when it is newer than ``checkpoint_best.pt``;
    otherwise (absent, or written before the best checkpoint changed) the split is
    scored again with ``predict_split``, which rewrites the file.
    """
    path = run_folder.predictions_path(run.run_dir, split)
    checkpoint = run.run_dir / run_folder.BEST_CHECKPOINT
    if path.is_file() and (not checkpoint.is_file() or path.stat().st_mtime >= checkpoint.stat().st_mtime):
        return run.predictions(split), f"read from {path.name}"
    reason = "older than checkpoint_best.pt" if path.is_file() else "not in the run folder"
    predict_split(run, split)
    # Read back what was written, so this run and later ones (which read the file) score the same numbers.
    return run.predictions(split), f"{path.name} {reason}: scored now with checkpoint_best.pt"


def validation_predictions(run: run_folder.Run) -> pd.DataFrame:
    """``predictions_val.csv``, written by training at its best epoch."""
    path = run_folder.predictions_path(run.run_dir, "val")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: training writes it at the best epoch, and the decision "
                                "thresholds are chosen on it. Finish (or resume) the training run first.")
    return run.predictions("val")


def prepare_inputs(
    run: run_folder.Run, split: str, loaded: LoadedModels, max_images: int | None = None, seed: int = 0
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
    test, source = our_predictions(run, split)
    validation = validation_predictions(run)
    full_sizes = {name: (len(frame), int(frame["patient_id"].nunique()))
                  for name, frame in ((split, test), ("val", validation))}
    if max_images is not None:
        test, validation = (patient_sample(frame, max_images, seed) for frame in (test, validation))
    return ComparisonInputs(split=split, test=test, validation=validation,
                            source={split: source, "val": "read from predictions_val.csv (written by training)"},
                            cache=run.image_cache(), full_sizes=full_sizes, max_images=max_images)


def patient_sample(predictions: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most ``max_images`` rows, whole patients drawn at random (seeded), in the table's own order."""
    if len(predictions) <= max_images:
        return predictions
    films = predictions.groupby("patient_id", sort=True).size()
    order = films.index[np.random.default_rng(seed).permutation(films.size)]
    kept = order[np.cumsum(films.reindex(order).to_numpy()) <= max_images]
    return predictions[predictions["patient_id"].isin(kept)].reset_index(drop=True)


# --------------------------------------------------------------------------- the comparison


@dataclass
class ModelComparison:
    """Everything the report shows for one TorchXRayVision model."""

    model: TxvModel
    test: PairedPredictions
    validation: PairedPredictions
    auroc: AurocComparison
    classification: pd.DataFrame
    subgroups: pd.DataFrame
    split: str
    threshold_method: str
    radiologist: RadiologistResult | None = None  # this model against radiologists' labels, on the same films
    subgroup_min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS  # the rule of the subgroup table
    # both models at the evaluation's operating rules, thresholds chosen on our validation films, with intervals
    operating: OperatingComparison | None = None
    synthetic: bool = False  # scored on phantom films

    @property
    def names(self) -> dict[str, str]:
        return self.test.names

    @property
    def random_init(self) -> bool:
        return self.model.random_init

    def mean_difference(self) -> dict[str, Any]:
        mean = self.auroc.table.loc[MEAN_ROW]
        return files.plain({"difference": mean["difference"], "ci_low": mean["diff_ci_low"],
                            "ci_high": mean["diff_ci_high"], "auroc_ours": mean["auroc_ours"],
                            "auroc_txv": mean["auroc_txv"], "confidence": self.auroc.confidence,
                            "findings": list(self.auroc.mean_over)})

    def subgroup_differences(self) -> pd.DataFrame:
        """Per (subgroup, value, finding): positives (films, patients), the AUROC difference (ours - TXV) with its
        interval, DeLong's p and Holm across the whole grid (``comparison.subgroup_difference_grid``); an empty cell
        says why."""
        return subgroup_difference_grid(self.subgroups, self.subgroup_min_positive_patients)

    def to_document(self) -> dict[str, Any]:
        """One model's comparison as plain JSON."""
        per_class = self.auroc.table.drop(index=MEAN_ROW)
        return files.plain({
            "display_name": self.names[TXV],
            "random_init": self.random_init,
            "label": RANDOM_INIT_LABEL if self.random_init else "",
            "weights_path": self.model.weights_path,
            "trained_on": self.model.spec.trained_on,
            "includes_nih_images": self.model.spec.includes_nih_images,
            "provenance": {"verdict": provenance(self.model.name).verdict, "why": provenance(self.model.name).why,
                           "sources": list(provenance(self.model.name).sources)},
            "images": len(self.test),
            "patients": int(pd.unique(self.test.patient_ids).size),
            "validation_images": len(self.validation),
            "findings": list(self.test.findings),
            "per_class": per_class.reset_index(),
            "mean_difference": self.mean_difference(),
            "p_values": {f: {"delong": r["p_value"], "holm": r["p_holm"], "bh": r["p_bh"]}
                         for f, r in per_class.iterrows()},
            "delong_clusters": self.auroc.delong_clusters,
            "classification": self.classification,
            "operating_points": ({"available": False, "note": "not computed"} if self.operating is None
                                 else self.operating.to_document()),
            # Holm and BH within one group are not the family the report states: the grid's Holm is below.
            "subgroups": self.subgroups.drop(columns=["p_holm", "p_bh"], errors="ignore"),
            "subgroup_differences": self._subgroup_differences_document(),
            "op_thresholds": self.model.op_thresholds,
            "caveats": list(self.auroc.caveats),
            "radiologist_labels": None if self.radiologist is None else self.radiologist.to_document(),
        })

    def _subgroup_differences_document(self) -> dict[str, Any]:
        grid = self.subgroup_differences()
        return {**grid.attrs, "variables": list(dict.fromkeys(grid["subgroup"])),
                "confidence": self.auroc.confidence, "table": grid}


def _txv_frame(model: TxvModel, cache: ImageCache, ours: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """TXV's predictions on exactly our images; labels and patients from the metadata, so pairing checks ours.

    Outputs for radiologist-only findings (Fracture) come as extra probability columns,
    for scoring against the radiologists' labels; pairing with ours uses the 14 findings only.
    """
    images = ours["image"].astype(str).tolist()
    rows = metadata.drop_duplicates("image").set_index("image").loc[images]
    extra = radiologist_only_outputs(model.module.pathologies)
    findings_outputs = list(model.finding_outputs.values())
    probabilities = predict_txv(model, cache, names=images, outputs=[*findings_outputs, *extra.values()])
    frame = txv_predictions_frame(model, probabilities[:, :len(findings_outputs)], images,
                                  rows["patient_id"].tolist(), rows[list(FINDINGS)])
    for j, output in enumerate(extra):
        frame[probability_column(output)] = probabilities[:, len(findings_outputs) + j]
    return frame


def compare_models(
    run: run_folder.Run,
    inputs: ComparisonInputs | None,
    models: Sequence[TxvModel],
    *,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    threshold_method: str = "youden",
    device: str = "auto",
    subgroup_min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
    target_sensitivity: float = TARGET_SENSITIVITY,
    target_specificity: float = TARGET_SPECIFICITY,
) -> list[ModelComparison]:
    """Score the same images with each model and compare it with ours; [] when there is nothing to compare.

    The TorchXRayVision models run on ``device`` ("auto": CUDA, then MPS, then the CPU). A
    finding is compared within a sex or view with ``subgroup_min_positive_patients``
    patients with a positive film in that group. Both models' operating points follow
    the run's ``threshold_method`` and the fixed ``target_sensitivity`` and
    ``target_specificity``, chosen on our validation films.
    """
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    if inputs is None or not models:
        return []
    torch_device = select_device(device)
    metadata = run.dataset.metadata
    ours_name = f"{BACKBONES[run.config.arch].title} (run {run.name})"
    rules = operating_rules(threshold_method, target_sensitivity, target_specificity)
    radiologist_labels = read_radiologist_labels()
    results = []
    for model in models:
        model.to(torch_device)
        paired, frames = {}, {}
        with stage("TXV predict", images=len(inputs.test) + len(inputs.validation)):
            for key, ours in (("test", inputs.test), ("val", inputs.validation)):
                frames[key] = _txv_frame(model, inputs.cache, ours, metadata)
                paired[key] = pair_with_txv(ours, frames[key], txv_name=model.name, random_init=model.random_init,
                                            ours_name=ours_name)
        test = paired["test"]
        method: ThresholdMethod = threshold_method  # type: ignore[assignment]
        with stage("comparison statistics", images=len(test), resamples=n_bootstrap):
            auroc = compare_auroc(test, n_resamples=n_bootstrap, seed=bootstrap_seed)
            classification = classification_comparison(test, paired["val"], method=method,
                                                       txv_op_thresholds=model.op_thresholds)
            operating_points = compare_operating_points(test, paired["val"], rules, n_resamples=n_bootstrap,
                                                        seed=bootstrap_seed, txv_name=model.name)
            subgroups = subgroup_comparison(test, metadata, by=SUBGROUPS, n_resamples=n_bootstrap,
                                            seed=bootstrap_seed,
                                            min_positive_patients=subgroup_min_positive_patients)
            radiologist = score_against_radiologists(frames["test"], radiologist_labels, n_bootstrap, bootstrap_seed)
        results.append(ModelComparison(model=model, test=test, validation=paired["val"], auroc=auroc,
                                       classification=classification, subgroups=subgroups, split=inputs.split,
                                       threshold_method=threshold_method, radiologist=radiologist,
                                       subgroup_min_positive_patients=subgroup_min_positive_patients,
                                       operating=operating_points, synthetic=run.dataset.synthetic))
    return results


@dataclass
class ComparisonResult:
    """A run compared with every requested TorchXRayVision model whose weights are there."""

    run: run_folder.Run
    loaded: LoadedModels
    inputs: ComparisonInputs | None
    comparisons: list[ModelComparison]
    settings: dict[str, Any]
    radiologist_ours: RadiologistResult | None = None  # our model against radiologists' labels, on the same films

    @property
    def skipped(self) -> bool:
        return self.loaded.skipped

    @property
    def caveats(self) -> list[str]:
        return list(dict.fromkeys(c for name in self.loaded.requested
                                  for c in comparison_caveats(name, self.loaded.random_init)))

    @property
    def clusters(self) -> ClusterFacts | None:
        """Films per patient and positive patients per finding on the films both models score; None when skipped."""
        return None if self.inputs is None else cluster_facts(self.inputs.test)

    @property
    def lead(self) -> ModelComparison | None:
        """The comparison to lead with: against a model that never saw NIH films, when one was compared."""
        clean = headline_model([c.model.name for c in self.comparisons])
        return next((c for c in self.comparisons if c.model.name == clean), None)

    @property
    def headline(self) -> str:
        """One line for the report index, the clean comparison first."""
        if self.skipped:
            names = ", ".join(f"{m.model} ({m.weights_file})" for m in self.loaded.missing)
            return f"TorchXRayVision comparison skipped: no weights for {names}"
        parts = []
        lead = self.lead
        for result in sorted(self.comparisons, key=lambda c: c is not lead):
            mean = result.mean_difference()
            label = f"{RANDOM_INIT_LABEL}: " if result.random_init else ""
            ci = (f" [{result.auroc.confidence:.0%} CI {mean['ci_low']:+.3f}, {mean['ci_high']:+.3f}]"
                  if mean["ci_low"] is not None else "")
            value = "n/a" if mean["difference"] is None else f"{mean['difference']:+.3f}"
            parts.append(f"{label}mean AUROC diff ours - {result.model.name} "
                         f"({provenance(result.model.name).headline_label}) "
                         f"{value}{ci} over {len(mean['findings'])} findings")
        if self.loaded.missing:
            parts.append(f"skipped (no weights): {', '.join(m.model for m in self.loaded.missing)}")
        return "; ".join(parts)

    def to_document(self) -> dict[str, Any]:
        """``comparison.json``: per model its tables, or why it was skipped and how to enable it."""
        loaded = self.loaded
        return files.plain({
            "status": "skipped" if self.skipped else "ok",
            "status_reason": NO_WEIGHTS_REASON if self.skipped else "",
            "headline": self.headline,
            "created": dt.datetime.now().isoformat(timespec="seconds"),
            "run_dir": self.run.run_dir,
            "data_source": self.run.dataset.description,
            "synthetic": self.run.dataset.synthetic,
            "random_init": loaded.random_init,
            "random_init_label": RANDOM_INIT_LABEL if loaded.random_init else "",
            "settings": self.settings,
            "requested_models": loaded.requested,
            "missing_weights": [{"model": m.model, "weights_file": m.weights_file, "folder": m.folder, "url": m.url}
                                for m in loaded.missing],
            "instructions": enable_instructions(loaded.missing) if loaded.missing else [],
            "caveats": self.caveats,
            "capped": None if self.inputs is None or not self.inputs.capped else {
                "max_images": self.inputs.max_images,
                "compared": {self.inputs.split: len(self.inputs.test), "val": len(self.inputs.validation)},
                "of": {split: sizes[0] for split, sizes in self.inputs.full_sizes.items()},
            },
            "lead_model": None if self.lead is None else self.lead.model.name,
            "clusters": None if self.clusters is None else self.clusters.to_document(),
            "models": {result.model.name: result.to_document() for result in self.comparisons},
            "radiologist_labels_ours": None if self.radiologist_ours is None else self.radiologist_ours.to_document(),
        })

    def summary_facts(self, comparison_json: Path) -> dict[str, Any]:
        """The keyword arguments for ``cxrutils.summary.write_summary``."""
        return {
            "status": "skipped" if self.skipped else "ok",
            "status_reason": NO_WEIGHTS_REASON if self.skipped else "",
            "headline": self.headline,
            "data_source": self.run.dataset.description,
            "synthetic": self.run.dataset.synthetic,
            "run_dir": str(self.run.run_dir),
            "comparison_json": str(comparison_json),
            "random_init": self.loaded.random_init,
            "missing_weights": [m.weights_file for m in self.loaded.missing],
            "mean_auroc_difference": {r.model.name: r.mean_difference() for r in self.comparisons},
        }


def compare_run(
    run: run_folder.Run | str | os.PathLike[str],
    txv_models: Sequence[str] = DEFAULT_MODELS,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    threshold_method: str = "youden",
    random_init: bool = False,
    max_images: int | None = None,
    subgroup_min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
    data_root: str | os.PathLike[str] | None = None,
    target_sensitivity: float = TARGET_SENSITIVITY,
    target_specificity: float = TARGET_SPECIFICITY,
) -> ComparisonResult:
    """Compare a run with each TorchXRayVision model in ``txv_models`` on the same films.

    Models whose weights file is missing from ``weights_dir`` (default
    ``~/.torchxrayvision/models_data``) are skipped and listed; with none loaded, the
    result is ``skipped`` and nothing is scored. ``random_init`` (tests only) builds the
    models with random weights, labelled as such. ``max_images`` caps each split to a
    seeded sample of whole patients (a CPU run). Within a sex or view, a finding is
    compared only with ``subgroup_min_positive_patients`` patients with a positive film.
    ``target_sensitivity`` and ``target_specificity`` set the fixed operating points, beside
    ``threshold_method`` (defaults: the evaluation's, ``cxrutils.evaluate.evaluation``).
    """
    if subgroup_min_positive_patients < 1:
        raise ValueError(f"subgroup_min_positive_patients must be at least 1, got {subgroup_min_positive_patients}")
    for name, target in (("target_sensitivity", target_sensitivity), ("target_specificity", target_specificity)):
        if not 0 < target < 1:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {target}")
    run = run if isinstance(run, run_folder.Run) else run_folder.open_run(run, data_root=data_root)
    loaded = load_models(txv_models, weights_dir, random_init=random_init, seed=bootstrap_seed)
    inputs = prepare_inputs(run, split, loaded, max_images=max_images, seed=bootstrap_seed)
    comparisons = compare_models(run, inputs, loaded.models, n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed,
                                 threshold_method=threshold_method,
                                 subgroup_min_positive_patients=subgroup_min_positive_patients,
                                 target_sensitivity=target_sensitivity, target_specificity=target_specificity)
    radiologist_ours = (None if inputs is None else
                        score_against_radiologists(inputs.test, read_radiologist_labels(), n_bootstrap,
                                                   bootstrap_seed))
    settings = {"split": split, "txv_models": list(txv_models), "weights_dir": weights_dir,
                "n_bootstrap": n_bootstrap, "bootstrap_seed": bootstrap_seed, "threshold_method": threshold_method,
                "use_random_txv_weights_for_testing": random_init, "txv_max_images": max_images,
                "subgroup_min_positive_patients": subgroup_min_positive_patients,
                "target_sensitivity": target_sensitivity, "target_specificity": target_specificity,
                "operating_rules": [rule.name for rule in operating_rules(threshold_method, target_sensitivity,
                                                                          target_specificity)]}
    return ComparisonResult(run=run, loaded=loaded, inputs=inputs, comparisons=comparisons, settings=settings,
                            radiologist_ours=radiologist_ours)


def write_comparison(result: ComparisonResult) -> Path:
    """Save the result into the run folder (atomically) as ``comparison.json``."""
    return run_folder.write_comparison(result.run.run_dir, result.to_document())

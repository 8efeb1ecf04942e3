"""A finished run scored on an external collection's frontal films, with the statistics it has at home.

``evaluate_external(run_dir, films)`` takes a run folder and a collection read by
``cxrutils.data.external.load_external`` and computes, for each of the 14 NIH findings:

- **not available** (the collection does not label it): the label map's reason, and nothing else;
- **mapped**: the films that carry a label for it (an uncertain CheXpert label the policy
  excludes is NaN and left out of that finding only), AUROC with a patient-bootstrap
  interval (``stats.metrics.bootstrap_auroc``), the operating point at the run's
  validation threshold (``thresholds.json``: chosen on NIH validation films, never on
  these), calibration (``stats.calibration``: observed/expected, slope, equal-mass ECE,
  Brier; and the reliability points), subgroups by the collection's own sex, age band and
  view (``stats.metrics.subgroup_auroc``, the minimum positive patients rule), and the
  prevalence **at home** (the run's NIH test films, ``predictions_test.csv``) beside the
  prevalence **away**;
- **home against away**: the run's AUROC on its NIH test films and on the collection, each
  with its own patient bootstrap, and the drop (home - away) with a percentile interval
  from the two bootstrap distributions drawn independently (home and away are different
  patients: draw i of one is paired with draw i of the other only to form a difference);
- **localization** where the collection publishes regions (VinDr-CXR and RSNA boxes, SIIM-ACR
  masks): Grad-CAM against them, ``evaluate.external_localization`` (``localization_max_films``
  caps the films it maps); CheXpert and PadChest say why there is none.

Films are scored the way inference scores a new film: each file decoded by
``cxrutils.data.preparation.prepare_film`` at the run's ``cache_size`` (PNG, 16-bit PNG,
JPEG, DICOM), then the one inference loop ``engine.predict.predict_logits`` at its
``input_size``. (``cxrutils.inference`` does the same for a folder of films, with Grad-CAM;
the evaluation layer sits below it and calls the engine directly.) A film listed but not on
disk is reported in ``missing``; one that does not decode is refused with its reason; neither
stops the evaluation.

``write_external`` saves the result into the run folder as
``external/<collection>/external.json`` with the scored films in
``external/<collection>/predictions.csv``. Film names and paths stay text (``cxrutils.text``).
TorchXRayVision on the same films, and the home-vs-away summary across models, are
``cxrutils.compare.external_validation``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrutils import files
from cxrutils.data.external import ExternalFilms
from cxrutils.data.external.common import sample_whole_patients
from cxrutils.data.film_files import ImageReadError
from cxrutils.data.metadata import age_band
from cxrutils.data.preparation import prepare_film
from cxrutils.engine import run_folder
from cxrutils.engine.loader import make_loader
from cxrutils.engine.predict import predict_logits, probabilities_of
from cxrutils.engine.runtime import select_device
from cxrutils.evaluate.external_localization import DEFAULT_MAX_FILMS as LOCALIZATION_MAX_FILMS
from cxrutils.evaluate.external_localization import ExternalLocalization, localize_external
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.profiling import stage
from cxrutils.stats import calibration, metrics
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.thresholds import METHODS

EXTERNAL_FOLDER = "external"  # runs/<name>/external/<collection>/
RESULT_NAME = "external.json"
PREDICTIONS_NAME = "predictions.csv"
SUBGROUP_MIN_POSITIVE_PATIENTS = 5  # as the evaluation's setting subgroup_min_positive_patients
SUBGROUP_AGE_EDGES: tuple[float, ...] = (18.0, 40.0, 60.0, 80.0)  # as notebook 03's age bands
CALIBRATION_BINS = 10
LISTED_LIMIT = 1000  # missing films listed by name in external.json (a root before its download misses every one)
# RSNA Pneumonia's and SIIM-ACR's films are NIH ChestX-ray14 films with new labels: a run trained on NIH is not
# external there (its training, validation or test films are among them).
NIH_FILM_COLLECTIONS: tuple[str, ...] = ("rsna", "siim")
HOME_SEED_OFFSET, AWAY_SEED_OFFSET = 0, 1  # home and away draws come from different seeds: independent resamples
RUN_MODEL = "run"  # the key of our run among the models of a summary
NOT_EXTERNAL_NIH_FILMS = (
    "not external: this collection's films are NIH ChestX-ray14 films relabelled, and the run trained on NIH films "
    "(some of these were its training, validation or test films)")
EXTERNAL_FOR_NIH_RUN = "external: another hospital's films, patients and labels; the run never saw them"


def external_dir(run_dir: str | os.PathLike[str], collection: str) -> Path:
    """``<run>/external/<collection>/`` (``collection`` is one of ``cxrutils.data.external.COLLECTIONS``)."""
    return Path(run_dir) / EXTERNAL_FOLDER / collection


def run_provenance(collection: str) -> dict[str, Any]:
    """Whether a run trained on NIH ChestX-ray14 is external on ``collection``, and why."""
    external = collection not in NIH_FILM_COLLECTIONS
    return {"external": external, "why": EXTERNAL_FOR_NIH_RUN if external else NOT_EXTERNAL_NIH_FILMS}


# --------------------------------------------------------------------------- scoring films


class _ExternalFilmDataset(Dataset):
    """(uint8 (1, S, S), float32 (1,)): each film as the image cache would store it; flag 0 where it did not decode."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, index: int) -> tuple[np.ndarray, float]:
        try:
            return prepare_film(self.paths[index], self.size), 1.0
        except ImageReadError:
            return np.zeros((self.size, self.size), dtype=np.uint8), 0.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, decoded = self._decode(index)
        return torch.from_numpy(np.array(pixels))[None], torch.tensor([decoded], dtype=torch.float32)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once (``engine.loader.make_loader`` asks for batches)."""
        decoded = [self._decode(index) for index in indices]
        pixels = np.stack([film for film, _ in decoded])[:, None]
        flags = np.array([[flag] for _, flag in decoded], dtype=np.float32)
        return torch.from_numpy(pixels), torch.from_numpy(flags)


def score_film_files(run_dir: str | os.PathLike[str], paths: Sequence[str], *, batch_size: int | None = None,
                     device: str = "auto", num_workers: int = 0,
                     show_progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
    """(n, 14) probabilities of the run's best checkpoint (NaN rows: not decoded) and {position: why not decoded}."""
    run_dir = run_folder.finished_run_dir(run_dir)
    model, config, _ = run_folder.load_run_model(run_dir)
    torch_device = select_device(device)
    model = model.to(torch_device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    probabilities = np.full((len(paths), len(FINDINGS)), np.nan)
    if not paths:
        return probabilities, {}
    loader = make_loader(_ExternalFilmDataset(paths, config.cache_size), batch_size=batch_size or config.batch_size,
                         shuffle=False, seed=config.seed, num_workers=num_workers)
    logits, decoded = predict_logits(model, loader, torch_device, config.input_size, config.amp, config.channels_last,
                                     desc="scoring external films", show_progress=show_progress)
    ok = decoded[:, 0].numpy() == 1
    probabilities[ok] = probabilities_of(logits)[ok]
    refused: dict[int, str] = {}
    for position in np.flatnonzero(~ok):
        try:  # decoded again here only to say why it failed (a worker process cannot hand the reason back)
            prepare_film(paths[position], config.cache_size)
            refused[int(position)] = "did not decode in the loader"
        except ImageReadError as err:
            refused[int(position)] = err.reason
    return probabilities, refused


# --------------------------------------------------------------------------- one finding, one set of films


@dataclass
class AurocDraws:
    """One model's AUROC for one finding on one set of films, its interval, and the bootstrap draws behind it."""

    auroc: float
    ci_low: float
    ci_high: float
    films: int
    patients: int
    positives: int
    negatives: int
    draws: np.ndarray  # (n_resamples,) AUROC per patient resample (NaN: a resample without both classes)
    note: str = ""

    def row(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}auroc": self.auroc, f"{prefix}ci_low": self.ci_low, f"{prefix}ci_high": self.ci_high,
                f"{prefix}films": self.films, f"{prefix}positives": self.positives,
                f"{prefix}negatives": self.negatives}


def auroc_with_draws(labels: Any, scores: Any, patient_ids: Any, finding: str, n_resamples: int,
                     seed: int) -> AurocDraws:
    """``metrics.bootstrap_auroc`` for one finding, and its draws (``bootstrap_resample_aurocs``, the same seed)."""
    y = np.asarray(labels, dtype=np.int8).reshape(-1, 1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    ids = np.asarray(patient_ids).reshape(-1)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    patients = int(pd.unique(ids).size)
    if not metrics.scorable(y, ids)[0]:
        return AurocDraws(np.nan, np.nan, np.nan, len(y), patients, positives, negatives,
                          np.full(n_resamples, np.nan), metrics.NOT_SCORABLE_NOTE)
    table = metrics.bootstrap_auroc(y, s, ids, n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE,
                                    class_names=[finding])
    draws = metrics.bootstrap_resample_aurocs(y, s, ids, n_resamples=n_resamples, seed=seed)[:, 0]
    row = table.loc[finding]
    return AurocDraws(float(row["auroc"]), float(row["ci_low"]), float(row["ci_high"]), len(y), patients, positives,
                      negatives, draws)


def drop_interval(home: AurocDraws, away: AurocDraws, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """home - away, and its percentile interval from the two (independent) bootstrap distributions."""
    if not (np.isfinite(home.auroc) and np.isfinite(away.auroc)):
        return {"drop": np.nan, "drop_ci_low": np.nan, "drop_ci_high": np.nan}
    low, high, _ = percentile_interval(home.draws - away.draws, confidence)
    return {"drop": home.auroc - away.auroc, "drop_ci_low": low, "drop_ci_high": high}


# --------------------------------------------------------------------------- the result


@dataclass
class ExternalEvaluation:
    """A run on one external collection: every table the external report shows, and the draws a comparison reuses."""

    run_dir: Path
    collection: str
    films: ExternalFilms
    threshold_method: str
    thresholds: dict[str, float | None]
    n_bootstrap: int
    bootstrap_seed: int
    subgroup_min_positive_patients: int
    predictions: pd.DataFrame  # the scored films: film, path, patient_id, sex, age_years, view, prob_*, labels (NaN)
    findings: pd.DataFrame  # one row per NIH finding (FINDINGS order): status, map, prevalences, AUROCs, drop
    operating: pd.DataFrame  # mapped findings at the run's validation thresholds
    calibration: pd.DataFrame  # mapped findings: O/E, slope, intercept, ECE, Brier with intervals
    reliability: pd.DataFrame  # equal-mass reliability points, long format
    subgroups: pd.DataFrame  # long format: subgroup, value, finding, auroc, ci, images, patients, positive_patients
    refused: pd.DataFrame  # film, path, reason: present files that did not decode
    missing: pd.DataFrame  # film, path, reason: listed frontal films without a file (or something else there)
    sampled: dict[str, Any]  # how the films scored were chosen (max_films, patients, films)
    home_note: str | None  # why there is no home side (the run was not evaluated), else None
    synthetic: bool  # the films are phantoms (the root's manifest) or the run trained on phantoms
    home_draws: dict[str, AurocDraws] = field(default_factory=dict)
    away_draws: dict[str, AurocDraws] = field(default_factory=dict)
    localization: ExternalLocalization | None = None  # Grad-CAM against the collection's boxes or masks

    @property
    def mapped(self) -> tuple[str, ...]:
        return self.films.label_map.mapped

    @property
    def not_available(self) -> pd.DataFrame:
        """finding, reason: the NIH findings this collection does not label."""
        rows = self.findings[self.findings["status"] == "not available"]
        return rows[["rule_or_reason"]].rename(columns={"rule_or_reason": "reason"}).reset_index()

    @property
    def provenance(self) -> dict[str, Any]:
        return run_provenance(self.collection)

    @property
    def headline(self) -> str:
        scored = self.findings[self.findings["away_auroc"].notna()]
        if scored.empty:
            return f"{self.collection}: no mapped finding could be scored on {len(self.predictions):,} films"
        mean_away = scored["away_auroc"].mean()
        both = scored[scored["home_auroc"].notna()]
        drop = f", mean drop from home {both['drop'].mean():+.3f}" if not both.empty else ""
        return (f"{self.collection}: mean AUROC away {mean_away:.3f} over {len(scored)} mapped finding(s), "
                f"{len(self.predictions):,} films{drop}")

    def summary(self) -> dict[str, Any]:
        return {"collection": self.collection, "films_scored": int(len(self.predictions)),
                "patients_scored": int(self.predictions["patient_id"].nunique()),
                "refused": int(len(self.refused)), "missing": int(len(self.missing)),
                "mapped": list(self.mapped), "not_available": list(self.films.label_map.not_available),
                "headline": self.headline}

    def to_document(self) -> dict[str, Any]:
        """What external.json holds."""
        return {
            "run_dir": self.run_dir, "collection": self.collection, "synthetic": self.synthetic,
            "films": self.films.summary(), "options": {"uncertain": self.films.options.uncertain,
                                                       "min_readers": self.films.options.min_readers},
            "provenance": self.provenance, "labels_from": self.films.label_map.labels_from,
            "label_map": self.films.label_map.table(),
            "threshold_method": self.threshold_method, "thresholds": self.thresholds,
            "bootstrap": {"n_resamples": self.n_bootstrap, "seed": self.bootstrap_seed,
                          "resampling": "patients, with replacement; home and away drawn independently",
                          "confidence": CONFIDENCE},
            "sampled": self.sampled, "home_note": self.home_note, "summary": self.summary(),
            "findings": self.findings.reset_index(), "not_available": self.not_available,
            "operating_points": self.operating.reset_index(), "calibration": self.calibration.reset_index(),
            "reliability": self.reliability,
            "subgroups": {"min_positive_patients": self.subgroup_min_positive_patients, "table": self.subgroups},
            "refused": self.refused, "missing": self.missing.head(LISTED_LIMIT),
            "missing_total": int(len(self.missing)),
            "localization": self.localization.to_document() if self.localization is not None
            else {"available": False, "reason": "not computed"},
        }


# --------------------------------------------------------------------------- the evaluation


def home_predictions(run_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame | None, str | None]:
    """The run's NIH test predictions (``predictions_test.csv``), or None and why there are none."""
    path = run_folder.predictions_path(run_dir, "test")
    if not path.is_file():
        return None, (f"{path} is missing: evaluate the run first (cxrutils evaluate --run {Path(run_dir)}) to "
                      "have its home figures beside the external ones")
    return run_folder.read_predictions(run_dir, "test"), None


def _missing_table(films: ExternalFilms) -> pd.DataFrame:
    listed = films.films.set_index("film")["path"]
    rows = [{"film": film, "path": listed.get(film, ""), "reason": "listed in the metadata, no file where the "
             "layout puts it" if listed.get(film, "") else "listed in the metadata; the layout does not say where "
             "its file is, and none was found"} for film in films.missing]
    rows += [{"film": film, "path": path, "reason": problem} for film, (path, problem) in films.not_files.items()]
    return pd.DataFrame(rows, columns=["film", "path", "reason"])


def evaluate_external(
    run_dir: str | os.PathLike[str],
    films: ExternalFilms,
    *,
    threshold_method: str = "youden",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    max_films: int | None = None,
    subgroup_min_positive_patients: int = SUBGROUP_MIN_POSITIVE_PATIENTS,
    calibration_bins: int = CALIBRATION_BINS,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
    localization_max_films: int | None = LOCALIZATION_MAX_FILMS,
) -> ExternalEvaluation:
    """Score the collection's present frontal films with the run and compute every table (module docstring).

    ``max_films`` scores a seeded sample of whole patients (None: every present film).
    Home draws use ``bootstrap_seed``, away draws ``bootstrap_seed + 1``: independent resamples.
    ``localization_max_films`` caps the films Grad-CAM'd against the collection's regions (None: all).
    """
    if threshold_method not in METHODS:
        raise ValueError(f"threshold_method must be one of {METHODS}, got {threshold_method!r}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if max_films is not None and max_films < 1:
        raise ValueError(f"max_films must be at least 1 (or None: every film), got {max_films}")
    run_dir = run_folder.finished_run_dir(run_dir)
    thresholds = run_folder.thresholds_of(run_dir, threshold_method)
    cut = metrics.threshold_array(thresholds)
    present = films.present.reset_index(drop=True)
    chosen = sample_whole_patients(present, max_films, bootstrap_seed).reset_index(drop=True)
    with stage("external scoring", films=len(chosen)):
        probabilities, refusals = score_film_files(run_dir, chosen["path"].tolist(), batch_size=batch_size,
                                                   device=device, num_workers=num_workers)
    scored_mask = np.isfinite(probabilities).all(axis=1)
    refused = pd.DataFrame([{"film": chosen["film"].iloc[i], "path": chosen["path"].iloc[i], "reason": reason}
                            for i, reason in refusals.items()], columns=["film", "path", "reason"])
    base = chosen.loc[scored_mask, ["film", "path", "patient_id", "sex", "age_years", "view"]].reset_index(drop=True)
    scores = pd.DataFrame(probabilities[scored_mask], columns=[probability_column(f) for f in FINDINGS])
    labels = chosen.loc[scored_mask, list(FINDINGS)].reset_index(drop=True).astype(float)
    predictions = pd.concat([base, scores, labels], axis=1)

    home, home_note = home_predictions(run_dir)
    label_map = films.label_map
    rows, operating_rows, calibration_rows, reliability_frames, subgroup_frames = [], [], [], [], []
    home_draws: dict[str, AurocDraws] = {}
    away_draws: dict[str, AurocDraws] = {}
    groups_all = {"sex": predictions["sex"].replace("", np.nan),
                  "age band": age_band(predictions["age_years"], SUBGROUP_AGE_EDGES),
                  "view": predictions["view"].replace("", np.nan)}
    with stage("external statistics", films=len(predictions), resamples=n_bootstrap):
        for k, finding in enumerate(FINDINGS):
            entry = label_map[finding]
            row: dict[str, Any] = {"finding": finding, "status": "mapped" if entry.available else "not available",
                                   "source_terms": " | ".join(entry.source_terms),
                                   "rule_or_reason": entry.rule if entry.available else entry.reason,
                                   "shared_with": ", ".join(entry.shared_with)}
            if home is not None:
                row["home_prevalence"] = float(home[finding].mean()) if len(home) else np.nan
                row["home_positives"] = int(home[finding].sum())
                row["home_films"] = int(len(home))
            if not entry.available:
                rows.append(row)
                continue
            labelled = predictions[finding].notna().to_numpy()
            y = predictions.loc[labelled, finding].to_numpy(dtype=np.int8)
            p = predictions.loc[labelled, probability_column(finding)].to_numpy(dtype=np.float64)
            ids = predictions.loc[labelled, "patient_id"].astype(str).to_numpy()
            row.update(away_prevalence=float(y.mean()) if len(y) else np.nan, away_excluded=int((~labelled).sum()))
            away = auroc_with_draws(y, p, ids, finding, n_bootstrap, bootstrap_seed + AWAY_SEED_OFFSET)
            away_draws[finding] = away
            row.update(away.row("away_"), away_patients=away.patients, away_note=away.note)
            if home is not None:
                home_side = auroc_with_draws(home[finding].to_numpy(), home[probability_column(finding)].to_numpy(),
                                             home["patient_id"].astype(str).to_numpy(), finding, n_bootstrap,
                                             bootstrap_seed + HOME_SEED_OFFSET)
                home_draws[finding] = home_side
                row.update(home_auroc=home_side.auroc, home_ci_low=home_side.ci_low, home_ci_high=home_side.ci_high,
                           home_note=home_side.note, **drop_interval(home_side, away))
            rows.append(row)
            if len(y) == 0:
                continue
            operating_rows.append(metrics.operating_points(y[:, None], p[:, None], cut[[k]], [finding]).reset_index())
            if y.min() != y.max():
                calibration_rows.append(calibration.calibration_summary(
                    y[:, None], p[:, None], ids, n_bins=calibration_bins, n_resamples=n_bootstrap,
                    seed=bootstrap_seed + AWAY_SEED_OFFSET, confidence=CONFIDENCE, class_names=[finding]).reset_index())
                reliability_frames.append(calibration.equal_mass_reliability(
                    y[:, None], p[:, None], ids, n_bins=calibration_bins, n_resamples=n_bootstrap,
                    seed=bootstrap_seed + AWAY_SEED_OFFSET, confidence=CONFIDENCE, class_names=[finding]))
            for name, values in groups_all.items():
                grouped = values[labelled].reset_index(drop=True).rename(name)
                if grouped.notna().sum() == 0:
                    continue
                subgroup_frames.append(metrics.subgroup_auroc(
                    y[:, None], p[:, None], ids, grouped, n_resamples=n_bootstrap,
                    seed=bootstrap_seed + AWAY_SEED_OFFSET, confidence=CONFIDENCE, class_names=[finding],
                    min_positive_patients=subgroup_min_positive_patients))
    table = pd.DataFrame(rows).set_index("finding")
    for column in ("away_auroc", "away_ci_low", "away_ci_high", "home_auroc", "home_ci_low", "home_ci_high", "drop",
                   "drop_ci_low", "drop_ci_high", "away_prevalence", "home_prevalence"):
        if column not in table.columns:
            table[column] = np.nan
    subgroups = pd.concat(subgroup_frames, ignore_index=True) if subgroup_frames else pd.DataFrame(
        columns=["subgroup", "value", "finding", "auroc", "ci_low", "ci_high", "images", "patients", "positives",
                 "positive_patients", "n_resamples"])
    subgroups = subgroups[subgroups["finding"] != metrics.MEAN_ROW].reset_index(drop=True)  # one finding each: no mean
    with stage("external localization", films=len(predictions)):
        located = localize_external(run_dir, films, predictions, max_films=localization_max_films,
                                    n_bootstrap=n_bootstrap, seed=bootstrap_seed + AWAY_SEED_OFFSET, device=device)
    return ExternalEvaluation(
        run_dir=run_dir, collection=films.collection, films=films, threshold_method=threshold_method,
        thresholds=thresholds, n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed,
        subgroup_min_positive_patients=subgroup_min_positive_patients, predictions=predictions, findings=table,
        operating=pd.concat(operating_rows, ignore_index=True).set_index("finding") if operating_rows
        else pd.DataFrame(), calibration=pd.concat(calibration_rows, ignore_index=True).set_index("finding")
        if calibration_rows else pd.DataFrame(),
        reliability=pd.concat(reliability_frames, ignore_index=True) if reliability_frames else pd.DataFrame(),
        subgroups=subgroups, refused=refused, missing=_missing_table(films),
        sampled={"max_films": max_films, "present_films": int(len(present)), "chosen_films": int(len(chosen)),
                 "chosen_patients": int(chosen["patient_id"].nunique()), "seed": bootstrap_seed},
        home_note=home_note,
        synthetic=bool(films.synthetic or run_folder.read_config(run_dir).get("synthetic")),
        home_draws=home_draws, away_draws=away_draws, localization=located,
    )


def write_external(evaluation: ExternalEvaluation, document: dict[str, Any] | None = None) -> Path:
    """``external/<collection>/external.json`` (``document``: the result's own, or a caller's fuller one) and
    ``predictions.csv`` in the run folder, atomically; returns the JSON's path."""
    folder = external_dir(evaluation.run_dir, evaluation.collection)
    folder.mkdir(parents=True, exist_ok=True)
    files.write_csv(folder / PREDICTIONS_NAME, evaluation.predictions, float_format="%.6g")
    return files.write_json(folder / RESULT_NAME, evaluation.to_document() if document is None else document)


def read_external(run_dir: str | os.PathLike[str], collection: str) -> dict[str, Any] | None:
    """external.json of ``collection`` in the run folder; None when the run has not been scored there."""
    import json

    path = external_dir(run_dir, collection) / RESULT_NAME
    return json.loads(path.read_text()) if path.is_file() else None

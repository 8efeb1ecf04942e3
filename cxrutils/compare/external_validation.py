"""External validation of a run and of TorchXRayVision's models on one collection, home against away: compute only.

``validate_external(run_dir, collection, root)`` reads the collection (``data.external.load_external``),
scores the run on its frontal films with labels (``evaluate.external.evaluate_external``), then
scores each TorchXRayVision model that loads on **the same films** (``compare.txv.predict_txv``
on the films' paths) and, where the run's NIH data can be opened, on the run's NIH test films
(the image cache, as notebook 04 does), and builds:

- **per model and finding**: AUROC at home (the run's NIH test films) and away (the collection),
  each with its own patient bootstrap, and the drop (home - away) with the interval of the
  difference of the two independent bootstrap distributions (``evaluate.external.drop_interval``);
- **each model's provenance on the collection** (``compare.external_provenance``): a model that
  trained on the collection, or on its films under other labels (RSNA and SIIM are NIH films),
  is marked "not external", and the headline is never one of those; the run itself is not
  external on RSNA and SIIM (``evaluate.external.run_provenance``);
- **which generalises better**, the run or a TorchXRayVision model, per finding: both scored on
  the same away films, so DeLong's paired test with the patient-clustered variance
  (``stats.paired.compare_auroc``; Holm over the findings of one model), and the difference of
  the two drops with a paired bootstrap interval (the same resamples for both models on each side).

A model whose weights are missing is listed with the file, the folder and the URL (offline is
normal); ``random_txv=True`` (tests, demos) builds random weights and every name carries
``txv.RANDOM_INIT_LABEL``. ``write_external_validation`` saves everything as the run's
``external/<collection>/external.json``. Display lives in ``cxrutils.show.external_view``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.compare.external_provenance import external_provenance, headline_model
from cxrutils.compare.provenance import DEFAULT_MODELS
from cxrutils.compare.run import MissingWeights, enable_instructions, load_models
from cxrutils.compare.txv import RANDOM_INIT_LABEL, TxvModel, predict_txv
from cxrutils.data.external import ExternalOptions, load_external
from cxrutils.data.film_files import ImageReadError
from cxrutils.engine import run_folder
from cxrutils.evaluate.external import (
    AWAY_SEED_OFFSET,
    HOME_SEED_OFFSET,
    LOCALIZATION_MAX_FILMS,
    RUN_MODEL,
    AurocDraws,
    ExternalEvaluation,
    auroc_with_draws,
    drop_interval,
    evaluate_external,
    home_predictions,
    write_external,
)
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.profiling import stage
from cxrutils.stats.delong import adjust_p_values
from cxrutils.stats.intervals import CONFIDENCE, percentile_interval
from cxrutils.stats.paired import compare_auroc, pair_predictions

SIGNIFICANCE = 0.05  # Holm-adjusted p below this names a winner on the away films
RUN_DISPLAY = "this run (trained on NIH ChestX-ray14)"


@dataclass
class ModelOnCollection:
    """One model (the run, or a TorchXRayVision model) home and away, for the mapped findings it scores."""

    model: str  # RUN_MODEL or a torchxrayvision name
    display_name: str
    external: bool
    why: str
    random_init: bool
    findings: tuple[str, ...]  # mapped findings the model scores, in FINDINGS order
    table: pd.DataFrame  # per finding: home and away AUROC with intervals, the drop with its interval, notes
    away: pd.DataFrame  # film, patient_id, prob_<finding>: the model on the away films
    home_draws: dict[str, AurocDraws] = field(default_factory=dict)
    away_draws: dict[str, AurocDraws] = field(default_factory=dict)
    home_note: str | None = None

    def to_document(self) -> dict[str, Any]:
        return {"model": self.model, "display_name": self.display_name, "external": self.external,
                "verdict": "external" if self.external else "not external", "why": self.why,
                "random_init": self.random_init, "label": RANDOM_INIT_LABEL if self.random_init else "",
                "findings": list(self.findings), "home_note": self.home_note,
                "per_finding": self.table.reset_index()}


@dataclass
class ExternalValidation:
    """The run and the TorchXRayVision models on one collection, with the home-vs-away summary and paired tests."""

    evaluation: ExternalEvaluation
    models: dict[str, ModelOnCollection]  # RUN_MODEL first, then each TorchXRayVision model that loaded
    requested_txv: list[str]
    missing_weights: list[MissingWeights]
    comparisons: pd.DataFrame  # model, finding: run - model away (DeLong paired), drop difference, verdict
    headline_txv: str | None  # the external TorchXRayVision model to lead with (None: none is external here)
    random_txv: bool

    @property
    def collection(self) -> str:
        return self.evaluation.collection

    @property
    def synthetic(self) -> bool:
        return self.evaluation.synthetic

    def home_vs_away(self) -> pd.DataFrame:
        """One row per (model, finding): provenance, home and away AUROC, the drop, each with its interval."""
        frames = []
        for name, model in self.models.items():
            table = model.table.reset_index()
            table.insert(0, "verdict", "external" if model.external else "not external")
            table.insert(0, "model", model.display_name)
            table.insert(0, "key", name)
            frames.append(table)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def headline(self) -> str:
        text = self.evaluation.headline
        if self.headline_txv is not None:
            lead = self.models[self.headline_txv].display_name
            mean = self.models[self.headline_txv].table["away_auroc"].mean()
            text += f"; {lead} away {mean:.3f}" if np.isfinite(mean) else ""
        if not self.evaluation.provenance["external"]:
            text = f"NOT EXTERNAL for this run ({self.collection} films are NIH films). " + text
        return f"{RANDOM_INIT_LABEL} TorchXRayVision. " + text if self.random_txv and len(self.models) > 1 else text

    def to_document(self) -> dict[str, Any]:
        return {
            **self.evaluation.to_document(),
            "models": {name: model.to_document() for name, model in self.models.items()},
            "home_vs_away": self.home_vs_away(),
            "comparisons": self.comparisons,
            "headline_txv": self.headline_txv,
            "requested_txv": self.requested_txv,
            "missing_weights": [{"model": m.model, "weights_file": m.weights_file, "folder": str(m.folder),
                                 "url": m.url} for m in self.missing_weights],
            "instructions": enable_instructions(self.missing_weights) if self.missing_weights else [],
            "random_txv": self.random_txv, "random_init_label": RANDOM_INIT_LABEL if self.random_txv else "",
            "headline": self.headline,
        }

    def summary_facts(self, saved: Path) -> dict[str, Any]:
        """The keyword arguments for ``cxrutils.summary.write_summary``."""
        return {"headline": self.headline, "synthetic": self.synthetic, "collection": self.collection,
                "data_source": f"{'SYNTHETIC ' if self.evaluation.films.synthetic else ''}{self.collection} root "
                               f"{self.evaluation.films.root}", "saved": str(saved),
                "random_init": self.random_txv and len(self.models) > 1}


# --------------------------------------------------------------------------- one model


def _model_table(findings: Sequence[str], home: dict[str, AurocDraws], away: dict[str, AurocDraws]) -> pd.DataFrame:
    rows = []
    for finding in findings:
        away_side = away[finding]
        row: dict[str, Any] = {"finding": finding, **away_side.row("away_"), "away_note": away_side.note}
        home_side = home.get(finding)
        if home_side is not None:
            row.update(home_auroc=home_side.auroc, home_ci_low=home_side.ci_low, home_ci_high=home_side.ci_high,
                       home_films=home_side.films, home_note=home_side.note, **drop_interval(home_side, away_side))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("finding") if rows else pd.DataFrame(index=pd.Index([], name="finding"))
    for column in ("home_auroc", "home_ci_low", "home_ci_high", "drop", "drop_ci_low", "drop_ci_high", "away_auroc"):
        if column not in table.columns:
            table[column] = np.nan
    return table


def _run_on_collection(evaluation: ExternalEvaluation) -> ModelOnCollection:
    mapped = [f for f in FINDINGS if f in evaluation.away_draws]
    away = evaluation.predictions[["film", "patient_id", *[probability_column(f) for f in FINDINGS]]]
    return ModelOnCollection(
        model=RUN_MODEL, display_name=f"{RUN_DISPLAY}: {evaluation.run_dir.name}",
        external=evaluation.provenance["external"], why=evaluation.provenance["why"], random_init=False,
        findings=tuple(mapped), table=_model_table(mapped, evaluation.home_draws, evaluation.away_draws), away=away,
        home_draws=dict(evaluation.home_draws), away_draws=dict(evaluation.away_draws), home_note=evaluation.home_note)


def _predict_paths(model: TxvModel, paths: list[str], chunk: int = 256) -> np.ndarray:
    """``predict_txv`` on film paths, a chunk at a time; a film that will not read gets NaN (not fatal)."""
    out = np.full((len(paths), len(model.findings)), np.nan)
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        try:
            out[start:start + len(part)] = predict_txv(model, part, show_progress=False, read_workers=1)
        except ImageReadError:
            for offset, path in enumerate(part):
                try:
                    out[start + offset] = predict_txv(model, [path], show_progress=False, read_workers=1)[0]
                except ImageReadError:
                    continue
    return out


def _txv_home(model: TxvModel, run_dir: Path, home: pd.DataFrame | None,
              data_root: str | os.PathLike[str] | None) -> tuple[pd.DataFrame | None, str | None]:
    """The model's probabilities on the run's NIH test films (image, patient_id, prob_*, labels), or why not."""
    if home is None:
        return None, "the run has no predictions_test.csv, so no home films to score"
    try:
        run = run_folder.open_run(run_dir, data_root=data_root)
        cache = run.image_cache()
    except (OSError, ValueError) as err:  # a moved or changed NIH root: the away side still stands
        return None, f"the run's NIH data could not be opened ({type(err).__name__}: {err})"
    images = home["image"].astype(str).tolist()
    probabilities = predict_txv(model, cache, names=images, show_progress=False, read_workers=1)
    frame = home[["image", "patient_id", *FINDINGS]].copy()
    for k, finding in enumerate(model.findings):
        frame[probability_column(finding)] = probabilities[:, k]
    return frame, None


def _txv_on_collection(model: TxvModel, evaluation: ExternalEvaluation, n_bootstrap: int, seed: int,
                       txv_home: bool, data_root: str | os.PathLike[str] | None) -> ModelOnCollection:
    films = evaluation.predictions
    probabilities = _predict_paths(model, films["path"].tolist())
    away = films[["film", "patient_id"]].copy()
    for k, finding in enumerate(model.findings):
        away[probability_column(finding)] = probabilities[:, k]
    scored = [f for f in FINDINGS if f in model.findings and f in evaluation.away_draws]
    home, home_note = (None, "not scored at home (txv_home=False)")
    if txv_home:
        run_home, _ = home_predictions(evaluation.run_dir)
        home, home_note = _txv_home(model, evaluation.run_dir, run_home, data_root)
    away_draws, home_draws = {}, {}
    readable = np.isfinite(probabilities).all(axis=1) if len(model.findings) else np.ones(len(films), bool)
    for finding in scored:
        keep = films[finding].notna().to_numpy() & readable
        away_draws[finding] = auroc_with_draws(
            films.loc[keep, finding].to_numpy(), away.loc[keep, probability_column(finding)].to_numpy(),
            films.loc[keep, "patient_id"].astype(str).to_numpy(), finding, n_bootstrap, seed + AWAY_SEED_OFFSET)
        if home is not None:
            home_draws[finding] = auroc_with_draws(
                home[finding].to_numpy(), home[probability_column(finding)].to_numpy(),
                home["patient_id"].astype(str).to_numpy(), finding, n_bootstrap, seed + HOME_SEED_OFFSET)
    origin = external_provenance(model.name, evaluation.collection)
    return ModelOnCollection(
        model=model.name, display_name=model.display_name, external=origin.external, why=origin.why,
        random_init=model.random_init, findings=tuple(scored), table=_model_table(scored, home_draws, away_draws),
        away=away, home_draws=home_draws, away_draws=away_draws, home_note=home_note)


# --------------------------------------------------------------------------- the run against each model


def _paired_rows(run: ModelOnCollection, other: ModelOnCollection, films: pd.DataFrame, n_bootstrap: int,
                 seed: int) -> list[dict[str, Any]]:
    """Per shared finding: run - model on the same away films (DeLong, clustered), and the difference of drops."""
    rows = []
    for finding in other.findings:
        column = probability_column(finding)
        keep = films[finding].notna().to_numpy() & other.away[column].notna().to_numpy()
        row: dict[str, Any] = {"model": other.model, "finding": finding, "model_external": other.external}
        if not keep.any():
            rows.append({**row, "films": 0, "note": "no film both labelled for it and scored by both"})
            continue
        ours = pd.DataFrame({"image": films.loc[keep, "film"].astype(str), "patient_id": films.loc[keep, "patient_id"]
                             .astype(str), column: run.away.loc[keep, column],
                             finding: films.loc[keep, finding].astype(int)})
        theirs = pd.DataFrame({"image": ours["image"], "patient_id": ours["patient_id"],
                               column: other.away.loc[keep, column]})
        paired = pair_predictions(ours, theirs, names={"ours": run.display_name, "txv": other.display_name})
        table = compare_auroc(paired, n_resamples=n_bootstrap, seed=seed + AWAY_SEED_OFFSET).table.loc[finding]
        row.update(films=int(keep.sum()), auroc_run=table["auroc_ours"], auroc_model=table["auroc_txv"],
                   difference=table["difference"], diff_ci_low=table["diff_ci_low"],
                   diff_ci_high=table["diff_ci_high"], z=table["z"], p_value=table["p_value"], note=table["note"])
        run_home, model_home = run.home_draws.get(finding), other.home_draws.get(finding)
        labelled = films[finding].notna().to_numpy()
        if run_home is not None and model_home is not None and keep[labelled].all():
            # Same home films and same away films for both, with the same seeds: each draw is paired.
            drops = (run_home.draws - run.away_draws[finding].draws) - (model_home.draws - other.away_draws[finding]
                                                                         .draws)
            low, high, _ = percentile_interval(drops, CONFIDENCE)
            row.update(drop_difference=(run_home.auroc - run.away_draws[finding].auroc)
                       - (model_home.auroc - other.away_draws[finding].auroc),
                       drop_diff_ci_low=low, drop_diff_ci_high=high)
        rows.append(row)
    return rows


def _verdict(row: pd.Series, run: ModelOnCollection, other: ModelOnCollection) -> str:
    if not np.isfinite(row.get("p_holm", np.nan)):
        return "not tested: too few positive or negative films or patients"
    if row["p_holm"] >= SIGNIFICANCE:
        text = "no evidence of a difference on these films"
    else:
        text = f"{'the run' if row['difference'] > 0 else other.model} higher on these films"
    unfair = [name for name, m in (("the run", run), (other.model, other)) if not m.external]
    return text + (f" (not external: {', '.join(unfair)})" if unfair else "")


def compare_on_collection(run: ModelOnCollection, others: Sequence[ModelOnCollection], films: pd.DataFrame,
                          n_bootstrap: int, seed: int) -> pd.DataFrame:
    """The run against each model on the away films, Holm over each model's findings, with a verdict per row."""
    frames = []
    for other in others:
        rows = _paired_rows(run, other, films, n_bootstrap, seed)
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        if "p_value" not in frame.columns:  # no finding had films to test
            frame["p_value"] = np.nan
        frame["p_holm"] = adjust_p_values(frame["p_value"].to_numpy(dtype=float), "holm")
        frame["verdict"] = [_verdict(row, run, other) for _, row in frame.iterrows()]
        frames.append(frame)
    columns = ["model", "finding", "model_external", "films", "auroc_run", "auroc_model", "difference", "diff_ci_low",
               "diff_ci_high", "z", "p_value", "p_holm", "drop_difference", "drop_diff_ci_low", "drop_diff_ci_high",
               "verdict", "note"]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns) if frames else pd.DataFrame(columns=columns)


def validate_external(
    run_dir: str | os.PathLike[str],
    collection: str,
    root: str | os.PathLike[str],
    *,
    uncertain: str = "exclude",
    min_readers: int = 2,
    threshold_method: str = "youden",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    max_films: int | None = None,
    txv_models: Sequence[str] = DEFAULT_MODELS,
    weights_dir: str | os.PathLike[str] | None = None,
    random_txv: bool = False,
    txv_home: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    subgroup_min_positive_patients: int = 5,
    device: str = "auto",
    localization_max_films: int | None = LOCALIZATION_MAX_FILMS,
) -> ExternalValidation:
    """The run, then each TorchXRayVision model in ``txv_models`` (empty: none), on ``collection`` at ``root``.

    ``localization_max_films`` caps the films Grad-CAM'd against the collection's boxes or masks (None: all).
    """
    with stage("load external collection") as facts:
        films = load_external(collection, root, ExternalOptions(uncertain=uncertain, min_readers=min_readers))
        facts["films"] = len(films.films)
    evaluation = evaluate_external(run_dir, films, threshold_method=threshold_method, n_bootstrap=n_bootstrap,
                                   bootstrap_seed=bootstrap_seed, max_films=max_films, device=device,
                                   subgroup_min_positive_patients=subgroup_min_positive_patients,
                                   localization_max_films=localization_max_films)
    run = _run_on_collection(evaluation)
    models: dict[str, ModelOnCollection] = {RUN_MODEL: run}
    missing: list[MissingWeights] = []
    requested = list(txv_models)
    if requested:
        loaded = load_models(requested, weights_dir, random_init=random_txv, seed=bootstrap_seed)
        missing = loaded.missing
        for model in loaded.models:
            with stage("external TorchXRayVision", model=model.name, films=len(evaluation.predictions)):
                models[model.name] = _txv_on_collection(model, evaluation, n_bootstrap, bootstrap_seed, txv_home,
                                                        data_root)
    others = [m for name, m in models.items() if name != RUN_MODEL]
    comparisons = compare_on_collection(run, others, evaluation.predictions, n_bootstrap, bootstrap_seed)
    return ExternalValidation(evaluation=evaluation, models=models, requested_txv=requested, missing_weights=missing,
                              comparisons=comparisons,
                              headline_txv=headline_model([m.model for m in others], collection),
                              random_txv=random_txv)


def write_external_validation(result: ExternalValidation) -> Path:
    """``external/<collection>/external.json`` (and ``predictions.csv``) in the run folder; returns the JSON's path."""
    return write_external(result.evaluation, result.to_document())

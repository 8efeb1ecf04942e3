"""Finished runs against each other on the same films, from their folders to ``runs_compared.json``: compute only.

``compare_runs(run_dirs)`` reads each run's ``config.json``, ``history.json`` and
``predictions_<split>.csv`` (written by ``cxrutils evaluate``), checks that every run
scored the same films with the same patients and labels (otherwise
``FilmsDifferError`` names the difference), and compares each run with the first one,
the reference, finding by finding (``cxrutils.stats.paired.compare_auroc``: the
patient-clustered paired DeLong test with Holm and Benjamini-Hochberg over the
findings, and paired patient-bootstrap intervals of the differences; every run is
scored on the same resamples). It returns a ``RunsComparison``; ``write_runs_comparison``
saves it as ``runs_compared.json`` in a comparison folder, ``runs/comparisons/<name>/`` by
default. Notebook 06 and ``cxrutils compare-runs`` both call it; the notebook also puts a
copy beside its report (``copy_beside_report``), which the index of reports links. Display
lives in ``cxrutils.show.runs_view``.

**Seeds.** Runs whose settings are the same but for ``seed`` (and settings that do
not change what a run learns: its name and folders) form a seed group. For each group
with two or more runs, each figure (every finding's test AUROC and their mean) gets
its mean, standard deviation and range across seeds, beside the single runs' bootstrap
intervals. Every pair of groups is compared (B - A, C - A, C - B, ...: each group minus
every group given before it), not only each group with the first: the difference that
matters may be between two recipes that are both not the first. Two groups' difference
*exceeds the seed spread* when it is larger than twice its seed standard error,
``2 * s * sqrt(1/n1 + 1/n2)``, with ``s`` the seed standard deviation pooled over every
group with two or more seeds: roughly a two-sided 5% test that treats ``s`` as known,
not adjusted for the number of pairs and figures. With two or three seeds ``s`` is
itself uncertain, so the rule says which differences stand out, not which are proven.

Run names are folder names, which may hold anything a file system allows: they are
data, never markup (the display escapes them), and the comparison's own folder name
is made of safe characters only (``comparison_name``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils import files
from cxrutils.engine import run_folder
from cxrutils.labels import FINDINGS
from cxrutils.paths import resolve
from cxrutils.predictions import probability_column
from cxrutils.settings import TrainConfig, describe
from cxrutils.stats.cohort import cluster_facts
from cxrutils.stats.metrics import MEAN_ROW, bootstrap_auroc
from cxrutils.stats.paired import OURS, TXV, AurocComparison, compare_auroc, pair_predictions

COMPARISONS_FOLDER = "comparisons"  # beside the runs: <runs_dir>/comparisons/<name>/runs_compared.json
COMPARISON_JSON = "runs_compared.json"
# A comparison's folder name: letters, digits, dot, dash and underscore, starting with a letter or digit.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Settings that name or place a run, or say where it ran, but not what it learns: never a difference between recipes.
NOT_THE_RECIPE = ("name", "runs_dir", "cache_dir", "tensorboard", "num_workers", "device")  # device: a fact below
SEED_SETTING = "seed"
# Facts of config.json (not settings) worth showing when they differ between runs.
FACTS = ("data_fingerprint", "cache_fingerprint", "synthetic", "split_kind", "device", "world_size", "train_images",
         "val_images", "code.commit", "code.uncommitted_changes", "environment.torch", "environment.python",
         "environment.platform", "initial_weights.sha256")
# The history columns the overlaid training curves use.
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auroc_mean", "lr")
# Seed spreads: a difference between groups exceeds the spread beyond this many seed standard errors.
SPREAD_FACTOR = 2.0
# The per-pair table's columns: compare_auroc's "ours" is the compared run, its "txv" the reference.
_PAIR_COLUMNS = {"auroc_ours": "auroc_run", "ours_ci_low": "run_ci_low", "ours_ci_high": "run_ci_high",
                 "auroc_txv": "auroc_reference", "txv_ci_low": "reference_ci_low",
                 "txv_ci_high": "reference_ci_high"}


class RunsNotComparableError(ValueError):
    """The runs given cannot be compared as they are (fewer than two, or two with one folder name)."""


class FilmsDifferError(RunsNotComparableError):
    """The runs did not score the same films (or gave them different patients or labels)."""


class PredictionsMissingError(FileNotFoundError):
    """A run has no predictions on the split, or they are older than its best checkpoint."""


# --------------------------------------------------------------------------- the runs


@dataclass
class ComparedRun:
    """One run as the comparison reads it: its name, record, settings, predictions and training history."""

    name: str
    run_dir: Path
    record: dict[str, Any]  # config.json as written
    settings: dict[str, Any]  # the training settings, nested ones dotted (augment.rotation_degrees)
    predictions: pd.DataFrame
    history: pd.DataFrame | None  # None when the run has no history.json
    predictions_file: str

    @property
    def seed(self) -> Any:
        return self.settings.get(SEED_SETTING)

    @property
    def synthetic(self) -> bool:
        return bool(self.record.get("synthetic"))


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """A run's training settings from its config.json, nested ones as dotted keys; the recorded facts left out.

    A setting the run's config.json lacks (one added to the schema after the run trained) takes the schema's
    default, the value the run had, as ``run_folder.read_run_config`` reads it: an older run is not "different"
    for a setting it never recorded.
    """
    known = set(TrainConfig.__dataclass_fields__)
    return describe(TrainConfig.from_dict({key: value for key, value in record.items() if key in known}))


def run_facts(record: dict[str, Any]) -> dict[str, Any]:
    """The facts of config.json that ``FACTS`` names (None where a run did not record one)."""
    flat = _flatten(record)
    return {fact: flat.get(fact) for fact in FACTS}


def read_compared_run(run_dir: str | os.PathLike[str], split: str = "test") -> ComparedRun:
    """A finished run's record and its predictions on ``split``, which must be newer than its best checkpoint."""
    folder = run_folder.finished_run_dir(run_dir)
    path = run_folder.predictions_path(folder, split)
    command = f"cxrutils evaluate --run {folder}" + ("" if split == "test" else f" --split {split}")
    if not path.is_file():
        raise PredictionsMissingError(f"{path} does not exist: run {folder.name} has not been evaluated on the {split} "
                                      f"split. Evaluate it first: {command}")
    checkpoint = folder / run_folder.BEST_CHECKPOINT
    if path.stat().st_mtime < checkpoint.stat().st_mtime:
        raise PredictionsMissingError(f"{path} is older than {checkpoint.name}: the run trained on after it was "
                                      f"evaluated, so its predictions are not its best checkpoint's. Evaluate it "
                                      f"again: {command}")
    record = run_folder.read_config(folder)
    has_history = (folder / run_folder.HISTORY_JSON).is_file()
    return ComparedRun(name=folder.name, run_dir=folder, record=record, settings=run_settings(record),
                       predictions=run_folder.read_predictions(folder, split),
                       history=run_folder.read_history(folder) if has_history else None, predictions_file=path.name)


def _examples(values: Sequence[Any] | pd.Index, limit: int = 3) -> str:
    shown = ", ".join(str(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def film_differences(reference: ComparedRun, run: ComparedRun, split: str) -> list[str]:
    """What differs between two runs' scored films, patients and labels, in words (empty: the same films)."""
    lines = []
    for which in (reference, run):
        duplicated = which.predictions["image"][which.predictions["image"].duplicated()]
        if len(duplicated):
            lines.append(f"run {which.name} scored {len(duplicated):,} film(s) twice (e.g. {_examples(duplicated)})")
    if lines:
        return lines
    was = reference.predictions.set_index("image")
    now = run.predictions.set_index("image")
    only_reference = was.index.difference(now.index)
    only_run = now.index.difference(was.index)
    if len(only_reference):
        lines.append(f"{len(only_reference):,} film(s) only in run {reference.name} "
                     f"(e.g. {_examples(only_reference)})")
    if len(only_run):
        lines.append(f"{len(only_run):,} film(s) only in run {run.name} (e.g. {_examples(only_run)})")
    common = was.index.intersection(now.index)
    patients = common[was.loc[common, "patient_id"].astype(str).to_numpy()
                      != now.loc[common, "patient_id"].astype(str).to_numpy()]
    if len(patients):
        lines.append(f"{len(patients):,} film(s) with another patient id (e.g. {_examples(patients)})")
    for finding in FINDINGS:
        relabelled = common[was.loc[common, finding].to_numpy() != now.loc[common, finding].to_numpy()]
        if len(relabelled):
            lines.append(f"{len(relabelled):,} film(s) labelled otherwise for {finding} (e.g. {_examples(relabelled)})")
    if lines:
        lines.insert(0, f"runs {reference.name} and {run.name} did not score the same {split} films")
    return lines


def check_same_films(runs: Sequence[ComparedRun], split: str) -> None:
    """``FilmsDifferError`` naming every difference from the first run; nothing when all scored the same films."""
    problems = [line for run in runs[1:] for line in film_differences(runs[0], run, split)]
    if problems:
        raise FilmsDifferError("; ".join(problems) + ". A comparison pairs each film's scores, so the runs must be "
                               "evaluated on the same films of the same data: train them on one data_root and split "
                               "(same split_seed, val_fraction and split lists), then evaluate each on this split.")


# --------------------------------------------------------------------------- settings and seeds


def settings_differences(runs: Sequence[ComparedRun]) -> pd.DataFrame:
    """Setting x run: the training settings whose values differ between the runs (names and folders left out)."""
    keys = sorted(set().union(*(run.settings for run in runs)) - set(NOT_THE_RECIPE))
    rows = {key: [run.settings.get(key) for run in runs] for key in keys}
    differing = {key: values for key, values in rows.items()
                 if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1}
    table = pd.DataFrame.from_dict(differing, orient="index", columns=[run.name for run in runs], dtype=object)
    return table.rename_axis("setting")


def facts_differences(runs: Sequence[ComparedRun]) -> pd.DataFrame:
    """Fact x run: what config.json records about the runs (data, code, machine) where it differs between them."""
    facts = [run_facts(run.record) for run in runs]
    differing = {fact: [f[fact] for f in facts] for fact in FACTS
                 if len({json.dumps(f[fact], sort_keys=True, default=str) for f in facts}) > 1}
    table = pd.DataFrame.from_dict(differing, orient="index", columns=[run.name for run in runs], dtype=object)
    return table.rename_axis("fact")


def _recipe(run: ComparedRun) -> str:
    """What makes two runs seed replicates: every setting but the seed (and the names), and the data."""
    recipe = {k: v for k, v in run.settings.items() if k not in (*NOT_THE_RECIPE, SEED_SETTING)}
    recipe["data_fingerprint"] = run.record.get("data_fingerprint")
    return json.dumps(recipe, sort_keys=True, default=str)


@dataclass
class SeedGroup:
    """Runs with the same recipe, differing only by seed."""

    label: str  # "A", "B", ... in the order of the runs given
    runs: list[str]
    seeds: list[Any]
    settings: dict[str, Any]  # the settings that set this group apart from the others (empty with one group)

    @property
    def has_spread(self) -> bool:
        return len(self.runs) >= 2

    @property
    def title(self) -> str:
        apart = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        seeds = ", ".join(str(seed) for seed in self.seeds)
        return f"group {self.label}" + (f" ({apart})" if apart else "") + f": seed{'s' if len(self.seeds) > 1 else ''} {seeds}"


def seed_groups(runs: Sequence[ComparedRun]) -> list[SeedGroup]:
    """The runs grouped by recipe (all settings but the seed), in the order their first run was given."""
    by_recipe: dict[str, list[ComparedRun]] = {}
    for run in runs:
        by_recipe.setdefault(_recipe(run), []).append(run)
    members = list(by_recipe.values())
    differing = settings_differences(runs).drop(index=SEED_SETTING, errors="ignore")
    groups = []
    for k, group in enumerate(members):
        label = chr(ord("A") + k) if k < 26 else f"G{k + 1}"
        apart = {key: group[0].settings.get(key) for key in differing.index} if len(members) > 1 else {}
        groups.append(SeedGroup(label=label, runs=[run.name for run in group], seeds=[run.seed for run in group],
                                settings=apart))
    return groups


def seed_spread(per_run: pd.DataFrame, groups: Sequence[SeedGroup], figures: Sequence[str]) -> pd.DataFrame:
    """Per group and figure: runs, mean, SD, min and max of the AUROC across seeds, and the single runs' mean CI width.

    ``per_run`` is ``RunsComparison.per_run`` (run, finding, auroc, ci_low, ci_high). SD is
    the sample standard deviation (n - 1), NaN for a group of one run.
    """
    rows = []
    indexed = per_run.set_index(["run", "finding"])
    for group in groups:
        for figure in figures:
            values = np.array([indexed.loc[(run, figure), "auroc"] for run in group.runs], dtype=np.float64)
            widths = np.array([indexed.loc[(run, figure), "ci_high"] - indexed.loc[(run, figure), "ci_low"]
                               for run in group.runs], dtype=np.float64)
            spread_sd = float(np.std(values, ddof=1)) if values.size > 1 else np.nan
            width = float(np.nanmean(widths)) if np.isfinite(widths).any() else np.nan
            rows.append({"group": group.label, "finding": figure, "runs": len(group.runs),
                         "mean": float(np.mean(values)), "sd": spread_sd, "min": float(np.min(values)),
                         "max": float(np.max(values)), "single_run_ci_width": width})
    return pd.DataFrame(rows, columns=["group", "finding", "runs", "mean", "sd", "min", "max", "single_run_ci_width"])


def pooled_seed_sd(spread: pd.DataFrame) -> pd.Series:
    """Per figure, the seed SD pooled over the groups with two or more runs (weights n - 1); NaN where there is none."""
    usable = spread[spread["runs"] >= 2]
    if usable.empty:
        return pd.Series(np.nan, index=pd.Index(spread["finding"].unique(), name="finding"), dtype=np.float64)
    degrees = (usable["runs"] - 1).astype(np.float64)
    pooled = (usable["sd"] ** 2 * degrees).groupby(usable["finding"], sort=False).sum() / degrees.groupby(
        usable["finding"], sort=False).sum()
    return np.sqrt(pooled).reindex(spread["finding"].unique()).rename_axis("finding")


def between_groups(spread: pd.DataFrame, groups: Sequence[SeedGroup]) -> pd.DataFrame:
    """Every pair of groups: per figure, the later group's mean minus the earlier one's, its seed SE and the verdict.

    The pairs come in the order B - A, C - A, C - B, D - A, ... (``group`` minus
    ``other_group``, each group against every group given before it), so with three or
    more recipes the ones after the first are also compared with each other.
    ``seed_se = pooled SD * sqrt(1/n1 + 1/n2)``; ``exceeds_spread`` is True when
    ``|difference| > SPREAD_FACTOR * seed_se``, None where no group has two seeds.
    """
    columns = ["group", "other_group", "finding", "difference", "seed_se", "threshold", "exceeds_spread"]
    if len(groups) < 2:
        return pd.DataFrame(columns=columns)
    pooled = pooled_seed_sd(spread)
    means = spread.set_index(["group", "finding"])
    rows = []
    for later, group in enumerate(groups):
        for other in groups[:later]:
            for figure in pooled.index:
                difference = means.loc[(group.label, figure), "mean"] - means.loc[(other.label, figure), "mean"]
                se = pooled[figure] * math.sqrt(1 / len(group.runs) + 1 / len(other.runs))
                known = bool(np.isfinite(se) and np.isfinite(difference))  # no seed spread, or no figure to compare
                rows.append({"group": group.label, "other_group": other.label, "finding": figure,
                             "difference": float(difference), "seed_se": se if known else np.nan,
                             "threshold": SPREAD_FACTOR * se if known else np.nan,
                             "exceeds_spread": bool(abs(difference) > SPREAD_FACTOR * se) if known else None})
    return pd.DataFrame(rows, columns=columns)


def group_pairs(between: pd.DataFrame) -> list[tuple[str, str]]:
    """The (group, other group) pairs of ``between_groups``' table, in its order."""
    return list(dict.fromkeys(zip(between["group"], between["other_group"])))


def spread_sentence(groups: Sequence[SeedGroup], between: pd.DataFrame) -> str:
    """One sentence (or two) saying which differences between groups, every pair of them, exceed the seed spread."""
    seeded = [g for g in groups if g.has_spread]
    if len(groups) == 1:
        if not seeded:
            return "One run: there is no seed spread and nothing to compare it with."
        return (f"All {len(groups[0].runs)} runs differ only by seed (group {groups[0].label}): the differences "
                "between them are the seed spread itself, the variation a rerun with another seed gives.")
    if not seeded:
        return ("No group has two runs with different seeds, so the seed spread is unknown and no difference between "
                "groups can be set against it: train more seeds of each recipe (cxrutils train --config PROFILE "
                "--seeds 0 1 2).")
    parts = []
    for label, other in group_pairs(between):
        rows = between[(between["group"] == label) & (between["other_group"] == other)]
        mean = rows[rows["finding"] == MEAN_ROW]
        findings = rows[rows["finding"] != MEAN_ROW]
        above = findings[findings["exceeds_spread"] == True]  # noqa: E712 (None: unknown)
        text = f"group {label} minus group {other}: "
        if len(mean) and mean.iloc[0]["exceeds_spread"] is not None:
            row = mean.iloc[0]
            verdict = "exceeds" if row["exceeds_spread"] else "is within"
            text += (f"the mean AUROC difference {row['difference']:+.3f} {verdict} the seed spread (twice its seed "
                     f"standard error: {row['threshold']:.3f}); ")
        if len(above):
            named = ", ".join(f"{r.finding} {r.difference:+.3f} (> {r.threshold:.3f})" for r in above.itertuples())
            text += f"{len(above)} of {len(findings)} findings' differences exceed it: {named}"
        else:
            text += f"none of the {len(findings)} findings' differences exceeds it"
        parts.append(text)
    pooled_from = ", ".join(f"{g.label} ({len(g.runs)} seeds)" for g in seeded)
    over = "group" if len(seeded) == 1 else "groups"
    pairs = "" if len(parts) == 1 else f", each of the {len(parts)} pairs of groups"
    return f"Against the seed spread (SD pooled over {over} {pooled_from}){pairs}: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- the comparison


@dataclass
class RunsComparison:
    """Two or more runs on the same films: per-run AUROCs, each run against the reference, settings and seeds."""

    runs: list[ComparedRun]
    split: str
    per_run: pd.DataFrame  # run, finding (then mean), auroc, ci_low, ci_high, positives, negatives, n_resamples
    pairs: dict[str, AurocComparison]  # run name -> the run against the reference (table columns: _PAIR_COLUMNS)
    settings_table: pd.DataFrame
    facts_table: pd.DataFrame
    groups: list[SeedGroup]
    spread: pd.DataFrame
    between: pd.DataFrame
    settings: dict[str, Any]
    images: int
    patients: int
    findings: list[str] = field(default_factory=list)  # the findings in every mean
    clusters: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> ComparedRun:
        return self.runs[0]

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    @property
    def synthetic(self) -> bool:
        return any(run.synthetic for run in self.runs)

    @property
    def data_source(self) -> str:
        sources = list(dict.fromkeys(str(run.record.get("data_description", "")) for run in self.runs))
        return "; ".join(s for s in sources if s)

    @property
    def confidence(self) -> float:
        return float(self.settings["confidence"])

    @property
    def spread_sentence(self) -> str:
        return spread_sentence(self.groups, self.between)

    def pair_table(self, name: str) -> pd.DataFrame:
        """Run ``name`` against the reference: per finding (then ``mean``) both AUROCs, the difference, p-values."""
        return self.pairs[name].table.rename(columns=_PAIR_COLUMNS)

    def mean_difference(self, name: str) -> dict[str, Any]:
        row = self.pair_table(name).loc[MEAN_ROW]
        return files.plain({"run": name, "reference": self.reference.name, "difference": row["difference"],
                            "ci_low": row["diff_ci_low"], "ci_high": row["diff_ci_high"],
                            "auroc_run": row["auroc_run"], "auroc_reference": row["auroc_reference"],
                            "confidence": self.confidence, "findings": list(self.pairs[name].mean_over)})

    @property
    def caveats(self) -> list[str]:
        caveats = ["p-values use the patient-clustered DeLong variance and intervals resample patients: a patient's "
                   "films are not independent evidence. Holm and Benjamini-Hochberg adjust within each run's "
                   "comparison with the reference, across its findings."]
        if self.split != "test":
            caveats.append(f"The {self.split} split is not held out: the best epoch (and, on val, the thresholds) "
                           "were chosen on it, so every figure is optimistic.")
        if not any(group.has_spread for group in self.groups):
            caveats.append("No recipe was trained with two or more seeds: a difference between runs mixes the "
                           "recipe's effect with seed-to-seed variation, which the intervals here (resampling "
                           "patients, with each run's weights fixed) do not include.")
        if self.synthetic:
            caveats.append("SYNTHETIC phantoms: these runs were trained and scored on rendered films; no figure "
                           "says anything about real chest X-rays.")
        return caveats

    @property
    def headline(self) -> str:
        parts = []
        for name in self.pairs:
            mean = self.mean_difference(name)
            if mean["difference"] is None:
                parts.append(f"{name} - {self.reference.name}: no finding scored")
                continue
            ci = (f" [{self.confidence:.0%} CI {mean['ci_low']:+.3f}, {mean['ci_high']:+.3f}]"
                  if mean["ci_low"] is not None else "")
            parts.append(f"mean AUROC {name} - {self.reference.name} {mean['difference']:+.3f}{ci}")
        return f"{'; '.join(parts)} ({self.split}, n={self.images:,} films, {len(self.findings)} findings)"

    def to_document(self) -> dict[str, Any]:
        """``runs_compared.json``: every table the report shows, plain JSON."""
        return files.plain({
            "kind": "runs compared",
            "status": "ok",
            "headline": self.headline,
            "created": dt.datetime.now().isoformat(timespec="seconds"),
            "split": self.split,
            "reference": self.reference.name,
            "runs": [{"name": run.name, "run_dir": run.run_dir, "predictions": run.predictions_file,
                      "seed": run.seed, "synthetic": run.synthetic,
                      "data_source": run.record.get("data_description")} for run in self.runs],
            "synthetic": self.synthetic,
            "data_source": self.data_source,
            "images": self.images,
            "patients": self.patients,
            "findings_in_mean": self.findings,
            "clusters": self.clusters,
            "settings": self.settings,
            "per_run": self.per_run,
            "differences": {name: {"per_finding": self.pair_table(name).drop(index=MEAN_ROW).reset_index(),
                                   "mean": self.mean_difference(name),
                                   "p_values": {f: {"delong": r["p_value"], "holm": r["p_holm"], "bh": r["p_bh"]}
                                                for f, r in self.pair_table(name).drop(index=MEAN_ROW).iterrows()},
                                   "delong_clusters": self.pairs[name].delong_clusters}
                            for name in self.pairs},
            "settings_differences": {setting: dict(zip(self.settings_table.columns, values))
                                     for setting, values in self.settings_table.iterrows()},
            "facts_differences": {fact: dict(zip(self.facts_table.columns, values))
                                  for fact, values in self.facts_table.iterrows()},
            "seed_groups": [{"label": g.label, "runs": g.runs, "seeds": g.seeds, "settings": g.settings,
                             "title": g.title} for g in self.groups],
            "seed_spread": self.spread,
            "between_groups": self.between,
            "spread_rule": f"every pair of groups: |difference| > {SPREAD_FACTOR:g} x pooled seed SD x "
                           "sqrt(1/n1 + 1/n2)",
            "spread_sentence": self.spread_sentence,
            "history": {run.name: None if run.history is None else
                        run.history[[c for c in HISTORY_COLUMNS if c in run.history.columns]]
                        for run in self.runs},
            "caveats": self.caveats,
        })

    def summary_facts(self, comparison_json: Path, report_copy: Path | None = None) -> dict[str, Any]:
        """The keyword arguments for ``cxrutils.summary.write_summary``.

        ``comparison_json``: the saved comparison (in runs/comparisons/); ``report_copy``: its copy in the notebook's
        output folder (``copy_beside_report``), which the index of reports links (``result_json``, by file name).
        """
        copy = {"result_json": Path(report_copy).name} if report_copy is not None else {}
        return {"headline": self.headline, "data_source": self.data_source, "synthetic": self.synthetic,
                "comparison_json": str(comparison_json), **copy, "runs": self.names, "split": self.split,
                "mean_auroc_difference": {name: self.mean_difference(name) for name in self.pairs},
                "spread_sentence": self.spread_sentence}


def _aligned(run: ComparedRun, images: pd.Series) -> pd.DataFrame:
    """The run's predictions in the reference's film order (so every run is bootstrapped on the same resamples)."""
    return run.predictions.set_index("image").loc[images.to_numpy()].reset_index()


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
) -> RunsComparison:
    """Compare two or more finished runs, each evaluated on ``split``; the first is the reference.

    Raises ``PredictionsMissingError`` for a run not evaluated on ``split`` (or evaluated
    before its best checkpoint changed), and ``FilmsDifferError`` when the runs scored
    different films, or gave a film another patient or label.
    """
    if isinstance(run_dirs, (str, os.PathLike)) or len(run_dirs) < 2:
        raise RunsNotComparableError(f"compare at least two runs; got {run_dirs!r}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    folders = [run_folder.finished_run_dir(path) for path in run_dirs]
    repeated = sorted({folder.name for folder in folders if [f.name for f in folders].count(folder.name) > 1})
    if repeated:
        raise RunsNotComparableError(f"runs are named by their folder, and {repeated} appear more than once ({folders}): give each "
                         "run once, and rename (or copy) a run whose folder name another run shares")
    runs = [read_compared_run(folder, split) for folder in folders]
    check_same_films(runs, split)
    reference = runs[0].predictions.reset_index(drop=True)
    images = reference["image"]
    labels = reference[list(FINDINGS)].to_numpy()
    patient_ids = reference["patient_id"].to_numpy()

    frames, in_mean = [], []
    for run in runs:
        aligned = _aligned(run, images)
        table = bootstrap_auroc(labels, aligned[[probability_column(f) for f in FINDINGS]].to_numpy(dtype=np.float64),
                                patient_ids, n_resamples=n_bootstrap, seed=bootstrap_seed, confidence=confidence,
                                class_names=list(FINDINGS))
        in_mean = list(table.attrs["mean_over"])  # the same for every run: the same films and labels
        frames.append(table.reset_index().assign(run=run.name))
    per_run = pd.concat(frames, ignore_index=True)[["run", "finding", "auroc", "ci_low", "ci_high", "positives",
                                                    "negatives", "n_resamples"]]

    pairs = {}
    for run in runs[1:]:
        paired = pair_predictions(_aligned(run, images), reference, names={OURS: run.name, TXV: runs[0].name})
        pairs[run.name] = compare_auroc(paired, n_resamples=n_bootstrap, seed=bootstrap_seed, confidence=confidence)

    groups = seed_groups(runs)
    figures = [f for f in FINDINGS if f in in_mean] + [MEAN_ROW]
    spread = seed_spread(per_run, groups, figures)
    settings = {"split": split, "n_bootstrap": n_bootstrap, "bootstrap_seed": bootstrap_seed,
                "confidence": confidence, "reference": runs[0].name}
    facts = cluster_facts(reference)
    return RunsComparison(runs=runs, split=split, per_run=per_run, pairs=pairs,
                          settings_table=settings_differences(runs), facts_table=facts_differences(runs),
                          groups=groups, spread=spread, between=between_groups(spread, groups), settings=settings,
                          images=len(reference), patients=int(reference["patient_id"].nunique()),
                          findings=[f for f in FINDINGS if f in in_mean], clusters=facts.to_document())


# --------------------------------------------------------------------------- where it is written


def comparison_name(run_dirs: Sequence[str | os.PathLike[str]], name: str | None = None) -> str:
    """The comparison folder's name: ``name`` when given (letters, digits, ``.``, ``-``, ``_``; else an error),
    otherwise the runs' folder names joined by ``-vs-``, any other character as ``_`` (long ones cut, with a hash)."""
    if name is not None:
        if not SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"comparison name {name!r}: use letters, digits, '.', '-' and '_' only (at most 100, "
                             "starting with a letter or digit); it becomes a folder name and part of a link")
        return name
    names = [Path(os.fspath(path)).name for path in run_dirs]
    safe = "-vs-".join(re.sub(r"[^A-Za-z0-9._-]", "_", n).lstrip("._-") or "run" for n in names)
    if len(safe) > 100 or not SAFE_NAME.fullmatch(safe):
        digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:10]
        safe = f"{safe[:80].rstrip('._-') or 'runs'}-{digest}"
    return safe


def comparison_dir(run_dirs: Sequence[str | os.PathLike[str]], name: str | None = None,
                   out: str | os.PathLike[str] | None = None) -> Path:
    """``out`` when given, else ``<the first run's parent>/comparisons/<comparison_name>`` (``runs/comparisons/...``)."""
    if out is not None:
        return resolve(out)
    return resolve(run_dirs[0]).parent / COMPARISONS_FOLDER / comparison_name(run_dirs, name)


def write_runs_comparison(result: RunsComparison, folder: str | os.PathLike[str]) -> Path:
    """Save the result as ``folder/runs_compared.json`` (atomically); the folder is made when missing."""
    target = resolve(folder)
    target.mkdir(parents=True, exist_ok=True)
    return files.write_json(target / COMPARISON_JSON, result.to_document())


def copy_beside_report(saved: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """``output_dir/runs_compared.json``: the saved comparison beside its report, where the index of reports links it.

    The reports folder is read and shared without the runs folder, so its links stay inside
    it. A hard link where the file system allows (else a copy): a later ``compare-runs``
    that rewrites the original makes a new file, and this one stays what the report showed.
    """
    target = resolve(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    return files.atomic_same_file(resolve(saved), target / COMPARISON_JSON)

"""How notebook 06 shows runs compared (``cxrutils.compare.runs.RunsComparison``): banners, tables, figures.

Nothing here computes a statistic: every number comes from the result. Run names are
folder names and may hold anything: tables escape them (``display.table``), boxes
through ``html_text``, figures through ``figure_text``; none goes through Markdown.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import HTML
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from cxrutils.compare.runs import SPREAD_FACTOR, RunsComparison
from cxrutils.labels import FINDINGS
from cxrutils.show.banners import SYNTHETIC_TEXT
from cxrutils.show.display import box, interval_text, p_text, table
from cxrutils.show.plots import draw_differences
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.text import figure_text, html_text

SYNTHETIC_SUFFIX = " (SYNTHETIC phantoms)"


def _suffix(result: RunsComparison) -> str:
    return SYNTHETIC_SUFFIX if result.synthetic else ""


def data_banner(result: RunsComparison) -> HTML:
    """A red banner when any run was trained on phantoms, a neutral one naming the data otherwise."""
    source = html_text(result.data_source)
    if result.synthetic:
        return box(f"<b>{html_text(SYNTHETIC_TEXT)}</b><br><small>{source}</small>", "red")
    return box(f"<b>Data:</b> {source}", "neutral")


def caveats_box(result: RunsComparison) -> HTML:
    items = "".join(f"<li>{html_text(c)}</li>" for c in result.caveats)
    return box(f"<b>Read this comparison with these caveats:</b><ul>{items}</ul>", "amber")


def runs_display(result: RunsComparison) -> Styler:
    """One row per run: its folder, seed, the predictions read, and its data (the reference first)."""
    rows = pd.DataFrame({
        "role": ["reference" if k == 0 else "compared with the reference" for k in range(len(result.runs))],
        "run folder": [str(run.run_dir) for run in result.runs],
        "seed": [run.seed for run in result.runs],
        "predictions": [run.predictions_file for run in result.runs],
        "epochs trained": [len(run.history) if run.history is not None else None for run in result.runs],
        "data": [str(run.record.get("data_description", "")) for run in result.runs],
    }, index=pd.Index(result.names, name="run"))
    return table(rows, formats={"seed": str, "epochs trained": str})


def films_sentence(result: RunsComparison) -> HTML:
    facts = result.clusters
    per_patient = facts.get("films_per_patient", {}) if isinstance(facts, dict) else {}
    mean = per_patient.get("mean")
    more = f" ({mean:.1f} films per patient on average)" if isinstance(mean, (int, float)) else ""
    return box(f"Every run scored the same {result.images:,} {html_text(result.split)} films of {result.patients:,} "
               f"patients{more}, with the same labels: the comparison is paired film by film.", "green")


def settings_display(result: RunsComparison) -> Styler | HTML:
    """The training settings that differ between the runs, as config.json records them."""
    if result.settings_table.empty:
        return box("The runs' training settings are identical (names and folders aside).", "neutral")
    return table(result.settings_table, formats={name: _as_written for name in result.settings_table.columns},
                 caption="Training settings that differ (config.json of each run; names and folders left out)")


def facts_display(result: RunsComparison) -> Styler | HTML:
    """What config.json records about the data, code and machine, where it differs between the runs."""
    if result.facts_table.empty:
        return box("Same data, image cache, code commit and software in every run's config.json.", "neutral")
    return table(result.facts_table, formats={name: _as_written for name in result.facts_table.columns},
                 caption="Recorded facts that differ: not settings, but they can change the numbers")


def _as_written(value: object) -> str:
    return str(value)


def per_run_display(result: RunsComparison) -> Styler:
    """Finding (then mean) x run: the test AUROC with its patient-bootstrap interval."""
    wide = {}
    for name in result.names:
        rows = result.per_run[result.per_run["run"] == name].set_index("finding")
        wide[name] = [interval_text(*rows.loc[f, ["auroc", "ci_low", "ci_high"]]) or "not scored"
                      for f in [*FINDINGS, MEAN_ROW]]
    first = result.per_run[result.per_run["run"] == result.names[0]].set_index("finding")
    frame = pd.DataFrame(wide, index=pd.Index([*FINDINGS, MEAN_ROW], name="finding"))
    frame.insert(0, "positives", first["positives"].reindex(frame.index))
    return table(frame, caption=f"AUROC [{result.confidence:.0%} CI, patient bootstrap] of each run on the same "
                                f"{result.split} films; the mean averages {len(result.findings)} findings")


def difference_display(result: RunsComparison, name: str) -> Styler:
    """Run ``name`` against the reference: both AUROCs, the difference with its paired interval, DeLong p, Holm, BH."""
    scores = result.pair_table(name)
    level = f"{result.confidence:.0%} CI"
    shown = pd.DataFrame({
        "positives": scores["positives"],
        f"{name} AUROC [{level}]": [interval_text(*r) for r in
                                    scores[["auroc_run", "run_ci_low", "run_ci_high"]].itertuples(index=False)],
        f"{result.reference.name} AUROC [{level}]": [
            interval_text(*r) for r in scores[["auroc_reference", "reference_ci_low",
                                               "reference_ci_high"]].itertuples(index=False)],
        f"difference [{level}]": [interval_text(*r, signed=True) for r in
                                  scores[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "DeLong p": scores["p_value"].map(p_text),
        "Holm p": scores["p_holm"].map(p_text),
        "BH p": scores["p_bh"].map(p_text),
        "note": scores["note"],
    }, index=scores.index)
    return table(shown, caption=f"{name} minus {result.reference.name} (the reference), paired on the same films")


def mean_difference_box(result: RunsComparison, name: str) -> HTML:
    mean = result.mean_difference(name)
    if mean["difference"] is None:
        return box(f"No finding could be scored for {html_text(name)}.", "amber")
    text = interval_text(mean["difference"], mean["ci_low"], mean["ci_high"], signed=True)
    side = "higher" if mean["ci_low"] is not None and mean["ci_low"] > 0 else (
        "lower" if mean["ci_high"] is not None and mean["ci_high"] < 0 else None)
    verdict = (f"the interval excludes 0: {html_text(name)} is {side} on average" if side else
               "the interval includes 0: no mean difference is shown")
    return box(f"<b>Mean AUROC, {html_text(name)} minus {html_text(result.reference.name)}: {text}</b> "
               f"({result.confidence:.0%} paired patient-bootstrap CI over {len(mean['findings'])} findings); "
               f"{verdict}.", "neutral")


def difference_forest(result: RunsComparison, name: str) -> Figure:
    """Each finding's AUROC difference (run minus reference) with its paired interval, the mean last, Holm p beside."""
    rows = result.pair_table(name).reset_index()
    positions = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.8))
    draw_differences(ax, rows, positions)
    ax.set_yticks(positions, [f"{f} ({int(p)}+)" if pd.notna(p) else str(f)
                              for f, p in zip(rows["finding"], rows["positives"])])
    transform = ax.get_yaxis_transform()
    for y, row in zip(positions, rows.itertuples()):
        text = ("" if pd.isna(row.p_holm) else f"p(Holm) {row.p_holm:.2g}") if pd.notna(row.difference) \
            else (row.note or "not scored")
        ax.text(1.02, y, text, transform=transform, fontsize=7, va="center")
    run, reference = figure_text(name), figure_text(result.reference.name)
    ax.set_xlabel(f"AUROC difference, {run} minus {reference} (> 0: {run} higher)", fontsize=8)
    title = (f"AUROC difference with {result.confidence:.0%} paired patient-bootstrap CI, "
             f"{result.split} films{_suffix(result)}")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9,
                 color="#b00020" if result.synthetic else "black")
    fig.tight_layout()
    return fig


def training_curves(result: RunsComparison) -> Figure:
    """Every run's training and validation loss and mean validation AUROC per epoch, overlaid; best epochs marked."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    palette = sns.color_palette("tab10", len(result.runs))
    panels = (("train_loss", "Training loss"), ("val_loss", "Validation loss"),
              ("val_auroc_mean", "Mean validation AUROC"))
    for color, run in zip(palette, result.runs):
        history = run.history
        if history is None:
            continue
        for ax, (column, _) in zip(axes, panels):
            if column in history.columns:
                ax.plot(history["epoch"], history[column], marker="o", ms=3, color=color,
                        label=figure_text(run.name))
        if "val_auroc_mean" in history.columns and history["val_auroc_mean"].notna().any():
            best = history.loc[history["val_auroc_mean"].idxmax()]
            axes[2].plot(best["epoch"], best["val_auroc_mean"], marker="*", ms=12, color=color)
    for ax, (_, title) in zip(axes, panels):
        ax.set(title=title + _suffix(result), xlabel="epoch")
        if result.synthetic:
            ax.title.set_color("#b00020")
    axes[2].legend(fontsize=8, loc="lower right")
    fig.suptitle("Training curves of each run (star: the best epoch, whose checkpoint was evaluated)", fontsize=10)
    fig.tight_layout()
    return fig


def history_missing(result: RunsComparison) -> HTML:
    missing = [run.name for run in result.runs if run.history is None]
    if not missing:
        return HTML("")
    return box("No history.json in run(s) " + html_text(", ".join(missing)) + ": their curves are not drawn.")


def seed_groups_display(result: RunsComparison) -> Styler:
    """One row per seed group: its runs, their seeds, and the settings that set it apart."""
    rows = pd.DataFrame({
        "runs": [", ".join(group.runs) for group in result.groups],
        "seeds": [", ".join(str(seed) for seed in group.seeds) for group in result.groups],
        "settings that set it apart": [", ".join(f"{k}={v}" for k, v in group.settings.items()) or "(one recipe)"
                                       for group in result.groups],
    }, index=pd.Index([group.label for group in result.groups], name="group"))
    return table(rows)


def seed_spread_display(result: RunsComparison) -> Styler:
    """Finding x group: mean ± SD across seeds, their range, and the single runs' mean interval width beside."""
    columns = {}
    for group in result.groups:
        rows = result.spread[result.spread["group"] == group.label].set_index("finding")
        label = f"group {group.label} ({len(group.runs)} run{'s' if len(group.runs) > 1 else ''})"
        columns[(label, "mean ± SD across seeds")] = [
            f"{r['mean']:.3f} ± {r['sd']:.3f}" if pd.notna(r["sd"]) else f"{r['mean']:.3f} (one run)"
            for _, r in rows.iterrows()]
        columns[(label, "range")] = [f"{r['min']:.3f} – {r['max']:.3f}" if r["runs"] > 1 else "—"
                                     for _, r in rows.iterrows()]
        columns[(label, f"single-run {result.confidence:.0%} CI width")] = [
            f"{r['single_run_ci_width']:.3f}" if pd.notna(r["single_run_ci_width"]) else "—"
            for _, r in rows.iterrows()]
        index = rows.index
    frame = pd.DataFrame(columns, index=pd.Index(index, name="finding"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return table(frame, caption="Test AUROC across seeds: the seed spread beside the width of one run's interval")


def between_display(result: RunsComparison) -> Styler | HTML:
    """Every pair of groups (B - A, C - A, C - B, ...): the difference of group means, twice its seed SE, the verdict."""
    if result.between.empty:
        return HTML("")
    shown = result.between.copy()
    shown["verdict"] = shown["exceeds_spread"].map({True: "exceeds the seed spread", False: "within the seed spread",
                                                    None: "unknown: no group has two seeds"})
    shown["groups"] = [f"{group} minus {other}" for group, other in zip(shown["group"], shown["other_group"])]
    shown = shown.set_index(["groups", "finding"])[["difference", "threshold", "verdict"]]
    shown = shown.rename(columns={"difference": "difference of group means",
                                  "threshold": f"{SPREAD_FACTOR:g} x seed SE"})
    return table(shown, caption="Every pair of groups, the later minus the earlier, against the seed spread")


def spread_box(result: RunsComparison) -> HTML:
    return box(html_text(result.spread_sentence), "blue")


def saved_box(result: RunsComparison, path: object) -> HTML:
    return box(f"Saved <code>{html_text(path)}</code>. <b>{html_text(result.headline)}</b>", "green")

"""Notebook 07's display: an ``ExternalValidation`` (``compare.external_validation``) as banners, tables, figures.

Nothing here computes a statistic. Every figure drawn from phantom films (or from a run
trained on phantoms) says SYNTHETIC in its title, and every table caption after it; a
TorchXRayVision model built with random weights carries ``RANDOM_INIT_LABEL`` in its name.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML
from matplotlib.figure import Figure

from cxrutils.compare.external_validation import ExternalValidation
from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.evaluate.external_localization import ALL_ROW, SYNTHETIC_NOTE
from cxrutils.labels import FINDINGS
from cxrutils.show.display import box, note, table
from cxrutils.text import figure_text, html_text

SYNTHETIC_EXTERNAL_TEXT = (
    "SYNTHETIC DATA. The external films here are rendered phantoms in the collection's real folder layout (its "
    "metadata rows and labels are the real shipped ones), scored by a run trained on phantoms. No figure here says "
    "anything about how a model does on real patients of another hospital.")
SYNTHETIC_MARK = " (SYNTHETIC phantoms)"
SHOWN_LIMIT = 20  # rows of a listing of films shown; the JSON holds them all


def _mark(result: ExternalValidation) -> str:
    return SYNTHETIC_MARK if result.synthetic else ""


def data_banner(result: ExternalValidation) -> HTML:
    """Red for phantoms; the collection, its root and the run otherwise. Random TorchXRayVision weights in amber."""
    films = result.evaluation.films
    where = html_text(f"{result.collection} at {films.root}; run {result.evaluation.run_dir}")
    parts = []
    if result.synthetic:
        parts.append(box(f"<b>{html_text(SYNTHETIC_EXTERNAL_TEXT)}</b><br><small>{where}</small>", "red").data)
    else:
        parts.append(box(f"<b>External data:</b> {where}", "neutral").data)
    if result.random_txv and len(result.models) > 1:
        parts.append(box(f"<b>{html_text(RANDOM_INIT_LABEL)}</b>: the TorchXRayVision models below have random "
                         "weights (a test of the pipeline, not of the models).", "amber").data)
    if not result.evaluation.provenance["external"]:
        parts.append(box(f"<b>Not external for this run.</b> {html_text(result.evaluation.provenance['why'])}",
                         "amber").data)
    return HTML("".join(parts))


def films_display(result: ExternalValidation) -> Any:
    """Listed, frontal, present, missing, refused and scored films; views left out."""
    evaluation = result.evaluation
    summary = evaluation.films.summary()
    facts = pd.Series({
        "frontal films listed": summary["films"], "with a file": summary["present"],
        "listed, no file (missing)": summary["missing"], "something else at the path": summary["not_regular_files"],
        "chosen (max_films: whole patients)": evaluation.sampled["chosen_films"],
        "refused (did not decode)": len(evaluation.refused), "scored": len(evaluation.predictions),
        "patients scored": evaluation.predictions["patient_id"].nunique(),
        **{f"left out as not frontal: {view}": count for view, count in summary["dropped_views"].items()},
    }, name="films", dtype=object)
    return table(facts, caption=f"{result.collection}: the films{_mark(result)}")


def problems_display(result: ExternalValidation) -> Any:
    """Missing and refused films with their reasons (the first ``SHOWN_LIMIT``); a note when there are none."""
    evaluation = result.evaluation
    listing = pd.concat([evaluation.missing.assign(kind="missing"), evaluation.refused.assign(kind="refused")],
                        ignore_index=True)
    if listing.empty:
        return note("Every chosen film was found and decoded.", "green")
    caption = (f"{len(listing):,} films not scored (missing: {len(evaluation.missing):,}, refused: "
               f"{len(evaluation.refused):,}); the first {min(SHOWN_LIMIT, len(listing))} shown, all in external.json")
    return table(listing.head(SHOWN_LIMIT)[["kind", "film", "path", "reason"]], caption=caption, index=False)


def label_map_display(result: ExternalValidation) -> Any:
    label_map = result.evaluation.films.label_map
    options = result.evaluation.films.options
    caption = (f"{result.collection}'s labels as the 14 NIH findings (labels from {label_map.labels_from}; "
               f"uncertain policy {options.uncertain!r}, min_readers {options.min_readers})")
    return table(label_map.table().set_index("finding"), caption=caption)


def not_available_display(result: ExternalValidation) -> Any:
    missing = result.evaluation.not_available
    if missing.empty:
        return note(f"{result.collection} labels all 14 NIH findings.", "green")
    return table(missing.set_index("finding"), caption=f"Not available in {result.collection}, and why")


def findings_display(result: ExternalValidation) -> Any:
    """Per mapped finding: prevalence at home and away, AUROC at home and away, and the drop, each with its interval."""
    findings = result.evaluation.findings
    mapped = findings[findings["status"] == "mapped"]
    columns = {"home_prevalence": "home prevalence", "away_prevalence": "away prevalence",
               "home_auroc": "home AUROC", "home_ci_low": "home AUROC ci_low", "home_ci_high": "home AUROC ci_high",
               "away_auroc": "away AUROC", "away_ci_low": "away AUROC ci_low", "away_ci_high": "away AUROC ci_high",
               "drop": "drop", "drop_ci_low": "drop ci_low", "drop_ci_high": "drop ci_high",
               "away_positives": "away positives", "away_negatives": "away negatives", "away_excluded": "excluded"}
    shown = mapped.reindex(columns=list(columns)).rename(columns=columns)
    caption = ("The run at home (its NIH test films) and away: patient-bootstrap intervals, drawn independently on "
               f"each side; the drop is home - away{_mark(result)}")
    return table(shown, caption=caption)


def home_note(result: ExternalValidation) -> HTML:
    return note(result.evaluation.home_note)


def provenance_display(result: ExternalValidation) -> Any:
    rows = [{"model": m.display_name, "verdict": "external" if m.external else "not external", "why": m.why,
             "mapped findings it scores": len(m.findings)} for m in result.models.values()]
    rows += [{"model": f"TorchXRayVision {m.model}", "verdict": "weights missing: skipped",
              "why": f"put {m.weights_file} into {m.folder} (from {m.url})", "mapped findings it scores": 0}
             for m in result.missing_weights]
    return table(pd.DataFrame(rows).set_index("model"),
                 caption=f"Each model on {result.collection}: external only where it never trained on these films")


def headline_box(result: ExternalValidation) -> HTML:
    lead = result.headline_txv
    text = (f"Headline TorchXRayVision model: {result.models[lead].display_name} (external here)." if lead else
            "No TorchXRayVision model here is external on this collection (or none loaded): none is the headline.")
    return note(text, "blue")


def home_vs_away_display(result: ExternalValidation) -> Any:
    long = result.home_vs_away()
    if long.empty:
        return note("No model scored a mapped finding.")
    shown = long.set_index(["model", "finding"])[["verdict", "home_auroc", "home_ci_low", "home_ci_high",
                                                  "away_auroc", "away_ci_low", "away_ci_high", "drop", "drop_ci_low",
                                                  "drop_ci_high"]]
    return table(shown, caption=f"Home (NIH test films) against away ({result.collection}), per model{_mark(result)}")


def comparisons_display(result: ExternalValidation) -> Any:
    frame = result.comparisons
    if frame.empty:
        return note("No TorchXRayVision model was scored, so there is no paired comparison.")
    shown = frame.set_index(["model", "finding"])[["films", "auroc_run", "auroc_model", "difference", "diff_ci_low",
                                                   "diff_ci_high", "p_value", "p_holm", "drop_difference",
                                                   "drop_diff_ci_low", "drop_diff_ci_high", "verdict"]]
    caption = ("The run minus each model on the same away films (paired patient bootstrap; DeLong's paired test, "
               "patient-clustered, Holm over each model's findings); drop difference: the run's drop minus the "
               f"model's{_mark(result)}")
    return table(shown, caption=caption, signed=True)


def operating_display(result: ExternalValidation) -> Any:
    operating = result.evaluation.operating
    if operating.empty:
        return note("No mapped finding has labelled films to threshold.")
    return table(operating, caption=f"At the run's validation thresholds ({result.evaluation.threshold_method}, chosen "
                                    f"on NIH validation films, not on these){_mark(result)}")


def calibration_display(result: ExternalValidation) -> Any:
    calibration = result.evaluation.calibration
    if calibration.empty:
        return note("No mapped finding has both positive and negative films: no calibration.")
    figures = ["observed_expected", "slope", "ece", "brier"]
    columns = [c for f in figures for c in (f, f"{f}_ci_low", f"{f}_ci_high")] + ["prevalence", "films"]
    shown = calibration[[c for c in columns if c in calibration.columns]]
    return table(shown, caption="Calibration away: observed/expected (below 1 over-predicts), slope, equal-mass ECE, "
                                f"Brier, with patient-bootstrap intervals{_mark(result)}")


def subgroups_display(result: ExternalValidation) -> Any:
    subgroups = result.evaluation.subgroups
    scored = subgroups[subgroups["auroc"].notna()] if not subgroups.empty else subgroups
    if scored.empty:
        return note(f"No subgroup has {result.evaluation.subgroup_min_positive_patients} patients with a positive "
                    "film for any finding: no subgroup figure (exploratory in any case).")
    shown = scored.set_index(["subgroup", "value", "finding"])[["auroc", "ci_low", "ci_high", "images", "patients",
                                                                "positive_patients"]]
    return table(shown, caption=("Subgroups by the collection's own sex, age band and view; a cell needs "
                                 f"{result.evaluation.subgroup_min_positive_patients} patients with a positive film. "
                                 f"Exploratory: no adjustment for multiplicity{_mark(result)}"))


# --------------------------------------------------------------------------- figures


def home_away_figure(result: ExternalValidation) -> Figure:
    """Per mapped finding, each model's AUROC at home (hollow) and away (filled) with its interval."""
    long = result.home_vs_away()
    findings = [f for f in FINDINGS if not long.empty and f in set(long["finding"])]
    models = list(dict.fromkeys(long["model"])) if not long.empty else []
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(findings), 1) + 1.6))
    colors = plt.get_cmap("tab10")
    step = 0.7 / max(len(models), 1)
    for j, model in enumerate(models):
        rows = long[long["model"] == model].set_index("finding").reindex(findings)
        y = np.arange(len(findings)) + (j - (len(models) - 1) / 2) * step
        for side, marker, fill in (("home", "o", "none"), ("away", "o", None)):
            values = rows[f"{side}_auroc"].to_numpy(dtype=float)
            low = values - rows[f"{side}_ci_low"].to_numpy(dtype=float)
            high = rows[f"{side}_ci_high"].to_numpy(dtype=float) - values
            ax.errorbar(values, y, xerr=[np.nan_to_num(low), np.nan_to_num(high)], fmt=marker, color=colors(j),
                        mfc=fill or colors(j), ms=5, lw=1, capsize=2,
                        label=figure_text(f"{model}: {side}") if np.isfinite(values).any() else None)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(findings)), [figure_text(f) for f in findings])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC (95% patient-bootstrap interval)")
    ax.set_title(figure_text(f"Home (NIH test films, hollow) and away ({result.collection}, filled){_mark(result)}"),
                 color="#b00020" if result.synthetic else "black")
    if models:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    fig.tight_layout()
    return fig


def prevalence_figure(result: ExternalValidation) -> Figure:
    """Each mapped finding's prevalence at home and away, side by side."""
    findings = result.evaluation.findings
    mapped = findings[findings["status"] == "mapped"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(mapped), 1) + 1.4))
    y = np.arange(len(mapped))
    ax.barh(y - 0.2, mapped["home_prevalence"].to_numpy(dtype=float), height=0.4, label="home (NIH test films)",
            color="#4c72b0")
    ax.barh(y + 0.2, mapped["away_prevalence"].to_numpy(dtype=float), height=0.4,
            label=figure_text(f"away ({result.collection})"), color="#dd8452")
    ax.set_yticks(y, [figure_text(f) for f in mapped.index])
    ax.invert_yaxis()
    ax.set_xlabel("share of films with the finding (among films labelled for it)")
    ax.set_title(figure_text(f"Prevalence at home and away{_mark(result)}"),
                 color="#b00020" if result.synthetic else "black")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- localization


def _localization(result: ExternalValidation) -> Any:
    return result.evaluation.localization


def localization_available(result: ExternalValidation) -> bool:
    """Whether the evaluation scored Grad-CAM against regions (the tables and figures below have something to show)."""
    located = _localization(result)
    return located is not None and located.available


def localization_note(result: ExternalValidation) -> HTML:
    """Why there is no localization; or the rule the regions follow, and SYNTHETIC on phantoms."""
    located = _localization(result)
    if located is None:
        return note("Localization was not computed for this evaluation.")
    if not located.available:
        return note(f"No localization on {result.collection}: {located.reason}.", "neutral")
    parts = [f"Regions: {located.rule}."]
    if located.synthetic:
        parts.insert(0, SYNTHETIC_NOTE)
    return note(" ".join(parts), "red" if located.synthetic else "blue")


def localization_display(result: ExternalValidation) -> Any:
    """Per finding (and all regions) and score: Grad-CAM, random heatmaps, and Grad-CAM - random, with intervals."""
    located = _localization(result)
    if located is None or not located.available:
        return note("No localization table.", "neutral")
    frame = located.table.rename(columns={"gradcam": "Grad-CAM", "ci_low": "Grad-CAM ci_low",
                                          "ci_high": "Grad-CAM ci_high", "random": "random heatmaps",
                                          "difference": "Grad-CAM - random",
                                          "difference_ci_low": "Grad-CAM - random ci_low",
                                          "difference_ci_high": "Grad-CAM - random ci_high"})
    shown = frame.set_index(["finding", "label"])[["regions", "patients", "Grad-CAM", "Grad-CAM ci_low",
                                                   "Grad-CAM ci_high", "random heatmaps", "Grad-CAM - random",
                                                   "Grad-CAM - random ci_low", "Grad-CAM - random ci_high"]]
    settings = located.settings
    caption = (f"Grad-CAM ({settings['gradcam_layer']}, {settings['gradcam_grid']}x{settings['gradcam_grid']} grid, "
               f"binarised at {settings['heatmap_threshold']:g}) against {result.collection}'s regions: pointing game, "
               f"T(IoBB) and T(IoU) accuracy; random heatmaps: {settings['random_baseline']['repeats']} per region; "
               f"patient-bootstrap intervals, Grad-CAM - random paired{_mark(result)}")
    return table(shown, caption=caption)


def localization_counts_display(result: ExternalValidation) -> Any:
    """How the regions read became the regions scored: the cap, and every region set apart, by reason."""
    located = _localization(result)
    if located is None or not located.available:
        return note("No regions were scored.", "neutral")
    sampled, counts = located.sampled, located.counts
    facts = {
        "regions read from the metadata": counts["regions_read"],
        "rows set apart while reading (malformed)": counts["malformed_rows"],
        "regions on films not scored (missing, refused, not chosen)": counts["on_films_not_scored"],
        "regions on films negative for the finding": counts["on_films_negative_for_the_finding"],
        "films with a region (positive, scored)": sampled["films_with_regions"],
        f"films Grad-CAM'd (cap {sampled['max_films']}, whole patients, seed {sampled['seed']})":
            sampled["films_chosen"],
        "regions set apart on the film (did not decode, beyond it, below a pixel)": counts["set_apart_after_reading"],
        "regions scored": counts["regions_scored"],
    }
    reasons = located.set_apart.groupby("reason", sort=True).size() if not located.set_apart.empty else pd.Series()
    facts.update({f"set apart: {reason}": int(n) for reason, n in reasons.items()})
    return table(pd.Series(facts, name="regions", dtype=object),
                 caption=f"{result.collection}: the regions{_mark(result)}")


def localization_figure(result: ExternalValidation) -> Figure:
    """Every score over all regions: Grad-CAM with its interval, random heatmaps beside it."""
    located = _localization(result)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    if located is not None and located.available:
        rows = located.table[located.table["finding"] == ALL_ROW]
        x = np.arange(len(rows))
        values = rows["gradcam"].to_numpy(dtype=float)
        errors = [np.nan_to_num(values - rows["ci_low"].to_numpy(dtype=float)),
                  np.nan_to_num(rows["ci_high"].to_numpy(dtype=float) - values)]
        ax.bar(x - 0.2, values, width=0.4, yerr=errors, capsize=2, color="#4c72b0", label="Grad-CAM")
        ax.bar(x + 0.2, rows["random"].to_numpy(dtype=float), width=0.4, color="#bbbbbb", label="random heatmaps")
        ax.set_xticks(x, [figure_text(label) for label in rows["label"]], rotation=45, ha="right")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of regions (95% patient-bootstrap interval)")
    ax.set_title(figure_text(f"Localization on {result.collection}, all regions{_mark(result)}"),
                 color="#b00020" if result.synthetic else "black")
    fig.tight_layout()
    return fig


def localization_examples_figure(result: ExternalValidation) -> Figure:
    """A few scored films: what the network saw, its Grad-CAM of the finding, the region outlined."""
    located = _localization(result)
    examples = located.examples if located is not None and located.available else []
    fig, axes = plt.subplots(1, max(len(examples), 1), figsize=(2.6 * max(len(examples), 1), 3.0), squeeze=False)
    for ax, example in zip(axes[0], examples):
        ax.imshow(example.pixels, cmap="gray", vmin=0, vmax=1)
        ax.imshow(example.heatmap, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.contour(example.region.astype(float), levels=[0.5], colors="white", linewidths=1)
        hit = "hit" if example.pointing_hit else "miss"
        ax.set_title(figure_text(f"{example.finding} ({hit})\n{example.film[:18]}"), fontsize=7)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(figure_text(f"Grad-CAM and the published regions (white){_mark(result)}"),
                 color="#b00020" if result.synthetic else "black", fontsize=9)
    fig.tight_layout()
    return fig


def saved_box(result: ExternalValidation, saved: Any) -> HTML:
    return note(f"Saved: {saved} (every table above, the label map, each film not scored and why); the scored films' "
                "probabilities beside it in predictions.csv.", "neutral")

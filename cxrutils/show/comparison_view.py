"""How notebook 04 shows a comparison (``cxrutils.compare.run.ComparisonResult``): banners, tables, words.

Nothing here computes a statistic: every number comes from the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd
from IPython.display import HTML, Markdown, display
from pandas.io.formats.style import Styler

from cxrutils.compare.comparison import EXPLORATORY_NOTE
from cxrutils.compare.provenance import headline_model, provenance
from cxrutils.compare.run import (
    ComparisonInputs,
    ComparisonResult,
    LoadedModels,
    ModelComparison,
    enable_instructions,
)
from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.show.display import MISSING, TONES, box, interval_text, note, p_text, table
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.stats.operating import TRANSFER_SENTENCE
from cxrutils.stats.paired import OURS, TXV, side_by_side
from cxrutils.text import html_text


def skipped_section(loaded: LoadedModels) -> HTML:
    """The "Comparison skipped" notice with the missing files, their folders and URLs; empty when none is missing."""
    if not loaded.missing:
        return HTML("")
    rows = "".join(
        f"<tr><td>{html_text(m.model)}</td><td><code>{html_text(m.weights_file)}</code></td>"
        f"<td><code>{html_text(str(m.folder))}</code></td>"
        f"<td><a href='{html_text(m.url)}'>{html_text(m.url)}</a></td></tr>"
        for m in loaded.missing
    )
    steps = "".join(f"<li>{html_text(step)}</li>" for step in enable_instructions(loaded.missing))
    if loaded.skipped:
        title = "Comparison skipped: no TorchXRayVision weights"
        lead = "None of the requested models' weights files is present, so nothing below is computed."
    else:
        title = f"{len(loaded.missing)} model(s) skipped: no weights"
        lead = "These models are left out; the others are compared below."
    return HTML(
        f"<div style='{TONES['amber']}'><h3 style='margin-top:0'>{html_text(title)}</h3><p>{html_text(lead)}</p>"
        "<table><thead><tr><th>model</th><th>weights file</th><th>expected in folder</th><th>download URL</th>"
        f"</tr></thead><tbody>{rows}</tbody></table><p><b>To enable the comparison:</b></p><ol>{steps}</ol>"
        "<p>The test-only switch <code>use_random_txv_weights_for_testing=True</code> runs the pipeline on "
        "random weights; its numbers say nothing about TorchXRayVision.</p></div>"
    )


def caveats_banner(caveats: Sequence[str], random_init: bool) -> HTML:
    """What a reader must know first: the leakage of NIH-trained models into the official test set, and more.

    Shown whether or not the weights are present. With random weights, a red
    banner says so before anything else.
    """
    caveats = list(caveats)
    parts = []
    if random_init:
        parts.append(f"<div style='{TONES['red']}'><b>{html_text(RANDOM_INIT_LABEL)}.</b> Every TorchXRayVision "
                     "number in this report comes from random weights (use_random_txv_weights_for_testing=True), "
                     "for testing the pipeline only.</div>")
        caveats = [c for c in caveats if not c.startswith(RANDOM_INIT_LABEL)]
    items = "".join(f"<li>{html_text(c)}</li>" for c in caveats)
    parts.append(f"<div style='{TONES['amber']}'><b>Read this comparison with these caveats:</b><ul>{items}</ul></div>")
    return HTML("".join(parts))


def cap_note(inputs: ComparisonInputs | None) -> HTML:
    """Says that (and how) the compared films were capped; empty when every film is compared."""
    if inputs is None or not inputs.capped:
        return HTML("")
    parts = [f"{len(frame):,} of {inputs.full_sizes[split][0]:,} {split} films"
             for split, frame in ((inputs.split, inputs.test), ("val", inputs.validation))]
    return HTML(
        f"<div style='{TONES['amber']}'><b>Capped comparison.</b> txv_max_images = {inputs.max_images:,}: both models are "
        f"compared on {' and '.join(parts)}, whole patients drawn at random (seeded). TorchXRayVision's 224 px pass "
        "over every film is GPU work; this CPU run compares a sample, so its intervals are wider than a full "
        "comparison's. Set txv_max_images: null to compare every film.</div>"
    )


def provenance_banner(model: str) -> HTML:
    """Green for a model that never saw an NIH film, red for one that may have trained on these test films."""
    origin = provenance(model)
    sources = "; ".join(origin.sources)
    text = (f"<b>{html_text(model)}: {html_text(origin.verdict)}.</b> Trained on {html_text(origin.trained_on)}: "
            f"{html_text(origin.why)}.<br><small>Sources: {html_text(sources)}</small>")
    return box(text, "red" if origin.nih_films else "green")


def each_model(comparisons: Sequence[ModelComparison]) -> Iterator[ModelComparison]:
    """Yield each comparison under a heading naming the model and what it may have seen; the clean one first."""
    if not comparisons:
        display(Markdown("*Comparison skipped: no TorchXRayVision model was loaded (see section 1).*"))
    clean = headline_model([c.model.name for c in comparisons])
    for result in sorted(comparisons, key=lambda c: c.model.name != clean):
        lead = " (the headline comparison)" if result.model.name == clean else ""
        display(Markdown(f"### {result.names[TXV]}{lead}"))
        display(provenance_banner(result.model.name))
        yield result


def auroc_display(result: ModelComparison) -> Styler:
    """Per-finding AUROC of both models with CIs, the difference with its CI and DeLong's p (raw, Holm, BH)."""
    scores = result.auroc.table
    level = f"{result.auroc.confidence:.0%} CI"
    shown = pd.DataFrame({
        "positives": scores["positives"],
        f"ours AUROC [{level}]": [interval_text(*r) for r in
                                  scores[["auroc_ours", "ours_ci_low", "ours_ci_high"]].itertuples(index=False)],
        f"TXV AUROC [{level}]": [interval_text(*r) for r in
                                 scores[["auroc_txv", "txv_ci_low", "txv_ci_high"]].itertuples(index=False)],
        f"difference [{level}]": [interval_text(*r, signed=True) for r in
                                  scores[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "DeLong p": scores["p_value"].map(p_text),
        "p (Holm)": scores["p_holm"].map(p_text),
        "p (BH)": scores["p_bh"].map(p_text),
        "note": scores["note"],
    }, index=scores.index)
    return table(shown, caption=_caption(result, f"AUROC on {len(result.test):,} {result.split} images, "
                                                 f"{result.auroc.n_resamples:,} patient-bootstrap resamples"))


def classification_display(result: ModelComparison) -> Styler:
    """Both models side by side at validation-chosen thresholds, and TXV at its own op_threshs."""
    wide = side_by_side(result.classification, metrics=("threshold", "sensitivity", "specificity", "ppv", "f1"))
    return table(wide, caption=_caption(result, f"thresholds: {result.threshold_method} on our validation images "
                                                f"({len(result.validation):,}), or TorchXRayVision's published "
                                                "op_threshs"))


def operating_note(result: ModelComparison) -> HTML:
    """What transfers from validation to test, and (for a model that trained on NIH films) why its thresholds flatter it."""
    operating = result.operating
    if operating is None:
        return note("No operating points with intervals were computed for this comparison.")
    parts = [note(TRANSFER_SENTENCE, tone="neutral").data]
    if operating.caveat:
        parts.append(note(operating.caveat, tone="amber").data)
    return HTML("".join(parts))


def _operating_caption(result: ModelComparison, what: str) -> str:
    operating = result.operating
    assert operating is not None
    caveat = f" {operating.caveat}" if operating.caveat else ""
    synthetic = " SYNTHETIC phantoms: these figures say nothing about real patients." if result.synthetic else ""
    return _caption(result, (
        f"{what} Rules: {', '.join(operating.rule_names)}; each model's thresholds chosen on our validation films "
        f"({len(result.validation):,}) from its own validation scores, read on {len(result.test):,} {result.split} "
        f"films. {operating.confidence:.0%} intervals from {operating.n_resamples:,} resamples, each drawing "
        f"validation patients (the threshold re-chosen on them) and {result.split} patients (the figure read there), "
        f"the same draws for both models.{caveat}{synthetic}").rstrip("."))


def _operating_rows(result: ModelComparison) -> Iterator[tuple[str, str, pd.Series, pd.Series, pd.Series]]:
    """(rule, finding, ours' row, TXV's row, the difference row) in the rules' and the findings' order."""
    operating = result.operating
    assert operating is not None
    for rule in operating.rule_names:
        ours, theirs = operating.table(OURS, rule), operating.table(TXV, rule)
        differences = operating.difference_table(rule)
        for finding in ours.index:
            yield rule, finding, ours.loc[finding], theirs.loc[finding], differences.loc[finding]


def _figure(row: pd.Series, metric: str, prefix: str = "", signed: bool = False) -> str:
    """``metric`` with its interval from ``row``'s ``<prefix><metric>``, ``_ci_low`` and ``_ci_high``; a dash without."""
    name = f"{prefix}{metric}"
    return interval_text(row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"], signed=signed) or MISSING


def sensitivity_specificity_display(result: ModelComparison) -> Styler | HTML:
    """Per rule and finding: both prevalences, each model's threshold, sensitivity and specificity, and ours - TXV.

    These are the figures that carry from validation to test when the score distributions do.
    """
    if result.operating is None:
        return operating_note(result)
    split = result.split
    rows = []
    for rule, finding, ours, theirs, difference in _operating_rows(result):
        rows.append({
            "rule": rule, "finding": finding,
            "prevalence (val)": ours["val_prevalence"], f"prevalence ({split})": ours["test_prevalence"],
            "ours threshold": ours["threshold"], "TXV threshold": theirs["threshold"],
            "ours sensitivity": _figure(ours, "sensitivity"), "TXV sensitivity": _figure(theirs, "sensitivity"),
            "sensitivity ours − TXV": _figure(difference, "difference", prefix="sensitivity_", signed=True),
            "ours specificity": _figure(ours, "specificity"), "TXV specificity": _figure(theirs, "specificity"),
            "specificity ours − TXV": _figure(difference, "difference", prefix="specificity_", signed=True),
        })
    shown = pd.DataFrame(rows).set_index(["rule", "finding"])
    return table(shown, caption=_operating_caption(
        result, "Sensitivity and specificity at validation-chosen thresholds, with the paired difference."))


def predictive_values_display(result: ModelComparison) -> Styler | HTML:
    """Per rule and finding: both prevalences, each model's PPV, NPV and F1 on test, and the PPV validation implies.

    These depend on the prevalence: read them at the test prevalence, never carried over from validation.
    """
    if result.operating is None:
        return operating_note(result)
    split = result.split
    rows = []
    for rule, finding, ours, theirs, _ in _operating_rows(result):
        row: dict[str, object] = {"rule": rule, "finding": finding, "prevalence (val)": ours["val_prevalence"],
                                  f"prevalence ({split})": ours["test_prevalence"]}
        for name, points in (("ours", ours), ("TXV", theirs)):
            row |= {f"{name} PPV": _figure(points, "ppv"), f"{name} NPV": _figure(points, "npv"),
                    f"{name} F1": _figure(points, "f1"),
                    f"{name} PPV expected at {split} prevalence": points["ppv_expected_at_test"]}
        rows.append(row)
    shown = pd.DataFrame(rows).set_index(["rule", "finding"])
    return table(shown, caption=_operating_caption(
        result, f"PPV, NPV and F1 on {split} (at the {split} prevalence); the 'expected' columns carry each model's "
                f"validation sensitivity and specificity to the {split} prevalence by Bayes' rule."))


def subgroup_differences_display(result: ModelComparison) -> Styler:
    """Exploratory: the AUROC difference per finding and group, its positives, DeLong's p and Holm across the grid."""
    grid = result.subgroup_differences()
    level = f"{result.auroc.confidence:.0%} CI"
    shown = pd.DataFrame({
        "subgroup": grid["subgroup"], "value": grid["value"], "finding": grid["finding"],
        "positive films": grid["positives"], "positive patients": grid["positive_patients"],
        f"AUROC difference ours − TXV [{level}]": [
            interval_text(*r, signed=True) or MISSING for r in
            grid[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "DeLong p": grid["p_value"].map(p_text),
        "p (Holm, whole grid)": grid["p_holm"].map(p_text),
        "note": grid["note"],
    }).set_index(["subgroup", "value", "finding"])
    synthetic = " SYNTHETIC phantoms: these figures say nothing about real patients." if result.synthetic else ""
    return table(shown, caption=_caption(result, (
        f"{EXPLORATORY_NOTE} Holm's family: {grid.attrs['family']}. A cell needs positive films from at least "
        f"{grid.attrs['min_positive_patients']} patients in its group; intervals resample patients within the group, "
        f"and DeLong's variance is clustered by patient.{synthetic}").rstrip(".")))


def subgroup_display(result: ModelComparison) -> Styler:
    """Mean AUROC of both models and their difference within each sex and view, with the fewest positive patients."""
    groups = result.subgroups
    means = groups[groups["finding"] == MEAN_ROW]
    shown = pd.DataFrame({
        "subgroup": means["subgroup"], "value": means["value"], "images": means["images"],
        "patients": means["patients"], "positive patients (fewest)": means["positive_patients"],
        "ours mean AUROC [CI]": [interval_text(*r) for r in
                                 means[["auroc_ours", "ours_ci_low", "ours_ci_high"]].itertuples(index=False)],
        "TXV mean AUROC [CI]": [interval_text(*r) for r in
                                means[["auroc_txv", "txv_ci_low", "txv_ci_high"]].itertuples(index=False)],
        "difference [CI]": [interval_text(*r, signed=True) for r in
                            means[["difference", "diff_ci_low", "diff_ci_high"]].itertuples(index=False)],
        "note": means["note"],
    }).set_index(["subgroup", "value"])
    minimum = result.subgroup_min_positive_patients
    return table(shown, caption=_caption(
        result, "exploratory; mean over the findings scored in every group of a subgroup, a finding being scored in "
                f"a group with at least {minimum} patients with a positive film there; each finding's difference, "
                "p-value and Holm across the whole grid follow in the next table"))


def cluster_sentence(result: ComparisonResult) -> str:
    """Markdown: films per patient on the compared films, in one sentence computed from them; empty when skipped."""
    facts = result.clusters
    return "" if facts is None or result.inputs is None else facts.sentence(f"compared {result.inputs.split} films")


def _caption(result: ModelComparison, detail: str) -> str:
    return f"ours: {result.names[OURS]}; TXV: {result.names[TXV]}. {detail}."


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


def radiologist_display(result: ComparisonResult, comparison: ModelComparison) -> Styler | HTML:
    """Ours and this model against the radiologists' labels and against NIH's, on the same films."""
    ours, theirs = result.radiologist_ours, comparison.radiologist
    if ours is None or theirs is None:
        return note("None of the compared films has radiologist labels (real NIH: 1,962 official-test films do).",
                    tone="neutral")
    rows = {}
    for finding in theirs.table.index:  # ours has no Fracture output; a TorchXRayVision model may
        b = theirs.table.loc[finding]
        a = ours.table.loc[finding] if finding in ours.table.index else None
        rows[finding] = {
            "films": int(b["films"]), "radiologist positives": int(b["radiologist positives"]),
            "NIH / radiologist agreement": b["agreement"],
            "ours vs radiologists": ("no output (not an NIH finding)" if a is None else interval_text(
                a["AUROC (radiologists)"], a["radiologists CI low"], a["radiologists CI high"])),
            "TXV vs radiologists": interval_text(b["AUROC (radiologists)"], b["radiologists CI low"],
                                                 b["radiologists CI high"]),
            "ours vs NIH labels": ("no NIH label" if a is None else
                                   interval_text(a["AUROC (NIH labels)"], a["NIH CI low"], a["NIH CI high"])),
            "TXV vs NIH labels": ("no NIH label" if pd.isna(b["AUROC (NIH labels)"]) and pd.isna(b["agreement"])
                                  else interval_text(b["AUROC (NIH labels)"], b["NIH CI low"], b["NIH CI high"])),
            "TXV: radiologists - NIH (paired)": ("" if pd.isna(b["difference (radiologists - NIH)"]) else
                                                 interval_text(b["difference (radiologists - NIH)"],
                                                               b["difference CI low"], b["difference CI high"],
                                                               signed=True)),
            "TXV scored by": b["scored by"],
        }
    shown = pd.DataFrame.from_dict(rows, orient="index").rename_axis("radiologist finding")
    return table(shown, caption=_caption(comparison, f"{ours.films:,} films with radiologist labels; {ours.source}"))

"""How notebook 04 shows a comparison (``cxrutils.compare.run.ComparisonResult``): banners, tables, words.

Nothing here computes a statistic: every number comes from the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd
from IPython.display import HTML, Markdown, display
from pandas.io.formats.style import Styler

from cxrutils.compare.provenance import headline_model, provenance
from cxrutils.compare.run import (
    ComparisonInputs,
    ComparisonResult,
    LoadedModels,
    ModelComparison,
    enable_instructions,
)
from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.show.display import TONES, box, interval_text, note, p_text, table
from cxrutils.stats.metrics import MEAN_ROW
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
                f"a group with at least {minimum} patients with a positive film there; p-values (in comparison.json) "
                "adjusted within each group only"))


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

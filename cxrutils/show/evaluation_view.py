"""How notebook 03 shows an evaluation (``cxrutils.evaluate.EvaluationResult``): words and warnings.

Nothing here computes a statistic: every number comes from the result.
"""

from __future__ import annotations

import pandas as pd
from IPython.display import HTML
from pandas.io.formats.style import Styler

from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import is_last_stage
from cxrutils.evaluate.evaluation import POS_WEIGHT_NOTE, PREVALENCE_SHIFT_CALIBRATION_NOTE, EvaluationResult
from cxrutils.evaluate.localization import metric_label
from cxrutils.labels import FINDINGS
from cxrutils.show.display import interval_text, note, p_text, table
from cxrutils.stats import metrics
from cxrutils.stats.operating import TRANSFER_SENTENCE


def describe(result: EvaluationResult) -> str:
    """Markdown: what was scored, with which checkpoint and split, and where the thresholds come from."""
    attrs = result.predictions.attrs
    missing = [f for f in FINDINGS if result.thresholds_by_finding.get(f) is None]
    lines = [
        f"- **Run:** `{result.run.run_dir}`; best checkpoint from epoch {attrs.get('best_epoch', '?')} "
        f"(mean validation AUROC {attrs.get('best_val_auroc_mean', float('nan')):.3f}), scored on "
        f"`{attrs.get('device', '?')}`" + (" with horizontal-flip test-time augmentation." if result.tta_hflip
                                          else ", without test-time augmentation."),
        f"- **Split:** `{result.split}` ({result.run.dataset.split_kind} split, read from "
        f"{result.run.split_source}): {result.n_images:,} images of {result.n_patients:,} patients"
        + (f" ({len(result.not_scored):,} not in the image cache, not scored)." if result.not_scored else "."),
        f"- **Thresholds:** `{result.threshold_method}`, read from `{run_folder.THRESHOLDS_NAME}` in the run "
        "folder, chosen on the validation predictions at training time"
        + (f"; none could be chosen for {', '.join(missing)} (validation had one label value only)." if missing
           else "."),
    ]
    return "\n".join(lines)


def images_caveat(result: EvaluationResult) -> HTML:
    """A warning when the images under the data root changed since training (e.g. the demo was rebuilt); else empty."""
    if result.run.images_match_training is False:
        return note(
            f"The images under {result.run.data_root} are not the ones this run was trained on (the image "
            f"cache fingerprint differs from the one in {run_folder.CONFIG_NAME}): the files were replaced or "
            "rebuilt since. The numbers below score the model on today's files; retrain it to evaluate a matched "
            "pair.",
            tone="red",
        )
    return HTML("")


def threshold_caveat(result: EvaluationResult) -> HTML:
    """A warning when the scored split is not held out from threshold choice or training; empty otherwise."""
    if result.split == "val":
        return note(
            "These are the validation images the thresholds were chosen on (and that picked the best epoch): "
            "the operating points below are optimistic. Score split='test' for an honest estimate."
        )
    if result.split == "train":
        return note("These are the training images: every number below is optimistic, not an estimate of "
                    "performance on new patients.")
    return HTML("")


def gradcam_resolution_note(result: EvaluationResult) -> HTML:
    """Which stage Grad-CAM read and why, when it is not the last one; a warning when its grid is coarse."""
    grid = result.gradcam_grid
    if grid >= 4 and is_last_stage(result.gradcam_layer, result.run.config.arch):
        return HTML("")
    if grid >= 4:
        return note(
            f"Grad-CAM here reads {result.gradcam_layer} ({grid} x {grid} at {result.input_size} px), not the last "
            "stage, whose map would be too coarse to point anywhere at this input size. The random baseline "
            "uses the same grid.",
            tone="neutral",
        )
    return note(
        f"At {result.input_size} px {result.gradcam_layer} is {grid} x {grid}, so every Grad-CAM map is a bilinearly "
        f"upsampled {grid} x {grid} grid whose maximum is often a flat block at the image's edge, and the pointing "
        "game says little. The random baseline is equally coarse, so the comparison with it stays fair."
    )


def outside_boxes_note(result: EvaluationResult) -> HTML:
    """Which boxes fall outside their film as stored (and so were not scored); empty when none does."""
    located = result.localization
    if located is None or located.outside.empty:
        return HTML("")
    films = located.outside["image"].nunique()
    examples = ", ".join(f"{row.image} ({row.finding})" for row in located.outside.head(5).itertuples())
    return note(
        f"{len(located.outside):,} box(es) on {films:,} film(s) fall outside the film as stored, even after scaling "
        f"from the 1024-px frame of BBox_List_2017.csv to the stored size (e.g. {examples}). The film was cropped, "
        "or is not the NIH film the box was drawn on. These boxes are not scored (a miss would be wrong): they "
        f"are listed under localization.outside_film in {run_folder.metrics_name(result.split, result.tta_hflip)}."
    )


_FAMILY_TITLES = {"iobb": "Pointing game and T(IoBB)", "iou": "T(IoU)", None: "Every accuracy"}


def _family_title(family: str | None) -> str:
    if family not in _FAMILY_TITLES:
        raise ValueError(f"family must be one of {list(_FAMILY_TITLES)}, got {family!r}")
    return _FAMILY_TITLES[family]


def _count_text(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def localization_note(result: EvaluationResult) -> HTML:
    """What the localization intervals resample, and (on phantoms) that every figure is SYNTHETIC."""
    located = result.localization
    if located is None:
        return HTML("")
    attrs = located.scores.attrs
    text = (f"{attrs.get('confidence', 0.95):.0%} intervals from {attrs.get('n_resamples', 0):,} patient-bootstrap "
            f"resamples: the {located.scores.loc['all', 'boxes']:,} boxes come from "
            f"{located.scores.loc['all', 'patients']:,} patients, whose boxes and films are alike, so whole patients "
            "are drawn with replacement. A finding with boxes from a single patient gets no interval. The random "
            f"heatmaps' figure for each box is its hit rate over {located.baseline.attrs.get('repeats', '?')} draws; "
            "the difference is paired by box, and 'beats chance' means its whole interval lies above 0 (not adjusted "
            "for the many findings and thresholds compared).")
    if result.synthetic:
        return note("SYNTHETIC phantoms: these boxes were painted on made-up films, so every localization figure "
                    "below only shows that the method runs. " + text, tone="red")
    return note(text, tone="neutral")


def localization_table(result: EvaluationResult, family: str | None = "iobb") -> Styler:
    """Wang et al. 2017's Table 3 layout: per finding and ``all``, this model, random heatmaps and Wang et al.

    ``family`` "iobb" (pointing game and T(IoBB) 0.1 ... 0.9) or "iou" (T(IoU) 0.1 ... 0.7);
    each cell is the accuracy with its patient-bootstrap interval.
    """
    located = result.localization
    numbers = located.table(family)
    keys = located.keys_of(family)
    labels = [metric_label(key) for key in keys]
    rows, records = [], []
    for finding in numbers.index:
        counts = _count_text(numbers.loc[finding, ("", "boxes")], "box", "boxes")
        if ("", "patients") in numbers.columns:
            counts += ", " + _count_text(numbers.loc[finding, ("", "patients")], "patient", "patients")
        for source, name in (("this model", "Grad-CAM (this model)"), ("random heatmaps", "random heatmaps"),
                             ("Wang et al. 2017", "Wang et al. 2017")):
            if source == "Wang et al. 2017" and not any(
                    (label, source) in numbers.columns and pd.notna(numbers[(label, source)][finding])
                    for label in labels):
                continue  # nothing published for this finding at these thresholds
            cells = {}
            for label in labels:
                value, low, high = (numbers[column][finding] if column in numbers.columns else None
                                    for column in ((label, source), (label, f"{source} CI low"),
                                                   (label, f"{source} CI high")))
                cells[label] = "" if value is None else interval_text(value, low, high)
            rows.append((f"{finding} ({counts})", name))
            records.append(cells)
    shown = pd.DataFrame(records, index=pd.MultiIndex.from_tuples(rows, names=["finding", "heatmaps"]))
    published = (" Wang et al. 2017 (ChestX-ray8, another network, boxes drawn around the thresholded regions) "
                 "where their figure is stored here: context, not a like-for-like comparison."
                 if any(name == "Wang et al. 2017" for _, name in rows) else "")
    caption = (f"{_family_title(family)} on the {result.split} split's boxes, "
               f"{numbers.attrs.get('confidence', 0.95):.0%} patient-bootstrap intervals." + published
               + _synthetic_suffix(result))
    return table(shown, caption=caption)


def versus_random_table(result: EvaluationResult, family: str | None = "iobb") -> Styler:
    """Grad-CAM minus random heatmaps per finding and accuracy, paired by box, with its interval."""
    located = result.localization
    differences = located.difference_table()
    keys = located.keys_of(family)
    shown = pd.DataFrame(
        {metric_label(key): [interval_text(*differences.loc[(finding, key), ["difference", "ci_low",
                                                                                    "ci_high"]], signed=True)
                                   for finding in located.scores.index]
         for key in keys},
        index=located.scores.index)
    caption = (f"{_family_title(family)}: this model minus random heatmaps (> 0: better than chance), "
               f"{located.versus_random.attrs.get('confidence', 0.95):.0%} patient-bootstrap intervals from the same "
               "resamples." + _synthetic_suffix(result))
    return table(shown, caption=caption)


def beats_chance_table(result: EvaluationResult) -> Styler:
    """yes / no per finding and accuracy: does the whole interval of Grad-CAM minus random lie above 0?"""
    located = result.localization
    verdicts = located.beats_chance()
    used = located.versus_random.pivot(index="finding", columns="metric", values="resamples").reindex_like(verdicts)
    shown = pd.DataFrame({metric_label(key): ["yes" if beats else "no" if n else "no interval"
                                                    for beats, n in zip(verdicts[key], used[key])]
                          for key in verdicts.columns}, index=verdicts.index)
    caption = ("Beats chance: yes where the whole interval of (this model minus random heatmaps) lies above 0, "
               "a one-sided test at 2.5% per cell, not adjusted for the many cells." + _synthetic_suffix(result))
    return table(shown, caption=caption)


def context_note(result: EvaluationResult) -> HTML:
    """Which split this run used, and what that allows comparing it with."""
    kind = result.run.dataset.split_kind
    if result.synthetic:
        return note(
            f"This run was scored on SYNTHETIC phantoms ({kind} split format). Its AUROC measures how well the "
            "network finds painted shapes; comparing it with any published chest X-ray result below is "
            "meaningless. The table is here only to show where real results stand.",
            tone="red",
        )
    if result.split != "test":
        return note(f"This run was scored on its {result.split} split, not on held-out test images: it is "
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


def radiologist_note(result: EvaluationResult) -> HTML:
    """What the radiologist-label section can say here: nothing on phantoms, or why it is empty."""
    if result.radiologist is None:
        return note(f"None of the {result.n_images:,} scored films of the {result.split} split has radiologist labels "
                    "(real NIH: 1,962 official-test films and 2,414 train_val films have them), so this section is "
                    "empty.", tone="neutral")
    if result.synthetic:
        return note(
            "SYNTHETIC phantoms: the films were drawn from NIH's text-mined labels, so scoring them against the "
            "radiologists' labels measures nothing about the model. The table only shows that the section runs, and "
            "how often the two label sets agree on these real rows.", tone="red")
    return HTML("")


def radiologist_table(result: EvaluationResult) -> Styler:
    """Both AUROCs with their intervals, the positives under each label set, and their agreement."""
    scores = result.radiologist.table
    shown = pd.DataFrame({
        "scored by": scores["scored by"],
        "films": scores["films"],
        "radiologist positives": scores["radiologist positives"],
        "NIH positives": scores["NIH positives"],
        "agreement": scores["agreement"],
        "Cohen's kappa": scores["kappa"],
        "AUROC vs radiologists [95% CI]": [interval_text(*row) for row in scores[
            ["AUROC (radiologists)", "radiologists CI low", "radiologists CI high"]].itertuples(index=False)],
        "AUROC vs NIH labels [95% CI]": [interval_text(*row) for row in scores[
            ["AUROC (NIH labels)", "NIH CI low", "NIH CI high"]].itertuples(index=False)],
    }, index=scores.index)
    caption = (f"{result.radiologist.films:,} films of {result.radiologist.patients:,} patients with radiologist labels "
               f"(sets: {result.radiologist.sets}); {result.radiologist.source}")
    return table(shown, caption=caption)


def cluster_sentence(result: EvaluationResult) -> str:
    """Markdown: films per patient on the scored films, in one sentence computed from them."""
    return result.clusters.sentence(f"{result.split} films")


def positives_table(result: EvaluationResult) -> Styler:
    """Per finding: positive films and the patients they come from."""
    facts = result.clusters.per_finding
    shown = facts.assign(**{"positive films per positive patient": (facts["positive films"]
                                                                    / facts["positive patients"].where(
                                                                        facts["positive patients"] > 0))})
    return table(shown, caption=f"{result.split} split: {result.clusters.films:,} films of "
                                f"{result.clusters.patients:,} patients")


def patient_level_table(result: EvaluationResult) -> Styler:
    """The film-level AUROC beside the first-film and 1/n-weighted AUROCs, each with its interval."""
    scores = result.patient_level
    shown = pd.DataFrame({
        "every film (headline)": scores["auroc_films"].map(lambda v: interval_text(v, None, None)),
        "first film per patient [95% CI]": [interval_text(*row) for row in scores[
            ["auroc_first_film", "first_ci_low", "first_ci_high"]].itertuples(index=False)],
        "first-film positives": scores["first_film_positives"],
        "each patient weighs 1 [95% CI]": [interval_text(*row) for row in scores[
            ["auroc_weighted", "weighted_ci_low", "weighted_ci_high"]].itertuples(index=False)],
    }, index=scores.index)
    over = scores.attrs.get("mean_over", [])
    caption = (f"{scores.attrs.get('patients', 0):,} patients, {scores.attrs.get('films', 0):,} films; the mean row "
               f"averages the {len(over)} findings scorable on first films too, in all three columns; intervals "
               "from the film-level bootstrap's patient resamples")
    return table(shown, caption=caption)


def subgroup_means_table(result: EvaluationResult) -> Styler:
    """The subgroup means with the fewest positive patients behind each, under the rule that shows a cell."""
    caption = (f"Exploratory. A finding is shown in a group only with at least {result.subgroup_min_positive_patients} "
               "patients with a positive film there (subgroup_min_positive_patients); each group's mean averages "
               "the findings shown in every group of its variable. 95% patient-bootstrap intervals, not adjusted "
               "for multiplicity.")
    return table(result.subgroup_means(), caption=caption)


def subgroup_differences_table(result: EvaluationResult, means_only: bool = False) -> Styler:
    """Each group's AUROC minus its variable's reference group's, with the interval, p and Holm's p.

    ``means_only``: the mean rows alone (one per group), else every finding with a difference.
    """
    differences = result.subgroup_differences
    rows = differences[differences["difference"].notna()]
    rows = rows[rows["finding"] == metrics.MEAN_ROW] if means_only else rows
    shown = pd.DataFrame({
        "group": [f"{variable}: {value}" for variable, value in zip(rows["subgroup"], rows["value"])],
        "minus": rows["reference"].astype(str).to_numpy(),
        "finding": rows["finding"].to_numpy(),
        "AUROC (group)": rows["auroc"].to_numpy(), "AUROC (reference)": rows["reference_auroc"].to_numpy(),
        "difference [95% CI]": [interval_text(v, lo, hi, signed=True)
                                for v, lo, hi in zip(rows["difference"], rows["ci_low"], rows["ci_high"])],
        "p": rows["p_value"].to_numpy(), "p (Holm)": rows["p_holm"].to_numpy(),
        "positive patients (group / reference)": [
            f"{int(a)} / {int(b)}" for a, b in zip(rows["positive_patients"], rows["reference_positive_patients"])],
    })
    family = "" if means_only else f" {differences.attrs.get('family', '')}"
    caption = (f"Exploratory. Each group minus its variable's reference group (the one with most films), over the "
               f"same films' patients resampled together ({result.n_bootstrap} resamples), so a patient with films "
               f"in both groups counts in both. A difference needs {result.subgroup_min_positive_patients} positive "
               f"patients in each group.{family}{_synthetic_suffix(result)}")
    return table(shown, caption=caption, index=False, formats={"p": p_text, "p (Holm)": p_text})


def paediatric_note(result: EvaluationResult) -> HTML:
    """How many films and patients of the scored split are children: the age band <18 below."""
    children = result.paediatric
    if not children["films"]:
        return note(f"No film of the {result.split} split is from a patient under {children['under_years']:g}.",
                    tone="neutral")
    return note(
        f"{children['films']:,} of the {result.n_images:,} {result.split} films ({children['share_of_films']:.1%}) are "
        f"from {children['patients']:,} patients under {children['under_years']:g}: they are the age band "
        f"<{children['under_years']:g} below, apart from the adults. So few patients give wide intervals; the model "
        "is not validated for children.", tone="neutral")


# --------------------------------------------------------------------------- operating points and calibration


def _synthetic_suffix(result: EvaluationResult) -> str:
    return " SYNTHETIC phantoms: these figures say nothing about real patients." if result.synthetic else ""


def operating_note(result: EvaluationResult) -> HTML:
    """Why there are no operating-point intervals (no validation predictions); empty when there are."""
    return note(result.operating_note) if result.operating_intervals is None else HTML("")


def operating_points_table(result: EvaluationResult, rule: str) -> Styler:
    """One rule's operating points with intervals that include the threshold's own variability."""
    shown = result.operating_table(rule)
    attrs = result.operating_intervals.attrs if result.operating_intervals is not None else {}
    source = ("thresholds.json, chosen on validation at training time" if rule in ("youden", "max_f1")
              else "chosen on the validation predictions (predictions_val.csv) at evaluation")
    caption = (f"{rule}: thresholds {source}. {attrs.get('confidence', 0.95):.0%} intervals from "
               f"{attrs.get('n_resamples', 0):,} resamples, each drawing validation patients (the threshold "
               f"re-chosen on them) and {result.split} patients (the figures read there). PPV, NPV and F1 depend on "
               f"the {result.split} prevalence." + _synthetic_suffix(result))
    return table(shown, caption=caption)


def prevalence_shift_table(result: EvaluationResult, rule: str | None = None) -> Styler:
    """Validation against the scored split at one rule's thresholds: what transfers and what does not."""
    rule = rule or result.threshold_method
    caption = (f"At the {rule} thresholds. Sensitivity and specificity should agree between the two columns up to "
               "sampling; PPV and NPV follow the prevalence, and the 'expected' columns carry validation's "
               f"sensitivity and specificity to the {result.split} prevalence by Bayes' rule."
               + _synthetic_suffix(result))
    return table(result.prevalence_shift_table(rule), caption=caption)


def transfer_note(result: EvaluationResult) -> HTML:
    """The sentence saying which figures carry from validation to the scored split and which do not."""
    return note(TRANSFER_SENTENCE, tone="neutral")


def calibration_figures_table(result: EvaluationResult) -> Styler:
    """O/E, scaled Brier, slope, intercepts and equal-mass ECE of the raw probabilities, with intervals."""
    summary = result.calibration_summary
    caption = (f"Raw probabilities on the {result.split} split; {result.calibration_bins} equal-mass bins for ECE; "
               f"{summary.attrs.get('confidence', 0.95):.0%} patient-bootstrap intervals from "
               f"{summary.attrs.get('n_resamples', 0):,} resamples." + _synthetic_suffix(result))
    return table(result.calibration_figures(), caption=caption)


def calibration_shift_table(result: EvaluationResult) -> Styler:
    """Prevalences and O/E on validation and on the scored split, raw and recalibrated."""
    caption = ("O/E above 1: the probabilities are too low on average; below 1: too high. Validation's O/E is a "
               "point figure." + _synthetic_suffix(result))
    return table(result.calibration_shift_table(), caption=caption)


def recalibration_table(result: EvaluationResult) -> Styler | HTML:
    """The recalibrated model's slope, O/E and scaled Brier beside the raw model's; a note when there is none."""
    figures = result.recalibrated_figures()
    if figures is None or result.recalibration is None:
        return note(result.recalibration_note or "No recalibration.", tone="neutral")
    method = result.recalibration.method
    caption = (f"{method} scaling per finding, fitted on the validation predictions only and applied to the "
               f"{result.split} probabilities; shown beside the raw model, which every other figure of this report "
               "uses. It changes no ranking, so AUROC and AP stay as they are." + _synthetic_suffix(result))
    return table(figures, caption=caption)


def calibration_notes(result: EvaluationResult) -> HTML:
    """Why the raw probabilities run high (pos_weight) and why test under-prediction is the prevalence shift."""
    texts = ([POS_WEIGHT_NOTE] if result.class_weighting == "pos_weight" else []) + [PREVALENCE_SHIFT_CALIBRATION_NOTE]
    return note(" ".join(texts), tone="neutral")

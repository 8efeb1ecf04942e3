"""A model card written from the run folder: what a reviewer reads a run by (CLAIM 2024, TRIPOD+AI items).

    cxrutils card --run runs/demo      # reports/model_card.html and .json

Everything the project knows is filled in from the run's own record: ``config.json``
(settings, data, fingerprints, initial weights and their hash, software, hardware,
commit), ``split.csv``, the history, ``metrics.json`` (written by the evaluation),
``comparison.json``, ``bad_files.csv`` and the external validations under ``external/``.
What only a person can write (intended use, clinical role, out of scope, ethics) is left
as clearly marked blanks, each asked as explicit questions at the top of the page.

The card ends with a reporting checklist: one row per item of CLAIM 2024 (Tejani et al.,
Radiology: Artificial Intelligence 2024;6(4):e240300; 44 items) and of TRIPOD+AI (Collins
et al., BMJ 2024;385:e078378; 27 items, several with sub-items). ``REPORTING_ITEMS`` says
for each item where the card fills it, which person's blank answers it, why it does not
apply, or what would fill it; ``reporting_checklist`` turns that into a status from what
this card actually holds. The JSON the page is built from is saved beside it and in the
run folder.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxrutils import files
from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.engine import run_folder
from cxrutils.labels import FINDINGS
from cxrutils.paths import REPORTS_DIR, resolve
from cxrutils.text import html_text

CARD_NAME = "model_card"
TO_BE_WRITTEN = "TO BE WRITTEN BY A PERSON"
# What only a person can write, each asked as questions a reader must find answered before relying on the model.
PERSON_ITEMS: dict[str, tuple[str, ...]] = {
    "intended_use": (
        "Who will use the model's output: radiologists, other clinicians, researchers?",
        "On which patients and which films: adults only? PA and AP frontal films only? From which hospitals and "
        "machines?",
        "Which decision does the output inform, and what is done differently because of it?",
        "What happens to a patient when the model misses a finding (a false negative), and when it flags one that "
        "is not there (a false positive)?",
    ),
    "clinical_role": (
        "Where in the workflow is the output seen: triage of the worklist, a second reader after the radiologist, "
        "or research only?",
        "Who acts on it, with what training, and may they overrule it?",
    ),
    "out_of_scope": (
        "Which uses must it not be put to (lateral films, children, other hospitals before a validation there, "
        "findings beyond the 14)?",
        "How is a film of poor quality or of the wrong kind recognised and kept from the model?",
    ),
    "ethics": (
        "Which ethics committee approved this use of the films, under what consent or waiver of consent?",
        "Which groups could it serve worse (sex, age, view, hospital), what was done about that, and what fairness "
        "concerns remain?",
        "Who is accountable for the harms of its false positives and false negatives?",
    ),
}
_SPLITS = ("train", "val", "test")
LABEL_DEFINITIONS = (
    "14 findings text-mined from radiology reports by NIH (ChestX-ray14; Wang et al. 2017); 'No Finding' means all "
    "14 absent. NIH estimates its text mining above 90% accurate for most findings: that is the labeller's accuracy "
    "against what the reports say, not agreement with the films."
)
# Where cxrutils.evaluate.external writes each collection's result in the run folder (its EXTERNAL_FOLDER and
# RESULT_NAME; named again here because importing that module loads torch, and a card needs none of it).
EXTERNAL_FOLDER = "external"
EXTERNAL_RESULT_NAME = "external.json"
_LOCALIZATION_COUNTS = ("boxes", "patients")  # columns of the localization scores that are counts, not accuracies
_INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")


# --------------------------------------------------------------------------- the reporting checklist

CLAIM = "CLAIM 2024"
TRIPOD = "TRIPOD+AI"
FILLED = "filled from the run"
BY_A_PERSON = "to be written by a person"
NOT_APPLICABLE = "not applicable"
MISSING = "missing"
STATUSES = (FILLED, BY_A_PERSON, NOT_APPLICABLE, MISSING)
CHECKLIST_SOURCES = (
    "CLAIM 2024: Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in Medical Imaging "
    "(CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300 (44 items)",
    "TRIPOD+AI: Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement. BMJ 2024;385:e078378 (27 items, "
    "several with sub-items; the abstract has its own checklist, TRIPOD+AI for Abstracts)",
)
CHECKLIST_NOTE = (
    "Titles are shortened; read each checklist for the full wording. 'Filled from the run' means the card's section "
    "named under 'where' holds what the item asks for, computed from the run folder; a manuscript still has to say "
    "it in words."
)


@dataclass(frozen=True)
class ReportingItem:
    """One item of a reporting checklist, and how a run of this project answers it.

    Exactly one way: ``card`` (dotted paths into the card; the item is filled when every one holds
    something, else missing), ``person`` (a PERSON_ITEMS blank answers it), ``not_applicable`` (why
    it does not apply to a run of this project) or ``missing`` alone (nothing a run records fills it).
    ``missing`` also says what would fill a ``card`` item the card does not hold yet.
    """

    checklist: str
    number: str  # as the checklist numbers it: "21", "12e"
    section: str  # the checklist's own section heading
    title: str
    card: tuple[str, ...] = ()
    person: str | None = None
    not_applicable: str | None = None
    missing: str = ""

    def __post_init__(self) -> None:
        ways = [bool(self.card), self.person is not None, self.not_applicable is not None]
        if sum(ways) > 1 or (not any(ways) and not self.missing):
            raise ValueError(f"{self.checklist} item {self.number}: give exactly one of card, person or "
                             "not_applicable, or say in missing what would fill it")
        if self.person is not None and self.person not in PERSON_ITEMS:
            raise ValueError(f"{self.checklist} item {self.number}: {self.person!r} is not one of PERSON_ITEMS")


_EXPORT = "the run's code at the commit on this card"
_NO_SAMPLE_SIZE = (
    "no sample size was set or calculated in advance (none is stated in the run's settings): a retrospective study "
    "of an existing archive uses the films it has, the test split in full, and the intervals state the precision "
    "that gives"
)
_DEMOGRAPHICS = ("sex, age and view counts for each split (train, val, test): the card has them only for the "
                 "evaluated split, as subgroups (evaluation.subgroups)")
_WRITTEN = "a person writes it"

# CLAIM 2024 renamed 2020's 'Ground truth' to 'Reference standard', added 'Testing data' and renumbered: the
# numbers and sections below are the 2024 ones (checked against two independent copies of the 2024 list).
_CLAIM_ITEMS = (
    ReportingItem(CLAIM, "1", "Title / abstract", "Identification as a study of AI methodology, specifying the "
                  "category of technology used", card=("model.architecture",)),
    ReportingItem(CLAIM, "2", "Abstract", "Summary of study design, methods, results and conclusions",
                  missing=f"an abstract: {_WRITTEN}, from this card's sections"),
    ReportingItem(CLAIM, "3", "Introduction", "Scientific and clinical background, including the intended use and "
                  "role of the AI approach", person="intended_use"),
    ReportingItem(CLAIM, "4", "Introduction", "Study aims, objectives and hypotheses",
                  missing=f"the aims and hypotheses: {_WRITTEN} (the card says the goal, item 6)"),
    ReportingItem(CLAIM, "5", "Methods: study design", "Prospective or retrospective study",
                  card=("study_design.timing",)),
    ReportingItem(CLAIM, "6", "Methods: study design", "Study goal", card=("study_design.goal",)),
    ReportingItem(CLAIM, "7", "Methods: data", "Data sources", card=("data.source",)),
    ReportingItem(CLAIM, "8", "Methods: data", "Inclusion and exclusion criteria", card=("data.eligibility",)),
    ReportingItem(CLAIM, "9", "Methods: data", "Data pre-processing", card=("preprocessing",)),
    ReportingItem(CLAIM, "10", "Methods: data", "Selection of data subsets", card=("data.split",),
                  missing="the run's split.csv (train the run again to have it)"),
    ReportingItem(CLAIM, "11", "Methods: data", "De-identification methods",
                  not_applicable="the films come from an archive its publisher released de-identified; the run "
                                 "de-identifies nothing (cite the publisher's method)"),
    ReportingItem(CLAIM, "12", "Methods: data", "How missing data were handled",
                  card=("data.films_unreadable_and_excluded",)),
    ReportingItem(CLAIM, "13", "Methods: data", "Image acquisition protocol",
                  missing="the archive's acquisition protocol (machines, exposure, PA or AP): not in the run's "
                          "files; cite the publisher's description"),
    ReportingItem(CLAIM, "14", "Methods: reference standard", "Definition of method(s) used to obtain the reference "
                  "standard", card=("data.label_definitions",)),
    ReportingItem(CLAIM, "15", "Methods: reference standard", "Rationale for choosing the reference standard",
                  missing=f"why report-mined labels and not radiologists reading the films: {_WRITTEN}"),
    ReportingItem(CLAIM, "16", "Methods: reference standard", "Source of reference standard annotations",
                  card=("data.label_definitions",)),
    ReportingItem(CLAIM, "17", "Methods: reference standard", "Annotation of test set",
                  card=("data.label_definitions",)),
    ReportingItem(CLAIM, "18", "Methods: reference standard", "Measures of inter- and intra-rater variability",
                  card=("evaluation.radiologist_labels",),
                  missing="radiologists' labels for some of the scored films (the evaluation measures Cohen's kappa "
                          "on those it finds)"),
    ReportingItem(CLAIM, "19", "Methods: data partitions", "How data were assigned to partitions",
                  card=("data.split.validation",), missing="the run's split.csv"),
    ReportingItem(CLAIM, "20", "Methods: data partitions", "Level at which partitions are disjoint",
                  card=("data.split.patients_in_two_splits",), missing="the run's split.csv"),
    ReportingItem(CLAIM, "21", "Methods: testing data", "Intended sample size", not_applicable=_NO_SAMPLE_SIZE),
    ReportingItem(CLAIM, "22", "Methods: model", "Detailed description of model", card=("model.architecture",)),
    ReportingItem(CLAIM, "23", "Methods: model", "Software libraries, frameworks and packages", card=("software",),
                  missing="the environment record in config.json (train the run again to have it)"),
    ReportingItem(CLAIM, "24", "Methods: model", "Initialization of model parameters",
                  card=("model.initial_weights",)),
    ReportingItem(CLAIM, "25", "Methods: training", "Details of training approach", card=("training",)),
    ReportingItem(CLAIM, "26", "Methods: training", "Method of selecting the final model",
                  card=("training.best_epoch",), missing="the run's history (history.json)"),
    ReportingItem(CLAIM, "27", "Methods: training", "Ensembling techniques",
                  not_applicable="one network, its best checkpoint: no ensemble"),
    ReportingItem(CLAIM, "28", "Methods: evaluation", "Metrics of model performance",
                  card=("evaluation.mean_auroc", "evaluation.average_precision", "evaluation.calibration.per_finding")),
    ReportingItem(CLAIM, "29", "Methods: evaluation", "Statistical measures of significance and uncertainty",
                  card=("evaluation.intervals",)),
    ReportingItem(CLAIM, "30", "Methods: evaluation", "Robustness or sensitivity analysis",
                  card=("evaluation.patient_level_mean_auroc", "evaluation.subgroups.min_positive_patients",
                        "evaluation.prevalence_shift"),
                  missing="evaluate the run again: its metrics predate these figures"),
    ReportingItem(CLAIM, "31", "Methods: evaluation", "Methods for explainability or interpretability",
                  card=("evaluation.localization",),
                  missing="Grad-CAM scored against the boxes of BBox_List_2017.csv: a data root with that file"),
    ReportingItem(CLAIM, "32", "Methods: evaluation", "Evaluation on internal data", card=("evaluation.films",)),
    ReportingItem(CLAIM, "33", "Methods: evaluation", "Testing on external data", card=("external_validation",),
                  missing="the run scored on another hospital's collection (notebook 07 writes external/<collection>/"
                          "external.json into the run folder)"),
    ReportingItem(CLAIM, "34", "Methods: evaluation", "Clinical trial registration",
                  not_applicable="not a clinical trial: a retrospective study of archived films, nobody recruited"),
    ReportingItem(CLAIM, "35", "Results: data", "Numbers of patients or examinations included and excluded",
                  card=("data.split.films", "data.films_unreadable_and_excluded"), missing="the run's split.csv"),
    ReportingItem(CLAIM, "36", "Results: data", "Demographic and clinical characteristics of cases in each "
                  "partition", missing=_DEMOGRAPHICS),
    ReportingItem(CLAIM, "37", "Results: model performance", "Performance metrics and measures of statistical "
                  "uncertainty", card=("evaluation.per_finding_auroc", "evaluation.mean_auroc")),
    ReportingItem(CLAIM, "38", "Results: model performance", "Estimates of diagnostic performance and their "
                  "precision", card=("evaluation.operating_points",),
                  missing="evaluate the run again: its metrics have no operating points with intervals"),
    ReportingItem(CLAIM, "39", "Results: model performance", "Failure analysis of incorrect results",
                  missing="what the model's most confident false positives and negatives have in common (notebook "
                          f"03's gallery shows them): {_WRITTEN}"),
    ReportingItem(CLAIM, "40", "Discussion", "Study limitations", card=("limitations",)),
    ReportingItem(CLAIM, "41", "Discussion", "Implications for practice, including intended use and/or clinical "
                  "role", person="clinical_role"),
    ReportingItem(CLAIM, "42", "Other information", "Reference to the full study protocol or additional technical "
                  "details", card=("code",), missing="the commit record in config.json"),
    ReportingItem(CLAIM, "43", "Other information", "Availability of software, trained model and/or data",
                  missing=f"where {_EXPORT}, the checkpoint (or model.onnx) and the films can be had: {_WRITTEN}"),
    ReportingItem(CLAIM, "44", "Other information", "Sources of funding and other support; role of funders",
                  missing=f"funders and their role: {_WRITTEN}"),
)

_TRIPOD_ITEMS = (
    ReportingItem(TRIPOD, "1", "Title", "Identify the study as developing or evaluating a prediction model, the "
                  "target population and the outcome",
                  missing=f"a title naming the development, the population (the intended-use answers) and the 14 "
                          f"findings: {_WRITTEN}"),
    ReportingItem(TRIPOD, "2", "Abstract", "See TRIPOD+AI for Abstracts",
                  missing=f"an abstract following TRIPOD+AI for Abstracts: {_WRITTEN}"),
    ReportingItem(TRIPOD, "3a", "Introduction: background", "Healthcare context and rationale, including existing "
                  "models", missing=f"the context and rationale: {_WRITTEN} (existing models: the comparison with "
                                    "TorchXRayVision, when recorded)"),
    ReportingItem(TRIPOD, "3b", "Introduction: background", "Target population and intended purpose in the care "
                  "pathway, including intended users", person="intended_use"),
    ReportingItem(TRIPOD, "3c", "Introduction: background", "Known health inequalities between sociodemographic "
                  "groups", missing=f"what is known of such inequalities in the target population: {_WRITTEN}"),
    ReportingItem(TRIPOD, "4", "Introduction: objectives", "Objectives, including development or validation",
                  card=("study_design.goal",)),
    ReportingItem(TRIPOD, "5a", "Methods: data", "Sources of data for development and evaluation, rationale, "
                  "representativeness", card=("data.source", "data.split")),
    ReportingItem(TRIPOD, "5b", "Methods: data", "Dates of the collected participant data",
                  missing="the dates the films were taken: not in the run's files; cite the publisher's"),
    ReportingItem(TRIPOD, "6a", "Methods: participants", "Study setting, number and location of centres",
                  missing="the setting and centres: the run records its data root, not the hospitals; cite the "
                          "publisher (NIH ChestX-ray14: one hospital, the NIH Clinical Center)"),
    ReportingItem(TRIPOD, "6b", "Methods: participants", "Eligibility criteria", card=("data.eligibility",)),
    ReportingItem(TRIPOD, "6c", "Methods: participants", "Treatments received and how they were handled",
                  not_applicable="a diagnostic model of findings on the same film: no treatment enters its input or "
                                 "its labels"),
    ReportingItem(TRIPOD, "7", "Methods: data preparation", "Pre-processing and quality checking",
                  card=("preprocessing", "data.films_unreadable_and_excluded")),
    ReportingItem(TRIPOD, "8a", "Methods: outcome", "Definition of the outcome, how and when assessed",
                  card=("data.label_definitions",)),
    ReportingItem(TRIPOD, "8b", "Methods: outcome", "Qualifications and demographics of outcome assessors",
                  missing="who wrote the reports the labels were mined from: not published with the archive "
                          "(agreement with radiologists: CLAIM item 18)"),
    ReportingItem(TRIPOD, "8c", "Methods: outcome", "Actions to blind the outcome assessment",
                  card=("data.label_blinding",)),
    ReportingItem(TRIPOD, "9a", "Methods: predictors", "Choice of initial predictors and any pre-selection",
                  not_applicable="the input is the film's pixels: no predictors were chosen"),
    ReportingItem(TRIPOD, "9b", "Methods: predictors", "Definition of all predictors, how and when measured",
                  card=("preprocessing",)),
    ReportingItem(TRIPOD, "9c", "Methods: predictors", "Qualifications of predictor assessors",
                  not_applicable="the input is the film itself, not a reader's interpretation of it"),
    ReportingItem(TRIPOD, "10", "Methods: sample size", "How the study size was arrived at",
                  not_applicable=_NO_SAMPLE_SIZE),
    ReportingItem(TRIPOD, "11", "Methods: missing data", "How missing data were handled",
                  card=("data.films_unreadable_and_excluded",)),
    ReportingItem(TRIPOD, "12a", "Methods: analytical methods", "How the data were used and partitioned",
                  card=("data.split",), missing="the run's split.csv"),
    ReportingItem(TRIPOD, "12b", "Methods: analytical methods", "How predictors were handled (rescaling, "
                  "standardisation)", card=("preprocessing.intensity",)),
    ReportingItem(TRIPOD, "12c", "Methods: analytical methods", "Type of model, model-building steps, "
                  "hyperparameter tuning, internal validation", card=("model.architecture", "training")),
    ReportingItem(TRIPOD, "12d", "Methods: analytical methods", "Heterogeneity of performance across clusters "
                  "(e.g., hospitals)", card=("external_validation",),
                  missing="performance at other hospitals (notebook 07): the run's own films come from one archive"),
    ReportingItem(TRIPOD, "12e", "Methods: analytical methods", "All measures and plots of performance "
                  "(discrimination, calibration, clinical utility)",
                  card=("evaluation.mean_auroc", "evaluation.calibration.per_finding", "evaluation.operating_points")),
    ReportingItem(TRIPOD, "12f", "Methods: analytical methods", "Model updating (e.g., recalibration)",
                  card=("evaluation.calibration.recalibration.method",),
                  missing="a recalibration fitted on the validation predictions (evaluate with recalibration)"),
    ReportingItem(TRIPOD, "12g", "Methods: analytical methods", "How the model predictions were calculated",
                  card=("code", "model.label_order")),
    ReportingItem(TRIPOD, "13", "Methods: class imbalance", "Class imbalance methods and any recalibration",
                  card=("training.class_weighting",)),
    ReportingItem(TRIPOD, "14", "Methods: fairness", "Approaches to address model fairness", person="ethics"),
    ReportingItem(TRIPOD, "15", "Methods: model output", "Output of the model and how thresholds were identified",
                  card=("evaluation.thresholds",)),
    ReportingItem(TRIPOD, "16", "Methods: training versus evaluation", "Differences between development and "
                  "evaluation data", card=("evaluation.prevalence_shift",),
                  missing="validation and test prevalences (evaluate the run again with predictions_val.csv)"),
    ReportingItem(TRIPOD, "17", "Methods: ethical approval", "Ethics committee and consent", person="ethics"),
    ReportingItem(TRIPOD, "18a", "Open science", "Funding and the role of the funders",
                  missing=f"funders and their role: {_WRITTEN}"),
    ReportingItem(TRIPOD, "18b", "Open science", "Conflicts of interest",
                  missing=f"every author's conflicts of interest: {_WRITTEN}"),
    ReportingItem(TRIPOD, "18c", "Open science", "Where the protocol can be accessed",
                  missing=f"where the protocol is, or that none was prepared: {_WRITTEN}"),
    ReportingItem(TRIPOD, "18d", "Open science", "Registration", missing=f"the registration, or that there was "
                                                                         f"none: {_WRITTEN}"),
    ReportingItem(TRIPOD, "18e", "Open science", "Availability of the study data",
                  missing=f"where the films can be had (the card records the data root and its fingerprints): "
                          f"{_WRITTEN}"),
    ReportingItem(TRIPOD, "18f", "Open science", "Availability of the analytical code",
                  missing=f"where {_EXPORT} can be had: {_WRITTEN}"),
    ReportingItem(TRIPOD, "19", "Patient and public involvement", "Patient and public involvement, or none",
                  missing=f"any patient and public involvement, or that there was none: {_WRITTEN}"),
    ReportingItem(TRIPOD, "20a", "Results: participants", "Flow of participants, with and without the outcome",
                  card=("data.split.films", "data.positive_films_per_split"), missing="the run's split.csv"),
    ReportingItem(TRIPOD, "20b", "Results: participants", "Characteristics overall and per data source",
                  missing=_DEMOGRAPHICS),
    ReportingItem(TRIPOD, "20c", "Results: participants", "For evaluation, comparison with the development data",
                  card=("evaluation.prevalence_shift",),
                  missing="validation and test prevalences (evaluate the run again with predictions_val.csv)"),
    ReportingItem(TRIPOD, "21", "Results: model development", "Participants and outcome events in each analysis",
                  card=("data.positive_films_per_split",), missing="the run's split.csv"),
    ReportingItem(TRIPOD, "22", "Results: model specification", "The full model, to predict for new individuals",
                  card=("model.architecture", "model.label_order")),
    ReportingItem(TRIPOD, "23a", "Results: model performance", "Performance with confidence intervals, including "
                  "key subgroups", card=("evaluation.per_finding_auroc", "evaluation.subgroups.means")),
    ReportingItem(TRIPOD, "23b", "Results: model performance", "Heterogeneity in performance across clusters",
                  card=("external_validation",),
                  missing="performance at other hospitals (notebook 07): the run's own films come from one archive"),
    ReportingItem(TRIPOD, "24", "Results: model updating", "Results of any model updating",
                  card=("evaluation.calibration.recalibration.method",),
                  missing="a recalibration fitted on the validation predictions (evaluate with recalibration)"),
    ReportingItem(TRIPOD, "25", "Discussion", "Overall interpretation, including fairness",
                  missing=f"the interpretation of these results: {_WRITTEN}"),
    ReportingItem(TRIPOD, "26", "Discussion", "Limitations", card=("limitations",)),
    ReportingItem(TRIPOD, "27a", "Discussion: usability", "How poor quality or unavailable input data are handled",
                  person="out_of_scope"),
    ReportingItem(TRIPOD, "27b", "Discussion: usability", "Users' interaction and expertise required",
                  person="clinical_role"),
    ReportingItem(TRIPOD, "27c", "Discussion: usability", "Next steps for research",
                  missing=f"the next study (e.g., a validation at another hospital): {_WRITTEN}"),
)
REPORTING_ITEMS: tuple[ReportingItem, ...] = _CLAIM_ITEMS + _TRIPOD_ITEMS
_ABSENT = object()


def _at(card: dict[str, Any], path: str) -> Any:
    """The card's value at a dotted path (``evaluation.mean_auroc``), or _ABSENT."""
    value: Any = card
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


def _holds(value: Any) -> bool:
    """Whether a card value records something: not absent, empty, unavailable or a 'not recorded' note."""
    if value is _ABSENT or value is None or (isinstance(value, (str, list, dict)) and not value):
        return False
    if isinstance(value, dict) and value.get("available") is False:
        return False
    return not (isinstance(value, str) and value.startswith("not recorded"))


def _short(value: Any) -> str | None:
    """A value short enough to stand in a checklist row, or None (the row points to the section)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, str):
        return value if len(value) <= 160 else value[:157] + "..."
    if isinstance(value, dict) and isinstance(value.get("auroc"), (int, float)):
        return _with_interval(value["auroc"], value.get("ci_low"), value.get("ci_high"))
    if isinstance(value, dict):
        for key in ("kind", "method", "epoch"):  # initial weights, thresholds, the best epoch: what names them
            if key in value:
                return f"{key} {_short(value[key])}"
        if 0 < len(value) <= 4 and all(isinstance(v, (str, int, float)) for v in value.values()):
            return ", ".join(f"{key} {_short(v)}" for key, v in value.items())
    if isinstance(value, list):
        return f"{len(value)} entries"
    return None


def reporting_checklist(card: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per REPORTING_ITEMS item: its status computed from what ``card`` holds, where, and why."""
    evaluated = bool(card.get("evaluation", {}).get("available"))
    rows = []
    for item in REPORTING_ITEMS:
        row: dict[str, Any] = {"checklist": item.checklist, "number": item.number, "section": item.section,
                               "title": item.title, "status": MISSING, "where": None, "value": None, "note": None}
        if item.person is not None:
            row.update(status=BY_A_PERSON, where=f"to_be_written_by_a_person.{item.person}",
                       note="answer the questions at the top of the card: " + " ".join(PERSON_ITEMS[item.person]))
        elif item.not_applicable is not None:
            row.update(status=NOT_APPLICABLE, note=item.not_applicable)
        else:
            unheld = [path for path in item.card if not _holds(_at(card, path))]
            if item.card and not unheld:
                row.update(status=FILLED, where=", ".join(item.card), value=_short(_at(card, item.card[0])))
            elif not evaluated and any(path.startswith("evaluation.") for path in unheld):
                row["note"] = f"evaluate the run: cxrutils evaluate --run {card.get('run_dir')}"
            elif unheld:
                row["note"] = f"not on this card: {', '.join(unheld)}" + (f"; {item.missing}" if item.missing else "")
            else:
                row["note"] = item.missing
        rows.append(row)
    return rows


def _checklist_section(card: dict[str, Any]) -> dict[str, Any]:
    rows = reporting_checklist(card)
    counts = {checklist: {status: sum(r["status"] == status for r in rows if r["checklist"] == checklist)
                          for status in STATUSES} for checklist in (CLAIM, TRIPOD)}
    return {"sources": list(CHECKLIST_SOURCES), "note": CHECKLIST_NOTE, "counts": counts, "items": rows}


def _person_blanks() -> dict[str, Any]:
    """Each blank with its questions and the checklist items it answers."""
    blanks = {}
    for key, questions in PERSON_ITEMS.items():
        answered = [f"{item.checklist} {item.number}" for item in REPORTING_ITEMS if item.person == key]
        blanks[key] = {"text": TO_BE_WRITTEN, "questions": list(questions), "answers checklist items":
                       ", ".join(answered)}
    return blanks


# --------------------------------------------------------------------------- figures from the run's record


def _radiologist_agreement(metrics: dict[str, Any] | None) -> str:
    """What the run's own evaluation measured of the labels against radiologists who read the films, in words."""
    section = (metrics or {}).get("radiologist_labels") or {}
    kappas = {row["finding"]: row.get("kappa") for row in section.get("per_finding", [])
              if row.get("kappa") is not None}
    if not section.get("available") or not kappas:
        why = "this run has not been evaluated" if metrics is None else "none of the films evaluated here has them"
        return ("Agreement of these labels with radiologists who read the films is measured in the evaluation "
                "report (notebook 03, section 8, against radiologists' labels) on the scored films that have "
                f"radiologist labels; {why}.")
    findings = ", ".join(f"{name} {value:.2f}" for name, value in kappas.items())
    return (f"On the {section['films']:,} films of this evaluation that radiologists also labelled (Majkowska et al., "
            f"Radiology 2019), NIH's labels agree with theirs with Cohen's kappa {min(kappas.values()):.2f} to "
            f"{max(kappas.values()):.2f} ({findings}): every metric here is against noisy labels.")


def _children_limitation(metrics: dict[str, Any] | None) -> str:
    """Children in the evaluated films, counted from the run's metrics (or said to be uncounted)."""
    children = (metrics or {}).get("paediatric")
    if not children:
        return ("Frontal films only (PA and AP); not validated on lateral films, and not validated on children "
                "separately (how many children the evaluated films hold was not recorded: evaluate the run again).")
    return (f"Frontal films only (PA and AP); not validated on lateral films. Children: {children['films']:,} of the "
            f"{metrics['n_images']:,} evaluated {metrics['split']} films ({children['share_of_films']:.1%}), from "
            f"{children['patients']:,} patients, were under {children['under_years']:g}; they are scored with the "
            f"adults and also shown as their own age band (<{children['under_years']:g}) in the subgroups. That is "
            "too few patients to validate the model for children, and it is not validated for them.")


def _with_interval(value: Any, low: Any, high: Any) -> str | None:
    """``0.812 [0.790, 0.833]``; the value alone without an interval; None without a value."""
    if value is None:
        return None
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _average_precision_rows(metrics: dict[str, Any]) -> list[dict[str, Any]] | str:
    """AP per finding with its interval, beside its chance level (the prevalence)."""
    per_class = metrics["per_class"]
    if "average_precision_ci_low" not in next(iter(per_class.values()), {}):
        return "not recorded: evaluate the run again for AP intervals"
    prevalence = (metrics.get("prevalence") or {}).get(metrics["split"], {})
    return [{"finding": finding, "AP [95% CI]": _with_interval(row["average_precision"],
                                                               row["average_precision_ci_low"],
                                                               row["average_precision_ci_high"]),
             "prevalence (chance level)": prevalence.get(finding)} for finding, row in per_class.items()]


def _operating_point_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    """Sensitivity, specificity and PPV with intervals at the run's thresholds and the fixed ones, and prevalences."""
    section = metrics.get("operating_points_with_intervals")
    if not section or not section.get("available"):
        return {"available": False, "note": (section or {}).get("note") or "not recorded: evaluate the run again"}
    method = metrics["thresholds"]["method"]
    rules = [method] + [rule for rule in section["rules"] if rule.startswith(("sensitivity ", "specificity "))]
    rows = []
    for finding in section["rules"][method]:
        first = section["rules"][method][finding]
        row: dict[str, Any] = {"finding": finding, "prevalence (val)": first["val_prevalence"],
                               f"prevalence ({metrics['split']})": first["test_prevalence"]}
        for rule in rules:
            values = section["rules"][rule][finding]
            for metric, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV")):
                row[f"{rule}: {label}"] = _with_interval(values[metric], values[f"{metric}_ci_low"],
                                                         values[f"{metric}_ci_high"])
        rows.append(row)
    return {"available": True, "rules": rules, "thresholds_chosen_on": "validation predictions only",
            "intervals": "95% bootstrap resampling validation patients (threshold re-chosen) and test patients",
            "what_transfers": section.get("transfer"), "per_finding": rows}


def _calibration_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """O/E, slope and scaled Brier with intervals per finding, the recalibration, and why the raw model is off."""
    calibration = metrics["calibration"]
    equal_mass = calibration.get("equal_mass")
    if not equal_mass:
        return {"figures": "not recorded: evaluate the run again for O/E, slope and scaled Brier"}
    rows = [{"finding": finding, **{label: _with_interval(row[figure], row[f"{figure}_ci_low"],
                                                          row[f"{figure}_ci_high"])
                                    for figure, label in (("observed_expected", "O/E"), ("slope", "slope"),
                                                          ("scaled_brier", "scaled Brier"))}}
            for finding, row in equal_mass["per_class"].items()]
    recalibration = calibration.get("recalibration") or {}
    return {"per_finding": rows, "definitions": equal_mass.get("definitions"),
            "recalibration": ({"method": recalibration.get("method"), "fitted_on": recalibration.get("fitted_on"),
                               "note": recalibration.get("note")} if recalibration.get("available")
                              else recalibration.get("note")),
            "notes": calibration.get("notes")}


def _onnx_export(run_dir: Path) -> dict[str, Any]:
    """The ONNX file's hash as it is now, and its verification when the record beside it is of this very file."""
    digest = files.sha256_of(run_folder.onnx_path(run_dir))
    record = run_folder.read_onnx_record(run_dir) or {}
    verification = record.get("verification") if record.get("sha256") == digest else None
    return {"file": run_folder.ONNX_NAME, "sha256": digest,
            "verified_against_torch": verification or "no verification record for this file (python -m "
                                                      "cxrutils.export writes one)"}


def _prevalence_shift(metrics: dict[str, Any]) -> list[dict[str, Any]] | str:
    """Validation and test prevalence per finding (metrics["prevalence"]), and their ratio: what moved between them."""
    split = metrics["split"]
    prevalence = metrics.get("prevalence") or {}
    tested = prevalence.get(split)
    if not tested:
        return "not recorded: evaluate the run again for the prevalences"
    validation = prevalence.get("validation") or {}
    rows = []
    for finding, test_value in tested.items():
        val_value = validation.get(finding)
        rows.append({"finding": finding, "prevalence (val)": val_value, f"prevalence ({split})": test_value,
                     f"{split} / val": test_value / val_value if val_value and test_value is not None else None})
    return rows


def _subgroups(metrics: dict[str, Any]) -> dict[str, Any]:
    """Subgroup mean AUROCs, the rule a figure must meet, and that they are exploratory."""
    section = metrics["subgroups"]
    minimum = section.get("min_positive_patients")
    return {
        "status": "exploratory",
        "min_positive_patients": minimum,
        "rule": ("not recorded: evaluate the run again for the rule" if minimum is None else
                 f"a subgroup's AUROC is shown only where the group has at least {minimum} patients with a positive "
                 "film of the finding; the mean is over the findings that pass"),
        "multiplicity": section.get("multiplicity"),
        "means": [row for row in section["table"] if row["finding"] == "mean"],
    }


def _metric_label(key: str) -> str:
    """``pointing_game`` -> ``pointing game``, ``t_iobb_0.1`` -> ``T(IoBB) 0.1``; any other key as it is."""
    if key == "pointing_game":
        return "pointing game"
    for prefix, name in (("t_iobb_", "T(IoBB)"), ("t_iou_", "T(IoU)")):
        if key.startswith(prefix):
            return f"{name} {key[len(prefix):]}"
    return key


def _localization(section: dict[str, Any]) -> dict[str, Any]:
    """Every accuracy the evaluation recorded for all boxes, with its interval where recorded, beside chance."""
    summary = {key: section.get(key) for key in ("available", "boxes", "gradcam_layer")}
    if not section.get("available"):
        return summary | {"note": section.get("note")}
    scores = section["scores"]["all"]
    baseline = (section.get("random_baseline") or {}).get("all") or {}
    # The paired difference from random, where the evaluation recorded one: {row: {metric: {difference, ...}}}.
    versus = section.get("versus_random")
    versus_all = ({metric: row for metric, row in versus["all"].items() if isinstance(row, dict)}
                  if isinstance(versus, dict) and isinstance(versus.get("all"), dict) else {})
    rows = []
    for key, value in scores.items():
        if key in _LOCALIZATION_COUNTS or key.endswith(_INTERVAL_SUFFIXES) or not isinstance(value, (int, float)):
            continue
        row: dict[str, Any] = {"metric": _metric_label(key), "Grad-CAM [95% CI]": _with_interval(
            value, scores.get(f"{key}_ci_low"), scores.get(f"{key}_ci_high")),
            "random heatmaps": _with_interval(baseline.get(key), baseline.get(f"{key}_ci_low"),
                                              baseline.get(f"{key}_ci_high"))}
        if key in versus_all:
            difference = versus_all[key]
            row["Grad-CAM - random [95% CI]"] = _with_interval(difference.get("difference"),
                                                              difference.get("ci_low"), difference.get("ci_high"))
            row["beats chance"] = difference.get("beats_chance")
        rows.append(row)
    summary |= {"accuracies (all boxes)": rows, "random_baseline_repeats": section.get("random_baseline_repeats")}
    if versus is not None and not versus_all:  # recorded in a shape this card does not know: shown as it is
        summary["versus_random"] = versus
    return summary


def _external_validations(run_dir: Path) -> dict[str, Any]:
    """Each collection the run was scored on (external/<collection>/external.json): films, verdict, home vs away."""
    folder = run_dir / EXTERNAL_FOLDER
    if not folder.is_dir():
        return {"available": False, "note": f"none recorded: the run folder has no {EXTERNAL_FOLDER}/ folder "
                                            "(notebook 07 writes external/<collection>/external.json there)"}
    collections = [_external_collection(path) for path in sorted(folder.iterdir()) if path.is_dir()]
    section: dict[str, Any] = {"available": bool(collections), "collections": collections}
    others = sorted(path.name for path in folder.iterdir() if not path.is_dir())
    if others:
        section["other files in external/"] = others
    if not collections:
        section["note"] = f"the {EXTERNAL_FOLDER}/ folder holds no collection's folder"
    return section


def _external_collection(folder: Path) -> dict[str, Any]:
    result = folder / EXTERNAL_RESULT_NAME
    found = sorted(path.name for path in folder.iterdir())
    if not result.is_file():
        return {"collection": folder.name, "note": f"no {EXTERNAL_RESULT_NAME}; files found", "files": found}
    try:
        document = json.loads(result.read_text(encoding="utf-8"))
        summary, provenance = document["summary"], document["provenance"]
        # Home and away over the same findings: those scored on both sides.
        both = [row for row in document["findings"]
                if row.get("home_auroc") is not None and row.get("away_auroc") is not None]
        return {
            "collection": document.get("collection", folder.name),
            "verdict": "external" if provenance["external"] else "not external",
            "why": provenance.get("why"),
            "films scored": summary["films_scored"],
            "patients scored": summary.get("patients_scored"),
            "findings scored home and away": len(both),
            "mean AUROC home (NIH test)": sum(row["home_auroc"] for row in both) / len(both) if both else None,
            "mean AUROC away": sum(row["away_auroc"] for row in both) / len(both) if both else None,
            "home note": document.get("home_note"),
            "synthetic": document.get("synthetic"),
            "headline": document.get("headline") or summary.get("headline"),
        }
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as err:  # ValueError: bad JSON
        return {"collection": folder.name, "note": f"{result} is not an external validation this card can read "
                                                   f"({type(err).__name__}: {err}); files found", "files": found}


def _positive_films_per_split(split: pd.DataFrame) -> list[dict[str, Any]]:
    """Films with each finding in train, val and test: the outcome events of each analysis."""
    labels = split["finding_labels"].fillna("").astype(str).str.replace(r"\s*\|\s*", "|", regex=True).str.strip()
    counts = labels.str.get_dummies(sep="|").groupby(split["split"]).sum()
    return [{"finding": finding, **{side: int(counts.at[side, finding]) if side in counts.index and finding in
                                    counts.columns else 0 for side in _SPLITS}} for finding in FINDINGS]


def _study_design(synthetic: bool, evaluation: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    if synthetic:
        timing = "SYNTHETIC: phantoms rendered for this run; no patients, no study of patients"
    else:
        timing = ("retrospective: films and report-mined labels of an existing archive, collected before the "
                  "model existed")
    goal = "model development: training, and thresholds chosen on validation patients"
    goal += (f"; internal testing on the held-out {evaluation['split']} patients" if evaluation["available"] else
             "; not tested yet (evaluate the run)")
    tested_away = [row["collection"] for row in external.get("collections", []) if row.get("verdict")]
    if tested_away:
        goal += f"; testing on other collections: {', '.join(map(str, tested_away))}"
    return {"timing": timing, "goal": goal}
def build_card(run_dir: str | Path) -> dict[str, Any]:
    """The model card's content, as plain JSON, from the run folder alone."""
    run_dir = resolve(run_dir)
    if not (run_dir / run_folder.CONFIG_NAME).is_file():
        raise run_folder.NotATrainedRunError(
            f"{run_dir} has no {run_folder.CONFIG_NAME}: it is not a training run, so there is nothing to describe. "
            "Train it first (notebook 02, or cxrutils train --config ...)."
        )
    config = run_folder.read_config(run_dir)
    metrics = run_folder.read_metrics(run_dir)
    comparison = run_folder.read_comparison(run_dir)
    history = run_folder.read_history(run_dir) if (run_dir / run_folder.HISTORY_JSON).is_file() else None
    bad_files = run_folder.read_bad_files(run_dir)
    split = run_folder.read_split(run_dir) if run_folder.has_split(run_dir) else None
    synthetic = bool(config.get("synthetic"))

    data: dict[str, Any] = {
        "source": config.get("data_description"),
        "data_root": config.get("data_root"),
        "synthetic": synthetic,
        "metadata_fingerprint": config.get("data_fingerprint"),
        "image_cache_fingerprint": config.get("cache_fingerprint"),
        "films_unreadable_and_excluded": len(bad_files),
        "label_definitions": f"{LABEL_DEFINITIONS} {_radiologist_agreement(metrics)}",
        "label_blinding": ("SYNTHETIC: the labels are the phantom generator's, set before the model existed"
                           if synthetic else "the labels were mined from reports written in routine care, before "
                                             "the model existed: blind to its output by construction"),
    }
    if split is not None:
        sides = {side: split[split["split"] == side] for side in _SPLITS}
        shared = len(set(sides["train"]["patient_id"]) & set(sides["test"]["patient_id"])) + len(
            set(sides["val"]["patient_id"]) & (set(sides["train"]["patient_id"]) | set(sides["test"]["patient_id"])))
        data["split"] = {
            "kind": config.get("split_kind"),
            "films": {side: len(rows) for side, rows in sides.items()},
            "patients": {side: int(rows["patient_id"].nunique()) for side, rows in sides.items()},
            "patients_in_two_splits": shared,
            "films_in_no_split": int((~split["split"].isin(_SPLITS)).sum()),
            "validation": f"{config.get('val_fraction')} of the train_val patients, drawn with split_seed "
                          f"{config.get('split_seed')}",
        }
        unreadable = ("left out and listed in bad_files.csv" if config.get("skip_bad_images") else
                      "not allowed (skip_bad_images off: one stops training)")
        data["eligibility"] = (
            f"the films the data root's metadata lists, each assigned to train, val or test by the "
            f"{config.get('split_kind')} split ({data['split']['films_in_no_split']:,} films in none); films whose "
            f"file did not decode were {unreadable} ({len(bad_files):,} left out)")
        data["positive_films_per_split"] = _positive_films_per_split(split)
    best = None
    if history is not None and len(history):
        best_row = history.loc[history["val_auroc_mean"].idxmax()]
        best = {"epoch": int(best_row["epoch"]), "val_auroc_mean": float(best_row["val_auroc_mean"])}
    model = {
        "architecture": f"{config.get('arch', 'densenet121')} (torchvision), 1-channel stem, {config.get('head')} head, "
                        "14 sigmoid outputs",
        "fine_tuning": config.get("strategy"),
        "initial_weights": config.get("initial_weights") or {"kind": config.get("weights")},
        "label_order": ", ".join(config.get("label_order", FINDINGS)),
    }
    if run_folder.onnx_path(run_dir).is_file():
        model["onnx_export"] = _onnx_export(run_dir)
    preprocessing = {
        "decode": "PNG/JPEG to 8-bit grey (RGBA: first channel; 16-bit: scaled from its bit depth)",
        "geometry": f"padded to a centred square (nothing cropped), resized to {config.get('cache_size')} px "
                    f"(cache), then {config.get('input_size')} px (input)",
        "intensity": f"[0, 1], then (x - {GRAY_MEAN}) / {GRAY_STD} (ImageNet statistics averaged over RGB)",
        "augmentation (training only)": config.get("augment"),
    }
    training = {key: config.get(key) for key in (
        "lr", "weight_decay", "scheduler", "plateau_factor", "plateau_patience", "epochs", "early_stopping_patience",
        "batch_size", "class_weighting", "amp", "channels_last", "compile", "seed", "split_seed")}
    training.update({"loss": "binary cross-entropy with logits", "optimiser": "AdamW", "world_size":
                     config.get("world_size"), "epochs_run": None if history is None else len(history),
                     "best_epoch": best, "train_films": config.get("train_images"),
                     "val_films": config.get("val_images")})
    evaluation: dict[str, Any] = {"available": metrics is not None}
    if metrics is not None:
        evaluation.update({
            "split": metrics["split"], "films": metrics["n_images"], "patients": metrics["n_patients"],
            "mean_auroc": {k: v for k, v in metrics["mean_auroc"].items() if k != "over"}
                          | {"findings_averaged": len(metrics["mean_auroc"].get("over", []))},
            "per_finding_auroc": [{"finding": f, **{k: v[k] for k in ("auroc", "ci_low", "ci_high", "positives")}}
                                  for f, v in metrics["per_class"].items()],
            "intervals": f"{metrics['bootstrap']['confidence']:.0%} patient bootstrap, "
                         f"{metrics['bootstrap']['n_resamples']} resamples",
            "thresholds": {"method": metrics["thresholds"]["method"], "chosen_on": metrics["thresholds"]["source"]},
            "calibration": {"mean_ece": metrics["calibration"]["mean_ece"],
                            "mean_brier": metrics["calibration"]["mean_brier"]} | _calibration_figures(metrics),
            "average_precision": _average_precision_rows(metrics),
            "operating_points": _operating_point_rows(metrics),
            "films_per_patient": None if "clusters" not in metrics else {
                "patients": metrics["clusters"]["patients"], **metrics["clusters"]["films_per_patient"],
                "top_decile_share_of_films": metrics["clusters"]["top_decile"]["share_of_films"]},
            "patient_level_mean_auroc": None if "patient_level_auroc" not in metrics else {
                key: metrics["patient_level_auroc"]["per_class"]["mean"][key]
                for key in ("auroc_films", "auroc_first_film", "auroc_weighted")}
                | {"findings_averaged": len(metrics["patient_level_auroc"]["mean_over"] or [])},
            "prevalence_shift": _prevalence_shift(metrics),
            "subgroups": _subgroups(metrics),
            "localization": _localization(metrics["localization"]),
            "radiologist_labels": metrics.get("radiologist_labels"),
        })
    compared: dict[str, Any] = {"available": comparison is not None}
    if comparison is not None:
        compared.update({"status": comparison["status"], "headline": comparison["headline"],
                         "lead_model": comparison.get("lead_model"),
                         "models": {name: {"provenance": record.get("provenance"),
                                           "mean_difference": record["mean_difference"],
                                           "random_init": record["random_init"]}
                                    for name, record in comparison.get("models", {}).items()}})
    external = _external_validations(run_dir)
    limitations = [
        "NIH ChestX-ray14 comes from one hospital (NIH Clinical Center); performance elsewhere is unknown until "
        "measured there.",
        "The labels were text-mined from reports, not read from the films: every metric here is against noisy labels.",
        _children_limitation(metrics),
    ]
    if synthetic:
        limitations.insert(0, "SYNTHETIC: this run was trained and evaluated on rendered phantoms. Nothing on this "
                              "card says anything about real chest X-rays or real patients.")
    card = files.plain({
        "title": f"Model card: run {run_dir.name}",
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": run_dir,
        "synthetic": synthetic,
        "to_be_written_by_a_person": _person_blanks(),
        "study_design": _study_design(synthetic, evaluation, external),
        "model": model,
        "data": data,
        "preprocessing": preprocessing,
        "training": training,
        "evaluation": evaluation,
        "external_validation": external,
        "comparison": compared,
        "software": config.get("environment"),
        "code": config.get("code"),
        "limitations": limitations,
    })
    card["reporting_checklist"] = _checklist_section(card)  # from what the card holds, so computed last
    return card


def _number_text(value: int | float) -> str:
    """3 decimals for AUROCs and fractions; small settings (weight decay) keep theirs; counts with separators."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) >= 0.01 or not value else f"{value:.2g}"


def _render_value(value: Any) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html_text(str(k))}</th><td>{_render_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            keys = list(dict.fromkeys(k for item in value for k in item))
            head = "".join(f"<th>{html_text(str(k))}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f"<td>{_render_value(item.get(k))}</td>" for k in keys) + "</tr>"
                           for item in value)
            return f"<table><tr>{head}</tr>{body}</table>"
        return "<ul>" + "".join(f"<li>{_render_value(item)}</li>" for item in value) + "</ul>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number_text(value)
    if value is None:
        return "<span class='missing'>not recorded</span>"
    text = html_text(str(value))
    return f"<span class='blank'>{text}</span>" if text == TO_BE_WRITTEN else text


_STATUS_CLASSES = {FILLED: "status-filled", BY_A_PERSON: "status-person", NOT_APPLICABLE: "status-na",
                   MISSING: "status-missing"}


def _render_checklist(section: dict[str, Any]) -> str:
    """The checklist as one table, each status coloured; every cell is text."""
    def cell(value: Any) -> str:
        return "" if value is None else html_text(value)

    head = "".join(f"<th>{name}</th>" for name in ("checklist", "item", "section", "status", "where (card)",
                                                   "value", "why, or what would fill it"))
    body = "".join(
        f"<tr class='{_STATUS_CLASSES[row['status']]}'><td>{cell(row['checklist'])}</td>"
        f"<td>{cell(row['number'])}. {cell(row['title'])}</td><td>{cell(row['section'])}</td>"
        f"<td>{cell(row['status'])}</td><td>{cell(row['where'])}</td><td>{cell(row['value'])}</td>"
        f"<td>{cell(row['note'])}</td></tr>" for row in section["items"])
    return (f"{_render_value({'sources': section['sources'], 'how to read it': section['note']})}"
            f"{_render_value(section['counts'])}<table class='checklist'><tr>{head}</tr>{body}</table>")


def render_card(card: dict[str, Any]) -> str:
    """The card as one self-contained HTML page."""
    sections = [("Model", card["model"]), ("Study design", card["study_design"]), ("Data", card["data"]),
                ("Preprocessing", card["preprocessing"]), ("Training", card["training"]),
                ("Evaluation", card["evaluation"]), ("External validation", card["external_validation"]),
                ("Comparison with TorchXRayVision", card["comparison"]), ("Software and hardware", card["software"]),
                ("Code", card["code"]), ("Limitations", card["limitations"])]
    body = ("<h2>To be written by a person: answer these before anyone relies on the model</h2>"
            f"{_render_value(card['to_be_written_by_a_person'])}")
    body += "".join(f"<h2>{html_text(title)}</h2>{_render_value(content)}" for title, content in sections)
    body += f"<h2>Reporting checklist (CLAIM 2024, TRIPOD+AI)</h2>{_render_checklist(card['reporting_checklist'])}"
    banner = ("<p class='synthetic'><b>SYNTHETIC DATA.</b> This run was trained and evaluated on rendered phantoms: "
              "nothing here says anything about real chest X-rays.</p>" if card["synthetic"] else "")
    return _PAGE.format(title=html_text(card["title"]), created=html_text(card["created"]), banner=banner,
                        body=body)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }}
table {{ border-collapse: collapse; margin: .3rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f7f7f7; font-weight: 600; }}
.blank {{ background: #fff4e5; color: #8a4b00; font-weight: 700; padding: 0 .3em; }}
.missing {{ color: #888; }}
.synthetic {{ background: #b00020; color: white; padding: .6em 1em; border-radius: 6px; }}
table.checklist tr.status-filled td {{ background: #eef7ee; }}
table.checklist tr.status-person td {{ background: #fff4e5; }}
table.checklist tr.status-na td {{ color: #666; }}
table.checklist tr.status-missing td {{ background: #fbeaea; }}
</style></head><body>
<h1>{title}</h1>
<p>Written {created} by <code>cxrutils.publish.model_card</code> from the run folder.
<a href="index.html">Back to the reports index</a>.</p>
{banner}
{body}
</body></html>
"""


def write_model_card(run_dir: str | Path, reports_dir: str | Path = REPORTS_DIR) -> Path:
    """``model_card.html`` and ``model_card.json`` in ``reports_dir`` (and the JSON in the run folder); the page."""
    card = build_card(run_dir)
    reports_dir = resolve(reports_dir)
    files.write_json(reports_dir / f"{CARD_NAME}.json", card)
    run_folder.write_model_card(resolve(run_dir), card)
    page = reports_dir / f"{CARD_NAME}.html"
    files.atomic_write_text(page, render_card(card))
    return page


"""Each external collection's labels as the 14 NIH findings: explicit, documented, never silent.

A ``LabelMap`` lists every NIH finding (``cxrutils.labels.FINDINGS``) exactly once, either
*mapped* (the collection's own term(s) and the rule that turns them into 1 / 0 / excluded)
or *not available* with the reason. It is data, so a report prints it as a table
(``LabelMap.table``) next to any number computed on the collection.

How TorchXRayVision (``torchxrayvision/datasets.py``, 1.5.7) reads the same labels, and
where this map departs from it on purpose:

- ``CheX_Dataset``: renames 'Pleural Effusion' to 'Effusion' and keeps 'Lung Opacity',
  'Lung Lesion', 'Enlarged Cardiomediastinum', 'Fracture', 'Support Devices' as their own
  pathologies; -1 becomes NaN. Same here for the mapped findings (with the -1 policy a
  setting, ``UNCERTAIN_POLICIES``); 'Lung Lesion' is *not* Nodule or Mass, 'Lung Opacity'
  is *not* Infiltration.
- ``PC_Dataset``: matches each pathology name as a *substring* of the ``Labels`` text, so
  'Emphysema' also takes 'subcutaneous emphysema', 'Nodule' takes 'pseudonodule', 'Mass'
  takes 'breast mass' and 'soft tissue mass', and 'Infiltration' takes 'consolidation'.
  Here each term is matched *whole*, from the lists below.
- ``VinDr_Dataset``: a class is positive when *any* of the three readers drew it, and
  'Nodule/Mass' stays one class. Here the readers are combined by ``min_readers`` (default
  2 of 3) and 'Nodule/Mass' feeds both NIH Nodule and Mass, marked as shared.
- ``RSNA_Pneumonia_Dataset``: ``Target`` becomes both 'Lung Opacity' and 'Pneumonia'. NIH
  has no Lung Opacity finding, so here ``Target`` is NIH Pneumonia only.
- ``SIIM_Pneumothorax_Dataset``: Pneumothorax when a mask is given (``EncodedPixels`` not -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cxrutils.labels import FINDINGS

# CheXpert's -1 (the labeler found the finding mentioned with uncertainty), as Irvin et al. 2019 compare them:
# U-Ignore (excluded from that finding's scoring), U-Ones (positive), U-Zeros (negative).
UNCERTAIN_POLICIES = ("exclude", "positive", "negative")
DEFAULT_UNCERTAIN_POLICY = "exclude"
# VinDr-CXR: a finding is positive when at least this many of the film's (three) readers drew it.
DEFAULT_MIN_READERS = 2


@dataclass(frozen=True)
class FindingMap:
    """How one NIH finding is read from a collection: mapped (``source_terms`` + ``rule``), or not, and why."""

    finding: str
    source_terms: tuple[str, ...] = ()
    rule: str = ""
    reason: str = ""  # why it is not available (only when source_terms is empty)
    shared_with: tuple[str, ...] = ()  # other NIH findings read from the same term(s): the collection cannot split them

    @property
    def available(self) -> bool:
        return bool(self.source_terms)


@dataclass(frozen=True)
class LabelMap:
    """A collection's labels as the 14 NIH findings: every finding once, in ``FINDINGS`` order."""

    collection: str
    labels_from: str  # where the collection's labels come from (labeler, physicians, readers)
    findings: tuple[FindingMap, ...]

    def __post_init__(self) -> None:
        names = [entry.finding for entry in self.findings]
        if tuple(names) != FINDINGS:
            raise ValueError(f"{self.collection}: the label map must list the 14 NIH findings once each, in FINDINGS "
                             f"order; it lists {names}")
        for entry in self.findings:
            if entry.available == bool(entry.reason) or (entry.available and not entry.rule):
                raise ValueError(f"{self.collection}: {entry.finding} needs source terms and a rule, or a reason it "
                                 "is not available (never both, never neither)")

    def __getitem__(self, finding: str) -> FindingMap:
        return self.findings[FINDINGS.index(finding)]

    @property
    def mapped(self) -> tuple[str, ...]:
        return tuple(entry.finding for entry in self.findings if entry.available)

    @property
    def not_available(self) -> tuple[str, ...]:
        return tuple(entry.finding for entry in self.findings if not entry.available)

    def table(self) -> pd.DataFrame:
        """One row per NIH finding: status, the collection's term(s), and the rule or the reason."""
        return pd.DataFrame([{
            "finding": entry.finding,
            "status": "mapped" if entry.available else "not available",
            "source_terms": " | ".join(entry.source_terms),
            "rule_or_reason": entry.rule if entry.available else entry.reason,
            "shared_with": ", ".join(entry.shared_with),
        } for entry in self.findings])


def _mapped(finding: str, terms: tuple[str, ...], rule: str, shared_with: tuple[str, ...] = ()) -> FindingMap:
    return FindingMap(finding, source_terms=terms, rule=rule, shared_with=shared_with)


def _absent(finding: str, reason: str) -> FindingMap:
    return FindingMap(finding, reason=reason)


# --------------------------------------------------------------------------- CheXpert

_CHEXPERT_RULE = ("1.0 -> 1, 0.0 -> 0, blank (not mentioned in the report) -> 0 as in Irvin et al. 2019, "
                  "-1.0 (uncertain) -> the uncertain policy (default: excluded, NaN)")
_CHEXPERT_NOT_LABELLED = "not one of CheXpert's 14 observations; its labeler never reports it"
CHEXPERT_LABEL_MAP = LabelMap(
    collection="chexpert",
    labels_from="the CheXpert labeler run on each study's report (1 positive, 0 negative, -1 uncertain, "
                "blank not mentioned)",
    findings=(
        _mapped("Atelectasis", ("Atelectasis",), _CHEXPERT_RULE),
        _mapped("Cardiomegaly", ("Cardiomegaly",), _CHEXPERT_RULE),
        _mapped("Effusion", ("Pleural Effusion",), _CHEXPERT_RULE),
        _absent("Infiltration", "CheXpert has no infiltration label; its 'Lung Opacity' is the umbrella for any "
                                "parenchymal opacity (edema, consolidation, atelectasis, pneumonia...), so reading it "
                                "as Infiltration would count every one of those as an infiltrate"),
        _absent("Mass", "CheXpert's 'Lung Lesion' covers nodules, masses and other focal lesions in one label, "
                        "without the size that separates a nodule from a mass"),
        _absent("Nodule", "CheXpert's 'Lung Lesion' covers nodules, masses and other focal lesions in one label, "
                          "without the size that separates a nodule from a mass"),
        _mapped("Pneumonia", ("Pneumonia",), _CHEXPERT_RULE),
        _mapped("Pneumothorax", ("Pneumothorax",), _CHEXPERT_RULE),
        _mapped("Consolidation", ("Consolidation",), _CHEXPERT_RULE),
        _mapped("Edema", ("Edema",), _CHEXPERT_RULE),
        _absent("Emphysema", _CHEXPERT_NOT_LABELLED),
        _absent("Fibrosis", _CHEXPERT_NOT_LABELLED),
        _absent("Pleural_Thickening", "CheXpert's 'Pleural Other' lumps pleural thickening with pleural plaques, "
                                      "calcification and fibrosis in one label"),
        _absent("Hernia", _CHEXPERT_NOT_LABELLED),
    ),
)

# --------------------------------------------------------------------------- PadChest

_PADCHEST_RULE = ("1 when the film's Labels list holds any of these terms (whole terms, spaces trimmed), else 0; "
                  "a film without labels (Labels blank or nan, an empty list, or the term 'exclude') is NaN")
PADCHEST_TERMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "total atelectasis", "round atelectasis", "atelectasis basal"),
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion", "hydropneumothorax",
                 "empyema"),
    "Infiltration": ("infiltrates", "interstitial pattern", "reticular interstitial pattern",
                     "reticulonodular interstitial pattern", "ground glass pattern", "alveolar pattern"),
    "Mass": ("mass", "pulmonary mass"),
    "Nodule": ("nodule", "multiple nodules"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("pulmonary edema",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Pleural_Thickening": ("pleural thickening", "apical pleural thickening", "calcified pleural thickening"),
    "Hernia": ("hiatal hernia",),
}
PADCHEST_UNLABELLED_TERMS = ("exclude",)
PADCHEST_LABEL_MAP = LabelMap(
    collection="padchest",
    labels_from="PadChest's Labels: terms of its hierarchy, from each report (MethodLabel 'Physician' for the "
                "27% a physician labelled, 'RNN_model' for the rest)",
    findings=tuple(_mapped(finding, PADCHEST_TERMS[finding], _PADCHEST_RULE
                           + {"Effusion": "; 'hydropneumothorax' and 'empyema' hold pleural fluid",
                              "Pneumothorax": "; 'hydropneumothorax' holds pleural air",
                              "Mass": "; only lung masses: 'mediastinal mass', 'pleural mass', 'breast mass' and "
                                      "'soft tissue mass' are not NIH's Mass",
                              "Nodule": "; 'pseudonodule' (a nipple shadow or other mimic) and 'granuloma' are not",
                              "Emphysema": "; 'subcutaneous emphysema' (air in the chest wall) is not",
                              "Infiltration": "; 'consolidation' and 'air bronchogram' go to Consolidation, which "
                                              "NIH labels apart (TorchXRayVision counts them as both)",
                              "Fibrosis": "; 'fibrotic band' (a scar) and 'post radiotherapy changes' are not",
                              "Edema": "; 'heart insufficiency' and 'kerley lines' are not the finding itself",
                              "Hernia": "; NIH's Hernia films are hiatal hernias"}.get(finding, ""))
                   for finding in FINDINGS),
)

# --------------------------------------------------------------------------- VinDr-CXR

_VINDR_RULE = ("1 when at least min_readers of the film's readers (3 per film; default 2, a majority) drew the "
               "class, else 0")
_VINDR_NOT_LABELLED = ("not among the 14 classes of the Kaggle release (train.csv); the PhysioNet release's local "
                       "labels are not read here")
VINDR_LABEL_MAP = LabelMap(
    collection="vindr",
    labels_from="three radiologists per film, each drawing a box per finding (or 'No finding'); rad_id names them",
    findings=(
        _mapped("Atelectasis", ("Atelectasis",), _VINDR_RULE),
        _mapped("Cardiomegaly", ("Cardiomegaly",), _VINDR_RULE),
        _mapped("Effusion", ("Pleural effusion",), _VINDR_RULE),
        _mapped("Infiltration", ("Infiltration",), _VINDR_RULE),
        _mapped("Mass", ("Nodule/Mass",), _VINDR_RULE + "; VinDr draws nodules and masses as one class, so NIH Mass "
                "and Nodule are both scored against nodule-or-mass", shared_with=("Nodule",)),
        _mapped("Nodule", ("Nodule/Mass",), _VINDR_RULE + "; VinDr draws nodules and masses as one class, so NIH "
                "Nodule and Mass are both scored against nodule-or-mass", shared_with=("Mass",)),
        _absent("Pneumonia", _VINDR_NOT_LABELLED + "; its 'Lung Opacity' and 'Consolidation' are findings, not a "
                                                   "diagnosis"),
        _mapped("Pneumothorax", ("Pneumothorax",), _VINDR_RULE),
        _mapped("Consolidation", ("Consolidation",), _VINDR_RULE),
        _absent("Edema", _VINDR_NOT_LABELLED),
        _absent("Emphysema", _VINDR_NOT_LABELLED),
        _mapped("Fibrosis", ("Pulmonary fibrosis",), _VINDR_RULE + "; 'ILD' (broader) is kept as a raw column only"),
        _mapped("Pleural_Thickening", ("Pleural thickening",), _VINDR_RULE),
        _absent("Hernia", _VINDR_NOT_LABELLED),
    ),
)

# --------------------------------------------------------------------------- RSNA Pneumonia

_RSNA_ONLY = ("the challenge labelled one thing, opacity suspicious for pneumonia (Target); its 'No Lung Opacity / "
              "Not Normal' class says something else is abnormal without naming it")
RSNA_LABEL_MAP = LabelMap(
    collection="rsna",
    labels_from="radiologists of the RSNA/STR 2018 challenge (Shih et al. 2019), one box per opacity suspicious "
                "for pneumonia",
    findings=tuple(
        _mapped(finding, ("Target",), "1 when the film has Target 1 (any box of opacity suspicious for pneumonia), "
                                      "else 0. TorchXRayVision maps Target to 'Lung Opacity' too; NIH has no such "
                                      "finding, and the readers drew only opacities they judged to be pneumonia")
        if finding == "Pneumonia" else _absent(finding, _RSNA_ONLY)
        for finding in FINDINGS),
)

# --------------------------------------------------------------------------- SIIM-ACR Pneumothorax

SIIM_LABEL_MAP = LabelMap(
    collection="siim",
    labels_from="radiologists' pneumothorax masks for the SIIM-ACR 2019 challenge (run-length encoded)",
    findings=tuple(
        _mapped(finding, ("EncodedPixels",), "1 when any of the film's rows gives a mask (EncodedPixels not -1), "
                                             "else 0")
        if finding == "Pneumothorax"
        else _absent(finding, "the challenge segmented pneumothorax only; no other finding was labelled")
        for finding in FINDINGS),
)

LABEL_MAPS: dict[str, LabelMap] = {label_map.collection: label_map for label_map in (
    CHEXPERT_LABEL_MAP, PADCHEST_LABEL_MAP, VINDR_LABEL_MAP, RSNA_LABEL_MAP, SIIM_LABEL_MAP)}


def label_map(collection: str) -> LabelMap:
    """The label map of ``collection`` (one of ``LABEL_MAPS``)."""
    try:
        return LABEL_MAPS[collection]
    except KeyError:
        raise ValueError(f"unknown collection {collection!r}; expected one of {', '.join(LABEL_MAPS)}") from None


def label_maps_overview() -> pd.DataFrame:
    """NIH finding x collection: the collection's term(s) for it, or "not available" (each map's table says why)."""
    return pd.DataFrame({
        collection: [" | ".join(entry.source_terms) if entry.available else "not available"
                     for entry in label_map.findings]
        for collection, label_map in LABEL_MAPS.items()
    }, index=pd.Index(FINDINGS, name="finding"))

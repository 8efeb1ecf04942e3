"""The NIH ChestX-ray14 label vocabulary, kept in exactly one place.

Every table, tensor and CSV in the project orders the 14 findings as
``FINDINGS``. ``No Finding`` is not a class: it means all 14 are 0.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

NO_FINDING = "No Finding"

# The 8 findings that BBox_List_2017.csv has boxes for.
BOX_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)

# Spellings seen in the real files that mean one of FINDINGS.
# BBox_List_2017.csv writes "Infiltrate" for Infiltration.
LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}


def canonical_finding(name: str) -> str:
    """Map a label as written in an NIH file to its name in ``FINDINGS``.

    Raises ``ValueError`` naming the label when it is not one of the 14.
    """
    stripped = name.strip()
    canonical = LABEL_ALIASES.get(stripped, stripped)
    if canonical not in FINDINGS:
        raise ValueError(
            f"unknown finding label {name!r}; expected one of {', '.join(FINDINGS)} (or {NO_FINDING!r} on its own)"
        )
    return canonical

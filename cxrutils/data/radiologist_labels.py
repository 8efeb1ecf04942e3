"""Google's radiologist-adjudicated labels for 4,376 NIH films (Majkowska et al., Radiology 2019).

NIH's 14 labels were text-mined from reports. For four findings, a panel of
radiologists adjudicated 4,376 NIH films; the file ships inside torchxrayvision
(``google2019_nih-chest-xray-labels.csv.gz``): the NIH metadata columns, then
``Fracture``, ``Pneumothorax``, ``Airspace opacity`` and ``Nodule or mass`` as
``YES``/``NO``, then ``Set Id``. Its ``test`` set (1,962 films of 860 patients) lies
inside NIH's official test list, its ``val`` set (2,414 films) inside train_val.

``MAPPING`` says which of our outputs stand for each radiologist finding; a film's
score for it is the highest of those outputs' probabilities, and its NIH label the
highest of those NIH labels, so both label sets are scored on the same score.
"""

from __future__ import annotations

import os

import pandas as pd

from cxrutils.data.metadata import SHIPPED_GOOGLE_LABELS_NAME, shipped_data_file

SOURCE = ("Majkowska et al., Chest radiograph interpretation with deep learning models, Radiology 2019 "
          "(labels shipped in torchxrayvision as google2019_nih-chest-xray-labels.csv.gz)")
RADIOLOGIST_FINDINGS = ("Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture")
# Airspace opacity: air spaces filled with fluid (Edema), pus or cells (Consolidation,
# Pneumonia, Infiltration). Atelectasis is a loss of volume, not a filled air space, so it
# is left out, as are Effusion (pleural, not airspace) and the masses (Nodule or mass).
AIRSPACE_FINDINGS = ("Consolidation", "Pneumonia", "Infiltration", "Edema")
MAPPING: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": AIRSPACE_FINDINGS,
}
# A radiologist finding NIH has no label for, and the output name a model may have for it (TorchXRayVision's 18
# outputs include Fracture). A predictions table with that output's probability column is scored on it against the
# radiologists only; there is no NIH label to score it against.
RADIOLOGIST_ONLY_OUTPUTS: dict[str, str] = {"Fracture": "Fracture"}
NOT_SCORED = {"Fracture": "none of NIH's 14 findings is a fracture, so no output of ours stands for it (a "
                          "TorchXRayVision model with a Fracture output is scored against the radiologists only)"}
# How a film's score and its NIH label are formed for a radiologist finding covering several NIH findings.
COMBINATION_RULE = ("a film's score for a radiologist finding is the highest probability among its mapped outputs, "
                    "and its NIH label is positive when any mapped NIH label is")
SETS = ("test", "val")
_RAW_COLUMNS = {"Image Index": "image", "Patient ID": "patient_id", "Set Id": "set"}


class RadiologistLabelsError(ValueError):
    """The radiologist label file does not have the shape of the published one."""


def read_radiologist_labels(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The labels as a frame indexed by image: ``patient_id``, ``set``, and the four findings as 0/1.

    ``path`` defaults to the copy shipped in torchxrayvision.
    """
    path = shipped_data_file(SHIPPED_GOOGLE_LABELS_NAME) if path is None else path
    raw = pd.read_csv(path, dtype={name: str for name in (*_RAW_COLUMNS, *RADIOLOGIST_FINDINGS)})
    missing = [name for name in (*_RAW_COLUMNS, *RADIOLOGIST_FINDINGS) if name not in raw.columns]
    if missing:
        raise RadiologistLabelsError(f"{path}: missing column(s) {missing}; expected Google's 2019 label file "
                                     f"with {list(_RAW_COLUMNS)} and {list(RADIOLOGIST_FINDINGS)}")
    labels = raw[list(_RAW_COLUMNS)].rename(columns=_RAW_COLUMNS)
    for finding in RADIOLOGIST_FINDINGS:
        answers = raw[finding].str.strip().str.upper()
        odd = sorted(set(answers.dropna()) - {"YES", "NO"}) + (["<empty>"] if answers.isna().any() else [])
        if odd:
            raise RadiologistLabelsError(f"{path}: column {finding!r} must hold YES or NO, found {odd[:5]}")
        labels[finding] = (answers == "YES").astype("int8")
    unknown_sets = sorted(set(labels["set"]) - set(SETS))
    if unknown_sets:
        raise RadiologistLabelsError(f"{path}: 'Set Id' must be one of {list(SETS)}, found {unknown_sets}")
    if labels["image"].duplicated().any():
        twice = labels.loc[labels["image"].duplicated(), "image"].iloc[0]
        raise RadiologistLabelsError(f"{path}: film {twice} is listed more than once")
    labels["patient_id"] = pd.to_numeric(labels["patient_id"], errors="raise").astype("int64")
    return labels.set_index("image")

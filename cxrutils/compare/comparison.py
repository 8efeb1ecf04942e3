"""What a reader must know before reading a comparison with a TorchXRayVision model, and the pairing that names it.

The statistics are ``cxrutils.stats.paired``'s; this module adds what depends on the
model: its display name (and the random-weights label), and the caveats (the leakage
of NIH-trained models into the official test list, the labeller of the others).
"""

from __future__ import annotations

import pandas as pd

from cxrutils.compare.provenance import NIH_TRAINING_SHARE
from cxrutils.compare.txv import RANDOM_INIT_LABEL, txv_spec
from cxrutils.stats.paired import OURS, TXV, PairedPredictions, pair_predictions

LEAKAGE_CAVEAT = (
    "TorchXRayVision's released NIH and \"all\" models were trained on random splits of NIH ChestX-ray14, "
    f"which overlap the official test list: a random {NIH_TRAINING_SHARE:.0%} of NIH patients were training "
    f"patients, so about {NIH_TRAINING_SHARE:.0%} of the official test films (the exact films are unknown: the "
    "draw was not published) were in their training data. Their scores on the official test set are therefore "
    "likely optimistic, and a comparison with a model that never saw the test list is tilted in their favour."
)
PATIENT_NOTE = (
    "p-values use the patient-clustered DeLong variance and intervals resample patients: a patient's films "
    "are not independent evidence."
)


def comparison_caveats(txv_name: str, random_init: bool = False) -> list[str]:
    """What a reader must know before reading a comparison with ``txv_name``."""
    spec = txv_spec(txv_name)
    caveats = []
    if random_init:
        caveats.append(f"{RANDOM_INIT_LABEL}: the TorchXRayVision scores come from random weights, for testing "
                       "the pipeline only; they say nothing about the real model.")
    if spec.includes_nih_images:
        caveats.append(f"{LEAKAGE_CAVEAT} {spec.name} was trained on: {spec.trained_on}.")
        caveats.append(f"The same holds for the validation films on which both models' thresholds are chosen: "
                       f"they come from train_val, so about {NIH_TRAINING_SHARE:.0%} of them were likely in "
                       f"{spec.name}'s training data too, and its validation-chosen thresholds sit where its "
                       "training scores fell. Its threshold-dependent figures are optimistic for the same reason.")
    else:
        caveats.append(f"{spec.name} never saw an NIH film: it was trained on {spec.trained_on}, a different "
                       "training set with its own recipe. This measures how it transfers to NIH films, not how the "
                       "two architectures compare on the same data, and its labels for the same finding names come "
                       "from another labeller.")
    caveats.append(PATIENT_NOTE)
    return caveats


def pair_with_txv(
    ours: pd.DataFrame, txv: pd.DataFrame, *, txv_name: str, random_init: bool = False,
    ours_name: str = "ours",
) -> PairedPredictions:
    """``pair_predictions`` with the TorchXRayVision model's display name and its caveats."""
    display = f"TorchXRayVision {txv_name}" + (f" [{RANDOM_INIT_LABEL}]" if random_init else "")
    return pair_predictions(ours, txv, names={OURS: ours_name, TXV: display},
                            caveats=comparison_caveats(txv_name, random_init))

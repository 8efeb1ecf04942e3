"""Decision thresholds, chosen on validation predictions only.

The selector takes validation labels and scores and nothing else, so no code path
can tune a threshold on test labels; test is scored with the returned thresholds
unchanged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrutils.settings import THRESHOLD_METHODS

ThresholdMethod = Literal["youden", "max_f1"]
METHODS: tuple[str, ...] = THRESHOLD_METHODS  # the one list, in the settings schema


def choose_thresholds(val_labels: np.ndarray, val_scores: np.ndarray, method: ThresholdMethod) -> np.ndarray:
    """One threshold per class from validation arrays (n_images, n_classes).

    ``youden`` maximises sensitivity + specificity - 1; ``max_f1`` maximises F1.
    A class without both positives and negatives in validation gets NaN: no
    threshold can be chosen for it, and callers must say so rather than guess.
    """
    labels = np.asarray(val_labels)
    scores = np.asarray(val_scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be the same (n, classes) shape")
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {METHODS}")
    thresholds = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        y, s = labels[:, k], scores[:, k]
        if y.min() == y.max():
            continue
        thresholds[k] = _youden(y, s) if method == "youden" else _max_f1(y, s)
    return thresholds


def _youden(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, cut = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(cut[best], 1.0))  # roc_curve's first cut is +inf (nothing positive)


def _max_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, cut = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(cut[int(np.argmax(f1[:-1]))])  # the last PR point has no threshold

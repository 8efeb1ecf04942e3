"""Run folders without training: what the comparison of runs reads (config.json, history.json, predictions).

A finished run needs config.json, checkpoint_best.pt and thresholds.json to be opened; the
comparison reads only the config, the history and ``predictions_<split>.csv``, so the
checkpoint here is a placeholder written before the predictions (they must be newer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.settings import load_train_config


def clustered_predictions(n_patients: int = 120, seed: int = 0, signal: float = 1.2) -> pd.DataFrame:
    """A predictions table of 1-4 films per patient, every finding with positives from many patients.

    A patient's films share a patient effect in their scores, so the films are clustered as NIH's are.
    """
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 5, n_patients)
    patient_ids = np.repeat(np.arange(1, n_patients + 1), films)
    n = patient_ids.size
    prevalence = rng.uniform(0.12, 0.3, len(FINDINGS))
    # A patient's films tend to share findings: a per-patient draw, then a per-film one.
    patient_positive = rng.random((n_patients, len(FINDINGS))) < prevalence
    labels = (patient_positive[patient_ids - 1] & (rng.random((n, len(FINDINGS))) < 0.8)).astype(int)
    patient_effect = rng.normal(0, 0.6, (n_patients, len(FINDINGS)))[patient_ids - 1]
    logits = signal * labels + patient_effect + rng.normal(0, 1.0, (n, len(FINDINGS)))
    frame = pd.DataFrame({"image": [f"{p:08d}_{k:03d}.png" for p, k in zip(patient_ids, _follow_ups(patient_ids))],
                          "patient_id": patient_ids})
    for j, finding in enumerate(FINDINGS):
        frame[probability_column(finding)] = 1 / (1 + np.exp(-logits[:, j]))
    for j, finding in enumerate(FINDINGS):
        frame[finding] = labels[:, j]
    return frame


def _follow_ups(patient_ids: np.ndarray) -> np.ndarray:
    return pd.Series(patient_ids).groupby(patient_ids).cumcount().to_numpy()


def perturbed(predictions: pd.DataFrame, scale: float, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """The same films with each probability moved on the logit scale (noise ``scale``, ``shift`` towards the label)."""
    rng = np.random.default_rng(seed)
    other = predictions.copy()
    for finding in FINDINGS:
        column = probability_column(finding)
        p = other[column].to_numpy().clip(1e-6, 1 - 1e-6)
        logit = np.log(p / (1 - p)) + rng.normal(0, scale, len(p)) + shift * (2 * other[finding].to_numpy() - 1)
        other[column] = 1 / (1 + np.exp(-logit))
    return other


def history(epochs: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append({"epoch": epoch, "train_loss": 0.7 / epoch + rng.uniform(0, 0.02),
                     "val_loss": 0.75 / epoch + rng.uniform(0, 0.02), "val_auroc_mean": 0.5 + 0.1 * epoch,
                     "lr": 0.001, "epoch_seconds": 1.0})
    return rows


def write_run(folder: Path, predictions: pd.DataFrame, *, seed: int = 0, synthetic: bool = True, split: str = "test",
              record: dict[str, Any] | None = None, epochs: int = 3, **settings: Any) -> Path:
    """A finished-looking run folder ``folder`` (its name is the run's) holding ``predictions`` on ``split``."""
    folder.mkdir(parents=True)
    config = load_train_config("tiny", {"name": folder.name, "runs_dir": str(folder.parent), "seed": seed,
                                        **settings}).to_dict()
    config.update({"synthetic": synthetic, "data_fingerprint": "f" * 64, "device": "cpu", "world_size": 1,
                   "data_description": ("SYNTHETIC phantom dataset at /phantoms" if synthetic
                                        else "dataset at /data/nih"), **(record or {})})
    (folder / "config.json").write_text(json.dumps(config, default=str))
    checkpoint = folder / "checkpoint_best.pt"
    checkpoint.write_bytes(b"a placeholder: the comparison of runs reads predictions, not weights")
    os.utime(checkpoint, (1_000_000_000, 1_000_000_000))  # older than the predictions, as after an evaluation
    (folder / "thresholds.json").write_text(json.dumps({"youden": {}, "max_f1": {}}))
    (folder / "history.json").write_text(json.dumps(history(epochs, seed)))
    predictions.to_csv(folder / f"predictions_{split}.csv", index=False)
    return folder

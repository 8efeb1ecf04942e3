"""The run folder ``runs/<name>/``: what training writes and later notebooks read.

Later notebooks read only this folder, never global state: the resolved config,
the per-epoch history, the best and last checkpoints, and the validation
predictions with the thresholds chosen on them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cxrutils.labels import FINDINGS

CONFIG_NAME = "config.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
THRESHOLDS_NAME = "thresholds.json"
BAD_FILES_NAME = "bad_files.csv"


def predictions_name(split: str) -> str:
    return f"predictions_{split}.csv"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder, then ``os.replace``: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, default=str)))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a cxrutils checkpoint with ``weights_only=True``: tensors and plain types only."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_json(run_dir / HISTORY_JSON, history)
    atomic_write_bytes(run_dir / HISTORY_CSV, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))


def read_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    return pd.DataFrame(json.loads((Path(run_dir) / HISTORY_JSON).read_text()))


def read_bad_files(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """image, path, reason of every image skipped as unreadable (empty when none was)."""
    path = Path(run_dir) / BAD_FILES_NAME
    return pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame(columns=["image", "path", "reason"])


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(run_dir) / CONFIG_NAME).read_text())


def read_thresholds(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    return json.loads((Path(run_dir) / THRESHOLDS_NAME).read_text())


def write_predictions(
    path: Path, images: list[str], patient_ids: list[int], probabilities: Any, labels: Any
) -> None:
    """image, patient_id, the 14 probabilities (``prob_<finding>``), the 14 labels."""
    frame = pd.DataFrame({"image": images, "patient_id": patient_ids})
    for k, finding in enumerate(FINDINGS):
        frame[f"prob_{finding}"] = probabilities[:, k]
    for k, finding in enumerate(FINDINGS):
        frame[finding] = labels[:, k].astype(int)
    atomic_write_bytes(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def read_predictions(run_dir: str | os.PathLike[str], split: str) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / predictions_name(split))

"""The run folder ``runs/<name>/``: the single record of a training run, and the one way to open it.

Training writes, and every later step (evaluation, comparison, inference) reads:

    config.json         the resolved settings, and facts: device, world size, image
                        counts, the image cache's and the data's fingerprints
    split.csv           image, patient_id, split, finding_labels: every film and the
                        side it was on, as trained
    history.csv/.json   per epoch: losses, mean and per-class validation AUROC, lr, time
    checkpoint_best.pt  the best epoch (highest mean validation AUROC); checkpoint_last.pt
    predictions_val.csv the best epoch's validation predictions, and thresholds.json
                        (decision thresholds chosen on them)
    bad_files.csv       films that could not be decoded (with skip_bad_images)
    .lock               only while a training writes the folder (or after one was
                        killed): who it is (``cxrutils.locks``); not part of the run

and the later steps add their own results: ``predictions_<split>.csv`` and
``metrics.json`` (evaluation), ``comparison.json`` (the TorchXRayVision comparison),
``model.onnx`` with ``model_onnx.json`` (the ONNX export) and ``model_card.json``.
This module is the only one that names these files; the others read and write them
through its functions.

``open_run`` opens a finished run: its settings from config.json, its data from its
``data_root`` checked against split.csv (a changed root is an error that says what
changed), and the split from split.csv, never recomputed.

Reading the record needs no torch: torch is imported where a checkpoint or a model is
loaded or saved, so the reports runner can look at a run without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxrutils import files
from cxrutils.data.cache import ImageCache
from cxrutils.data.dataset import NIHDataset, RecordedSplit
from cxrutils.engine.data_adapters import open_training_cache, training_dataset
from cxrutils.labels import FINDINGS, NO_FINDING
from cxrutils.paths import resolve
from cxrutils.predictions import missing_columns
from cxrutils.settings import TrainConfig

if TYPE_CHECKING:
    import torch

    from cxrutils.engine.model import ChestXrayNet

# The files of a run folder. No other module spells these names (tests/engine/test_run_folder.py checks).
CONFIG_NAME = "config.json"  # the resolved settings, and facts about the run (written by training)
SPLIT_NAME = "split.csv"  # every film with its patient, labels and side, as trained (SPLIT_COLUMNS)
HISTORY_CSV = "history.csv"  # per epoch: losses, validation AUROC, lr, time (for a spreadsheet)
HISTORY_JSON = "history.json"  # the same history, as read back (read_history)
LAST_CHECKPOINT = "checkpoint_last.pt"  # the last finished epoch: what a resume continues from
BEST_CHECKPOINT = "checkpoint_best.pt"  # the epoch with the highest mean validation AUROC
THRESHOLDS_NAME = "thresholds.json"  # per method, the decision thresholds chosen on validation at the best epoch
BAD_FILES_NAME = "bad_files.csv"  # films that could not be decoded and were skipped (skip_bad_images)
METRICS_NAME = "metrics.json"  # the evaluation of the test split; other splits: metrics_name(split, tta_hflip)
COMPARISON_NAME = "comparison.json"  # the comparison with TorchXRayVision's models (cxrutils.compare)
ONNX_NAME = "model.onnx"  # the best checkpoint exported to ONNX (cxrutils.inference.export)
ONNX_RECORD_NAME = "model_onnx.json"  # the ONNX file's sha256 and its verification against torch
MODEL_CARD_NAME = "model_card.json"  # the model card's content (cxrutils.publish.model_card)
# predictions_<split>.csv (predictions_name) and metrics_<split>.json carry this when scored with a mirrored view.
TTA_SUFFIX = "_hflip_tta"
RUN_FILE_NAMES = (CONFIG_NAME, SPLIT_NAME, HISTORY_CSV, HISTORY_JSON, LAST_CHECKPOINT, BEST_CHECKPOINT,
                  THRESHOLDS_NAME, BAD_FILES_NAME, METRICS_NAME, COMPARISON_NAME, ONNX_NAME, ONNX_RECORD_NAME,
                  MODEL_CARD_NAME)
# What a run needs to be evaluated, compared or used for inference.
FINISHED_RUN_FILES = (CONFIG_NAME, BEST_CHECKPOINT, THRESHOLDS_NAME)
SPLIT_COLUMNS = ["image", "patient_id", "split", "finding_labels"]
BAD_FILES_COLUMNS = ["image", "path", "reason"]


class NotATrainedRunError(FileNotFoundError):
    """The folder does not hold a finished training run."""


class RunExistsError(FileExistsError):
    """A new run was started in a folder that already holds one (it is never overwritten)."""


class NothingToResumeError(FileNotFoundError):
    """A resume was asked for where there is no checkpoint to resume."""


class SettingsChangedError(ValueError):
    """A resume was asked for with settings that change what the run learns."""


class ArchitectureMismatchError(ValueError):
    """A checkpoint holds another architecture than the run's settings name."""


class DataChangedError(ValueError):
    """The data under a run's data_root is not the data the run was trained on."""


def _scored(split: str, tta_hflip: bool) -> str:
    return split + (TTA_SUFFIX if tta_hflip else "")


def predictions_name(split: str, tta_hflip: bool = False) -> str:
    """``predictions_<split>.csv``, or ``predictions_<split>_hflip_tta.csv``: the two never overwrite each other."""
    return f"predictions_{_scored(split, tta_hflip)}.csv"


def metrics_name(split: str = "test", tta_hflip: bool = False) -> str:
    """``metrics.json`` for the test split, else ``metrics_<split>[_hflip_tta].json``: none overwrites another."""
    scored = _scored(split, tta_hflip)
    return METRICS_NAME if scored == "test" else f"metrics_{scored}.json"


def predictions_path(run_dir: str | os.PathLike[str], split: str, tta_hflip: bool = False) -> Path:
    return Path(run_dir) / predictions_name(split, tta_hflip)


def metrics_path(run_dir: str | os.PathLike[str], split: str = "test", tta_hflip: bool = False) -> Path:
    return Path(run_dir) / metrics_name(split, tta_hflip)


def onnx_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / ONNX_NAME


def _read_json_if_there(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- files of the record


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: reading a run's record needs no torch

    files.atomic_write(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a cxrutils checkpoint with ``weights_only=True``: tensors and plain types only."""
    from cxrutils.engine.model import load_tensors

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return load_tensors(path, map_location)


def write_config(run_dir: Path, record: dict[str, Any]) -> Path:
    """config.json: the resolved settings and the facts of the run."""
    return files.write_json(run_dir / CONFIG_NAME, record)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    files.write_json(run_dir / HISTORY_JSON, history)
    files.atomic_write(run_dir / HISTORY_CSV, lambda temporary: pd.DataFrame(history).to_csv(temporary, index=False))


def read_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per epoch, every column numeric: an AUROC that was never defined (no validation positives) is NaN."""
    history = pd.DataFrame(json.loads((Path(run_dir) / HISTORY_JSON).read_text()))
    undefined = history.columns[history.dtypes == object]  # all null in the JSON: read back as None
    history[undefined] = history[undefined].apply(pd.to_numeric)
    return history


def write_bad_files(run_dir: Path, bad_files: pd.DataFrame) -> Path:
    """bad_files.csv, written as text (``files.write_csv``): no formula in a file name runs in a spreadsheet."""
    return files.write_csv(run_dir / BAD_FILES_NAME, bad_files)


def read_bad_files(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """image, path, reason of every image skipped as unreadable (empty when none was)."""
    path = Path(run_dir) / BAD_FILES_NAME
    return files.read_csv_text(path) if path.is_file() else pd.DataFrame(columns=BAD_FILES_COLUMNS)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(run_dir) / CONFIG_NAME).read_text())


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """A run's ``config.json`` as a ``TrainConfig``.

    ``config.json`` also records facts about the run that are not settings (device,
    world size, image counts, fingerprints); they are dropped here. Its ``cache_dir``
    is the resolved folder the run trained from.
    """
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig.from_dict({k: v for k, v in read_config(run_dir).items() if k in known})


def write_thresholds(run_dir: Path, thresholds: dict[str, dict[str, float | None]]) -> Path:
    """thresholds.json: per method, each finding's threshold (None where validation could not choose one)."""
    return files.write_json(run_dir / THRESHOLDS_NAME, thresholds)


def read_thresholds(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    return json.loads((Path(run_dir) / THRESHOLDS_NAME).read_text())


def thresholds_of(run_dir: str | os.PathLike[str], method: str) -> dict[str, float | None]:
    """One method's entry of a run's thresholds.json; KeyError naming the methods the file holds."""
    chosen = read_thresholds(run_dir)
    if method not in chosen:
        raise KeyError(f"{Path(run_dir) / THRESHOLDS_NAME} has no {method!r} thresholds; it holds {sorted(chosen)}")
    return dict(chosen[method])


def write_predictions(run_dir: Path, table: pd.DataFrame, split: str, tta_hflip: bool = False) -> Path:
    """A predictions table (``cxrutils.predictions``) as ``predictions_name(split, tta_hflip)``, probabilities to
    6 significant digits."""
    path = predictions_path(run_dir, split, tta_hflip)
    files.atomic_write(path, lambda temporary: table.to_csv(temporary, index=False, float_format="%.6g"))
    return path


def read_predictions(run_dir: str | os.PathLike[str], split: str, tta_hflip: bool = False) -> pd.DataFrame:
    """A run's ``predictions_<split>.csv``; every column of the layout must be there (a missing one is an error)."""
    path = predictions_path(run_dir, split, tta_hflip)
    table = pd.read_csv(path)
    missing = missing_columns(table)
    if missing:
        # The comparison pairs the findings both tables score: a lost probability column would drop a finding silently.
        raise ValueError(f"{path} lacks the column(s) {missing} of a predictions table (image, patient_id, "
                         "prob_<finding> and the label of each of the 14 findings); delete it and score the split "
                         "again (cxrutils.engine.predict.predict_split)")
    return table


# --------------------------------------------------------------------------- what the later steps add


def write_metrics(run_dir: Path, document: dict[str, Any], split: str = "test", tta_hflip: bool = False) -> Path:
    """An evaluation's document (``cxrutils.evaluate``) as ``metrics_name(split, tta_hflip)``, atomically."""
    return files.write_json(metrics_path(run_dir, split, tta_hflip), document)


def read_metrics(run_dir: str | os.PathLike[str], split: str = "test",
                 tta_hflip: bool = False) -> dict[str, Any] | None:
    """The evaluation's document of ``split``; None when the run has not been evaluated on it."""
    return _read_json_if_there(metrics_path(run_dir, split, tta_hflip))


def write_comparison(run_dir: Path, document: dict[str, Any]) -> Path:
    """The TorchXRayVision comparison's document (``cxrutils.compare``) as comparison.json, atomically."""
    return files.write_json(run_dir / COMPARISON_NAME, document)


def read_comparison(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """comparison.json; None when the run has not been compared."""
    return _read_json_if_there(Path(run_dir) / COMPARISON_NAME)


def write_onnx_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """model_onnx.json beside model.onnx: its sha256, opset, metadata and verification."""
    return files.write_json(run_dir / ONNX_RECORD_NAME, record)


def read_onnx_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """model_onnx.json; None when the run's ONNX file was never recorded."""
    return _read_json_if_there(Path(run_dir) / ONNX_RECORD_NAME)


def write_model_card(run_dir: Path, card: dict[str, Any]) -> Path:
    """The model card's content (``cxrutils.publish.model_card``) as model_card.json, atomically."""
    return files.write_json(run_dir / MODEL_CARD_NAME, card)


# --------------------------------------------------------------------------- the split, and the data it was drawn from


def finding_labels(metadata: pd.DataFrame) -> pd.Series:
    """Each film's findings as NIH writes them (``Atelectasis|Effusion``, or ``No Finding``)."""
    present = metadata[list(FINDINGS)].to_numpy(dtype=bool)
    names = np.array(FINDINGS, dtype=object)
    labels = ["|".join(names[row]) or NO_FINDING for row in present]
    return pd.Series(labels, index=metadata.index, name="finding_labels")


def split_table(metadata: pd.DataFrame) -> pd.DataFrame:
    """What split.csv holds: image, patient_id, split and the film's labels, for every film of the dataset."""
    table = metadata[["image", "patient_id", "split"]].copy()
    table["finding_labels"] = finding_labels(metadata)
    return table.reset_index(drop=True)


def data_fingerprint(table: pd.DataFrame) -> str:
    """sha256 of the films, their patients and labels (a ``split_table``): changes when the metadata does."""
    digest = hashlib.sha256(b"cxrutils data v1\n")
    ordered = table.sort_values("image", kind="stable")
    for image, patient, labels in ordered[["image", "patient_id", "finding_labels"]].itertuples(index=False):
        digest.update(f"{image}\t{patient}\t{labels}\n".encode())
    return digest.hexdigest()


def write_split(run_dir: Path, metadata: pd.DataFrame) -> str:
    """Write split.csv from the dataset the run trains on; return the data fingerprint."""
    table = split_table(metadata)
    files.atomic_write(run_dir / SPLIT_NAME, lambda temporary: table.to_csv(temporary, index=False))
    return data_fingerprint(table)


def has_split(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run recorded its split (runs trained before split.csv existed did not)."""
    return (Path(run_dir) / SPLIT_NAME).is_file()


def read_split(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / SPLIT_NAME, dtype={"image": str, "split": str, "finding_labels": str},
                       keep_default_na=False)


def data_differences(recorded: pd.DataFrame, current: pd.DataFrame, limit: int = 3) -> list[str]:
    """What differs between a run's split.csv and the same table from today's metadata, in words."""
    was = recorded.set_index("image")
    now = current.set_index("image")
    removed = was.index.difference(now.index)
    added = now.index.difference(was.index)
    common = was.index.intersection(now.index)
    patients = common[was.loc[common, "patient_id"].astype(str).to_numpy()
                      != now.loc[common, "patient_id"].astype(str).to_numpy()]
    relabelled = common[was.loc[common, "finding_labels"].to_numpy() != now.loc[common, "finding_labels"].to_numpy()]
    lines = []
    if len(removed):
        lines.append(f"{len(removed):,} film(s) the run used are no longer in the metadata (e.g. "
                     f"{', '.join(removed[:limit])})")
    if len(added):
        lines.append(f"{len(added):,} film(s) in the metadata are new to the run (e.g. {', '.join(added[:limit])})")
    if len(patients):
        lines.append(f"{len(patients):,} film(s) changed patient id (e.g. {', '.join(patients[:limit])})")
    if len(relabelled):
        examples = ", ".join(f"{image}: {was.loc[image, 'finding_labels']} -> {now.loc[image, 'finding_labels']}"
                             for image in relabelled[:limit])
        lines.append(f"{len(relabelled):,} film(s) changed labels ({examples})")
    return lines


# --------------------------------------------------------------------------- the model


def load_run_model(
    run_dir: str | os.PathLike[str], checkpoint_name: str = BEST_CHECKPOINT
) -> tuple[ChestXrayNet, TrainConfig, dict[str, Any]]:
    """The run's model (eval mode, CPU), its training settings, and the checkpoint's other entries.

    The network is rebuilt from the checkpoint's own config (arch, head, lse_r; a run
    from before ``arch`` existed is densenet121), and the weights load strictly. A
    checkpoint whose architecture is not the run's (config.json's ``arch``) is an
    ``ArchitectureMismatchError`` naming both.
    """
    from cxrutils.engine.model import DEFAULT_ARCH, ChestXrayNet, checkpoint_arch

    run_dir = Path(run_dir)
    path = run_dir / checkpoint_name
    checkpoint = load_checkpoint(path)
    if "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} lacks 'model' or 'config': not a cxrutils training checkpoint")
    label_order = list(checkpoint.get("label_order", FINDINGS))
    if label_order != list(FINDINGS):
        raise ValueError(f"{path} orders its outputs {label_order}, not {list(FINDINGS)}")
    config = TrainConfig.from_dict(checkpoint["config"])
    arch = checkpoint_arch(checkpoint)  # its own entry, else its settings' (densenet121 before arch existed)
    if arch != config.arch:
        raise ArchitectureMismatchError(
            f"{path} records a {arch} model but settings for {config.arch}: it is not a checkpoint cxrutils wrote "
            "whole; train the run again or restore the file")
    run_arch = read_config(run_dir).get("arch", DEFAULT_ARCH) if (run_dir / CONFIG_NAME).is_file() else arch
    if run_arch != arch:
        raise ArchitectureMismatchError(
            f"{path} holds a {arch} model, but run {run_dir.name} trains {run_arch} ({run_dir / CONFIG_NAME}): the "
            "checkpoint comes from another run. Put the run's own checkpoint back, or open the run it came from")
    model = ChestXrayNet(num_classes=len(FINDINGS), head=config.head, lse_r=config.lse_r,  # type: ignore[arg-type]
                         arch=config.arch)
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()
    details = {k: v for k, v in checkpoint.items() if k in ("epoch", "best_epoch", "best_val_auroc_mean")}
    return model, config, details


# --------------------------------------------------------------------------- opening a run


@dataclass
class Run:
    """A finished run: its settings, the dataset with the split it was trained on, its cache and its model."""

    run_dir: Path
    config: TrainConfig  # config.json's settings (its cache_dir is the resolved folder the run trained from)
    data_root: str  # where the run's data is read from: open_run's data_root, else config.json's
    record: dict[str, Any]  # config.json as written, facts included
    dataset: NIHDataset  # metadata["split"] is the run's own split (split.csv)
    split_source: str  # where the split came from, for reports
    _cache: ImageCache | None = field(default=None, repr=False)
    _model: tuple[ChestXrayNet, dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def image_cache(self) -> ImageCache:
        """The run's image cache (reused while the files are unchanged, else rebuilt)."""
        if self._cache is None:
            self._cache = open_training_cache(self.config, self.dataset, data_root=self.data_root)
        return self._cache

    @property
    def images_match_training(self) -> bool | None:
        """Whether the cache still holds the files the run trained on (None: the run did not record them)."""
        trained_on = self.record.get("cache_fingerprint")
        return None if trained_on is None else trained_on == self.image_cache().fingerprint

    def model(self) -> ChestXrayNet:
        """The best checkpoint's model, in eval mode, on the CPU (move it where it should run)."""
        if self._model is None:
            model, _, details = load_run_model(self.run_dir)
            self._model = (model, details)
        return self._model[0]

    @property
    def checkpoint_details(self) -> dict[str, Any]:
        """epoch, best_epoch and best_val_auroc_mean of the best checkpoint."""
        self.model()
        assert self._model is not None
        return dict(self._model[1])

    def thresholds(self, method: str) -> dict[str, float | None]:
        """One method's entry of thresholds.json (chosen on validation at training time)."""
        return thresholds_of(self.run_dir, method)

    def predictions(self, split: str) -> pd.DataFrame:
        return read_predictions(self.run_dir, split)


def finished_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The resolved run folder; ``NotATrainedRunError`` unless it holds what evaluation and inference need.

    Inference on new films needs only this (settings, best checkpoint, thresholds), not
    the data the run was trained on, which ``open_run`` also opens.
    """
    run_dir = resolve(run_dir)
    missing = [name for name in FINISHED_RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise NotATrainedRunError(
            f"{run_dir} has no {', '.join(missing)}: it is not a finished training run. Train it first "
            "(notebook 02, or cxrutils train --config ...), or point at an existing run folder."
        )
    return run_dir


def open_run(run_dir: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None) -> Run:
    """Open a finished run; its dataset carries the run's own split, checked against today's data.

    ``data_root`` points at the run's data where it has moved (default: the run's own
    ``data_root``). The metadata under it must be the data the run was trained on:
    films, patients and labels are compared with split.csv, and any difference is a
    ``DataChangedError`` that names it. A run from before runs recorded their split
    (no split.csv) gets its split recomputed from its settings, and says so.
    """
    run_dir = finished_run_dir(run_dir)
    config = read_run_config(run_dir)
    root = config.data_root if data_root is None else str(data_root)
    record = read_config(run_dir)
    if not has_split(run_dir):
        dataset = training_dataset(config, data_root=root)
        source = (f"recomputed from {root} with the run's split settings: the run has no {SPLIT_NAME} "
                  "(it was trained before runs recorded their split)")
        return Run(run_dir, config, root, record, dataset, source)
    recorded = read_split(run_dir)
    # The recorded split is applied, not drawn again; "run" names it where the record predates split_kind.
    split = RecordedSplit(recorded.set_index("image")["split"], str(record.get("split_kind", "run")))
    dataset = training_dataset(config, data_root=root, split=split)
    differences = data_differences(recorded, split_table(dataset.metadata))
    if differences:
        raise DataChangedError(
            f"the data under {root} is not the data run {run_dir.name} was trained on: "
            + "; ".join(differences)
            + ". Point data_root at the data the run used, or train a new run on this data."
        )
    source = f"{SPLIT_NAME} in the run folder (the split the run was trained on)"
    return Run(run_dir, config, root, record, dataset, source)

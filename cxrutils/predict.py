"""Predictions of a trained run on one split, written into its run folder.

Everything comes from the run folder: the best checkpoint (loaded with
``weights_only=True``) and the settings saved beside it. The images go through the
same cache and ``prepare_batch`` as in training, so a prediction here is exactly
what validation saw during training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrutils import run_folder
from cxrutils.loader import CachedImageDataset, make_loader
from cxrutils.dataset import NIHDataset
from cxrutils.labels import FINDINGS
from cxrutils.model import ChestXrayDenseNet
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar
from cxrutils.train import (
    Distributed,
    TrainConfig,
    autocast_dtype,
    load_training_dataset,
    open_image_cache,
    prepare_batch,
    select_device,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
TTA_SUFFIX = "_hflip_tta"
PROBABILITY_PREFIX = "prob_"


def load_run_model(
    run_dir: str | os.PathLike[str], checkpoint_name: str = run_folder.BEST_CHECKPOINT
) -> tuple[ChestXrayDenseNet, TrainConfig, dict[str, Any]]:
    """The run's model (eval mode, CPU), its training settings, and the checkpoint's other entries.

    The architecture is rebuilt from the checkpoint's own config (head, lse_r), and
    the weights load strictly: a checkpoint from another architecture fails loudly.
    """
    run_dir = Path(run_dir)
    checkpoint = run_folder.load_checkpoint(run_dir / checkpoint_name)
    if "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{run_dir / checkpoint_name} lacks 'model' or 'config': not a cxrutils training checkpoint")
    label_order = list(checkpoint.get("label_order", FINDINGS))
    if label_order != list(FINDINGS):
        raise ValueError(f"{run_dir / checkpoint_name} orders its outputs {label_order}, not {list(FINDINGS)}")
    config = TrainConfig.from_dict(checkpoint["config"])
    model = ChestXrayDenseNet(num_classes=len(FINDINGS), head=config.head, lse_r=config.lse_r)  # type: ignore[arg-type]
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()
    details = {k: v for k, v in checkpoint.items() if k in ("epoch", "best_epoch", "best_val_auroc_mean")}
    return model, config, details


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    input_size: int,
    amp: bool,
    channels_last: bool,
    tta_hflip: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """Sigmoid probabilities (n, classes) for a non-shuffled loader, in its order.

    With ``tta_hflip`` each image is also scored mirrored and the two probabilities
    are averaged. Off by default: chest films are not left-right symmetric (heart,
    situs), so the mirror is not the same film.
    """
    model.eval()
    amp_dtype = autocast_dtype(device, amp)
    batches = []
    for pixels, _ in progress_bar(loader, desc=desc, unit="batch"):
        images = prepare_batch(pixels, device, input_size, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probabilities = torch.sigmoid(model(images).float())
            if tta_hflip:
                probabilities = (probabilities + torch.sigmoid(model(images.flip(-1)).float())) / 2
        batches.append(probabilities.cpu())
    return torch.cat(batches).numpy().astype(np.float64)


def predict_split(
    run_dir: str | os.PathLike[str],
    split: str,
    tta_hflip: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    dataset: NIHDataset | None = None,
) -> pd.DataFrame:
    """Score every cached image of ``split`` with the run's best checkpoint; write and return the table.

    ``dataset`` is the run's ``load_training_dataset(config)`` when the caller has it
    already, so a large root is not indexed twice.

    The table (image, patient_id, ``prob_<finding>`` x 14, the 14 labels) goes to
    ``predictions_<split>.csv`` in the run folder, or ``predictions_<split>_hflip_tta.csv``
    with ``tta_hflip``, so the two never overwrite each other. The returned frame
    holds full precision; the CSV keeps 6 significant digits.

    Images of the split that are not in the cache (missing files, or unreadable ones
    a ``skip_bad_images`` run skipped) cannot be scored: they are printed and listed
    in ``frame.attrs["not_scored"]``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run_dir = Path(run_dir)
    model, config, details = load_run_model(run_dir)
    dataset = dataset or load_training_dataset(config)
    cache = open_image_cache(dataset, config)
    metadata = dataset.metadata
    in_split = (dataset.split.reindex(metadata["image"]) == split).to_numpy()
    in_cache = metadata["image"].isin(cache.usable_names).to_numpy()
    rows = metadata[in_split & in_cache]
    not_scored = metadata.loc[in_split & ~in_cache, "image"].tolist()
    if not_scored:
        print(
            f"{len(not_scored)} {split} images are not in the image cache and are not scored "
            f"(first: {not_scored[0]}); see {cache.folder / 'bad_files.csv'} and the dataset's missing files",
            flush=True,
        )
    if rows.empty:
        raise ValueError(f"{config.data_root}: the {split} split has no images in the cache {cache.folder}")

    labels = rows[list(FINDINGS)].to_numpy(dtype=np.float32)
    loader = make_loader(
        CachedImageDataset(cache, rows["image"].tolist(), labels),
        batch_size=batch_size or config.batch_size,
        shuffle=False,
        seed=config.seed,
        num_workers=config.num_workers if num_workers is None else num_workers,
    )
    torch_device = select_device(device, Distributed())
    model = model.to(torch_device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with stage(f"predict {split}", images=len(rows)):
        probabilities = predict_probabilities(
            model,
            loader,
            torch_device,
            config.input_size,
            config.amp,
            config.channels_last,
            tta_hflip=tta_hflip,
            desc=f"predict {split}",
        )

    name = split + (TTA_SUFFIX if tta_hflip else "")
    run_folder.write_predictions(
        run_dir / run_folder.predictions_name(name),
        rows["image"].tolist(),
        rows["patient_id"].tolist(),
        probabilities,
        labels,
    )
    frame = pd.DataFrame({"image": rows["image"].to_numpy(), "patient_id": rows["patient_id"].to_numpy()})
    for k, finding in enumerate(FINDINGS):
        frame[f"{PROBABILITY_PREFIX}{finding}"] = probabilities[:, k]
    for k, finding in enumerate(FINDINGS):
        frame[finding] = labels[:, k].astype(int)
    frame.attrs.update(
        {
            "split": split,
            "tta_hflip": tta_hflip,
            "not_scored": not_scored,
            "checkpoint": str(run_dir / run_folder.BEST_CHECKPOINT),
            **details,
            "synthetic": dataset.synthetic,
            "device": str(torch_device),
        }
    )
    return frame


def prediction_arrays(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, patient_ids) from a predictions table, columns in ``FINDINGS`` order."""
    probability_columns = [f"{PROBABILITY_PREFIX}{f}" for f in FINDINGS]
    missing = [c for c in ["patient_id", *FINDINGS, *probability_columns] if c not in predictions.columns]
    if missing:
        raise KeyError(f"predictions table lacks columns {missing}; expected the run_folder.write_predictions layout")
    return (
        predictions[list(FINDINGS)].to_numpy(dtype=np.int8),
        predictions[probability_columns].to_numpy(dtype=np.float64),
        predictions["patient_id"].to_numpy(),
    )

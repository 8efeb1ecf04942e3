"""Training followed live in TensorBoard: each epoch's scalars and an augmented batch in ``<run>/tensorboard/``.

    tensorboard --logdir runs/demo/tensorboard        # or: make tensorboard RUN=runs/demo

Rank 0 writes, once per epoch: the training and validation losses, the mean and each
finding's validation AUROC, the lr, training images per second and the epoch's seconds
(tags below), and, when training starts, the first training films after augmentation.
It is cheap (a few hundred bytes an epoch, written by TensorBoard's own background
thread) and on by default (``tensorboard: false`` turns it off). The history files
(``history.csv``, ``history.json``) stay the record; these events are a view of it.

A resumed run purges the events of the epochs after its checkpoint, which a killed
process may have written, so every epoch appears once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxrutils.labels import FINDINGS

TENSORBOARD_FOLDER = "tensorboard"
# TensorBoard tag -> the history row's column. Grouped by the part before "/" in TensorBoard's scalar view.
SCALAR_TAGS: dict[str, str] = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "auroc/validation_mean": "val_auroc_mean",
    **{f"auroc_by_finding/{finding}": f"val_auroc_{finding}" for finding in FINDINGS},
    "optimizer/lr": "lr",
    "speed/train_images_per_second": "train_images_per_second",
    "speed/epoch_seconds": "epoch_seconds",
}
AUGMENTED_BATCH_TAG = "augmented training batch"


class TrainingBoard:
    """The run's TensorBoard events, or nothing when disabled (other ranks, ``tensorboard: false``, a finished run)."""

    def __init__(self, run_dir: Path, enabled: bool, first_epoch: int) -> None:
        self.writer: Any = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_FOLDER), purge_step=first_epoch)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def epoch(self, row: dict[str, Any]) -> None:
        """One history row's figures at its epoch (a missing or empty figure is left out, not written as 0)."""
        if self.writer is None:
            return
        for tag, column in SCALAR_TAGS.items():
            value = row.get(column)
            if value is not None and value == value:  # NaN: a finding validation could not score
                self.writer.add_scalar(tag, float(value), global_step=int(row["epoch"]))
        self.writer.flush()  # live: the epoch is on disk when its line is printed

    def augmented_batch(self, images: torch.Tensor, epoch: int) -> None:
        """(n, 1, H, W) films in [0, 1], as the network gets them after augmentation."""
        if self.writer is not None and len(images):
            self.writer.add_images(AUGMENTED_BATCH_TAG, images.clamp(0, 1), global_step=epoch, dataformats="NCHW")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

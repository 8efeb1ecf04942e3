"""A trained network's scores: the one inference loop, and a run's predictions on one of its splits.

``predict_logits`` is the only place a network scores cached films: validation during
training and every later prediction call it, so a film scored here is exactly what
validation saw. ``predict_split`` scores a split of an opened run
(``run_folder.open_run``) and writes ``predictions_<split>.csv`` into its folder.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxrutils.data.cache import BAD_FILES_NAME as CACHE_BAD_FILES_NAME
from cxrutils.engine import run_folder
from cxrutils.engine.loader import CachedImageDataset, make_loader
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.runtime import autocast_dtype, select_device
from cxrutils.labels import FINDINGS
from cxrutils.predictions import predictions_table
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar
from cxrutils.settings import SPLITS as SETTINGS_SPLITS

SPLITS: tuple[str, ...] = SETTINGS_SPLITS  # the one list, in the settings schema
VIEWS: tuple[str, ...] = ("as stored", "mirrored")


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    input_size: int,
    amp: bool,
    channels_last: bool,
    mirrored: bool = False,
    desc: str = "predict",
    show_progress: bool = True,
    summarise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for a non-shuffled loader, in its order: logits (views, n, classes) float32 on the CPU.

    One view, the films as stored; with ``mirrored`` a second, each film flipped left
    to right (for test-time augmentation; chest films are not symmetric, so it is not
    the same film). The model is put in eval mode. ``summarise``: the bar stays, and under the
    reports runner the notebook keeps "<desc>: <n> films in <time>"; off for validation, whose
    epoch line says more.
    """
    model.eval()
    amp_dtype = autocast_dtype(device, amp)
    batches, labels = [], []
    # A caller may pass its own batches (an iterable, no dataset) with the bar off.
    bar = progress_bar(total=len(loader.dataset) if show_progress else None, desc=desc, unit="img",
                       disable=not show_progress, leave=summarise, done=f"{desc}: {{n:,}} films" if summarise else False)
    for pixels, targets in loader:
        images = prepare_batch(pixels, device, input_size, channels_last)
        views = (images, images.flip(-1)) if mirrored else (images,)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            # Kept on the device: a .cpu() per batch would wait for the GPU at every batch. 14 logits a film are
            # 5.6 MB for 100,000 films, copied once at the end.
            batches.append(torch.stack([model(view).float() for view in views]))
        labels.append(targets)
        bar.update(len(targets))
    bar.close()
    return torch.cat(batches, dim=1).cpu(), torch.cat(labels)


def probabilities_of(logits: torch.Tensor) -> np.ndarray:
    """(n, classes) float64: the sigmoid of each view's logits, averaged over the views."""
    return torch.sigmoid(logits).mean(dim=0).numpy().astype(np.float64)


def predict_split(
    run: run_folder.Run,
    split: str,
    tta_hflip: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
) -> pd.DataFrame:
    """Score every cached image of the run's ``split`` with its best checkpoint; write and return the table.

    The table (``cxrutils.predictions``: image, patient_id, ``prob_<finding>`` x 14, the
    14 labels) goes to ``predictions_<split>.csv`` in the run folder, or
    ``predictions_<split>_hflip_tta.csv`` with ``tta_hflip``, so the two never overwrite
    each other. The returned frame holds full precision; the CSV keeps 6 significant digits.

    Images of the split that are not in the cache (missing files, or unreadable ones a
    ``skip_bad_images`` run skipped) cannot be scored: they are printed and listed in
    ``frame.attrs["not_scored"]``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    config, cache = run.config, run.image_cache()
    metadata = run.dataset.metadata
    in_split = (metadata["split"] == split).to_numpy()
    in_cache = metadata["image"].isin(cache.usable_names).to_numpy()
    rows = metadata[in_split & in_cache]
    not_scored = metadata.loc[in_split & ~in_cache, "image"].tolist()
    if not_scored:
        print(
            f"{len(not_scored)} {split} images are not in the image cache and are not scored "
            f"(first: {not_scored[0]}); see {cache.folder / CACHE_BAD_FILES_NAME} and the dataset's missing files",
            flush=True,
        )
    if rows.empty:
        raise ValueError(f"{run.data_root}: the {split} split has no images in the cache {cache.folder}")

    labels = rows[list(FINDINGS)].to_numpy(dtype=np.float32)
    loader = make_loader(
        CachedImageDataset(cache, rows["image"].tolist(), labels),
        batch_size=batch_size or config.batch_size,
        shuffle=False,
        seed=config.seed,
        num_workers=config.num_workers if num_workers is None else num_workers,
    )
    torch_device = select_device(device)
    model = run.model().to(torch_device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with stage(f"predict {split}", images=len(rows)):
        logits, _ = predict_logits(model, loader, torch_device, config.input_size, config.amp, config.channels_last,
                                   mirrored=tta_hflip, desc=f"predict {split}")
    probabilities = probabilities_of(logits)

    frame = predictions_table(rows["image"].tolist(), rows["patient_id"].tolist(), probabilities, labels)
    run_folder.write_predictions(run.run_dir, frame, split, tta_hflip)
    frame.attrs.update(
        {
            "split": split,
            "tta_hflip": tta_hflip,
            "not_scored": not_scored,
            "checkpoint": str(run.run_dir / run_folder.BEST_CHECKPOINT),
            **run.checkpoint_details,
            "synthetic": run.dataset.synthetic,
            "device": str(torch_device),
        }
    )
    return frame

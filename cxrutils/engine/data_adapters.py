"""A run's settings (``TrainConfig``) turned into the data layer's explicit arguments.

``cxrutils.data`` takes a root, a size, a folder; it never reads a ``TrainConfig``.
Training, prediction, the run folder and the command line reach the dataset and the
image cache through these few functions, so they all read the settings the same way
and share one cache. This module imports no torch.

``data_root`` (where given) replaces the settings' own root: a run whose data has moved
is opened from where the data is now, without changing its recorded settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrutils.data.cache import ImageCache, image_cache_dir, open_image_cache
from cxrutils.data.dataset import NIHDataset, RecordedSplit, load_dataset
from cxrutils.settings import TrainConfig


def _data_root(config: TrainConfig, data_root: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    root = config.data_root if data_root is None else data_root
    if not root:
        raise ValueError("data_root is not set: pass --set data_root=/path/to/nih (or data_root=... in the notebook)")
    return root


def training_dataset(
    config: TrainConfig,
    data_root: str | os.PathLike[str] | None = None,
    split: RecordedSplit | None = None,
) -> NIHDataset:
    """The dataset the settings describe: its root, images folder and split settings (or ``split``, as recorded)."""
    return load_dataset(_data_root(config, data_root), images_dir=config.images_dir, val_fraction=config.val_fraction,
                        test_fraction=config.test_fraction, seed=config.split_seed, split=split)


def training_cache_dir(config: TrainConfig, data_root: str | os.PathLike[str] | None = None) -> Path:
    """The settings' image cache folder: ``cache_dir`` if set, else data/cache/<dataset folder>_<cache_size>."""
    return image_cache_dir(config.data_root if data_root is None else data_root, config.cache_size, config.cache_dir)


def open_training_cache(
    config: TrainConfig,
    dataset: NIHDataset | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> ImageCache:
    """The settings' image cache of ``dataset`` (default: ``training_dataset(config, data_root)``).

    Reused when complete, otherwise built (or its interrupted build resumed): training,
    prediction, evaluation and the comparison all open it here.
    """
    dataset = dataset if dataset is not None else training_dataset(config, data_root)
    return open_image_cache(dataset, training_cache_dir(config, data_root), size=config.cache_size,
                            skip_bad=config.skip_bad_images)

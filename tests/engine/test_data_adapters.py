"""A run's settings reach the data layer through the adapters: the same root, split settings and cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrutils.data.dataset import load_dataset
from cxrutils.engine.data_adapters import open_training_cache, training_cache_dir, training_dataset
from cxrutils.paths import DATA_DIR
from cxrutils.settings import TrainConfig


def test_the_training_dataset_is_the_settings_root_drawn_with_the_settings_split(tiny_phantom_root: Path):
    config = TrainConfig(data_root=str(tiny_phantom_root), val_fraction=0.5, split_seed=3)
    dataset = training_dataset(config)
    expected = load_dataset(tiny_phantom_root, val_fraction=0.5, seed=3)
    assert dataset.metadata["split"].tolist() == expected.metadata["split"].tolist()
    assert dataset.metadata["split"].tolist() != load_dataset(tiny_phantom_root).metadata["split"].tolist()
    with pytest.raises(ValueError, match="data_root is not set"):
        training_dataset(TrainConfig(data_root=""))


def test_the_cache_folder_is_cache_dir_or_named_by_the_root_and_size(tmp_path: Path):
    config = TrainConfig(data_root=str(tmp_path / "nih"), cache_size=128)
    assert training_cache_dir(config) == DATA_DIR / "cache" / "nih_128"
    assert training_cache_dir(config, data_root=tmp_path / "moved") == DATA_DIR / "cache" / "moved_128"
    config.cache_dir = str(tmp_path / "cache")
    assert training_cache_dir(config, data_root=tmp_path / "moved") == tmp_path / "cache"


def test_the_training_cache_is_built_where_and_as_the_settings_say(tiny_phantom_root: Path, tmp_path: Path):
    config = TrainConfig(data_root=str(tiny_phantom_root), cache_dir=str(tmp_path / "cache"), cache_size=16)
    cache = open_training_cache(config)
    assert cache.folder == tmp_path / "cache" and cache.size == 16
    assert sorted(cache.usable_names) == sorted(training_dataset(config).metadata["image"])

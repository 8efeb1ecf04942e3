"""Shared fixtures: the real-format files in tests/fixtures and a tiny phantom root."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


def write_png(path: Path, size: int = 32, value: int = 128, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), value, dtype=np.uint8)
    if mode == "RGBA":
        Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1), mode="RGBA").save(path)
    else:
        Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset, built once per test session (read-only: copy before changing)."""
    from cxrutils.demo.roots import DemoSpec, build_demo_dataset

    spec = DemoSpec(n_patients=30, image_size=64, seed=3, min_images_per_finding=2, max_images_per_patient=3)
    return build_demo_dataset(tmp_path_factory.mktemp("phantoms") / "demo", spec, workers=1)


@pytest.fixture
def phantom_copy(tiny_phantom_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny phantom dataset."""
    return Path(shutil.copytree(tiny_phantom_root, tmp_path / "demo"))


@pytest.fixture(scope="session")
def tiny_run(tiny_phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seconds-long training run (tiny profile) on the tiny phantom root; returns its run folder (read-only)."""
    from cxrutils.engine.train import train
    from cxrutils.settings import load_train_config

    folder = tmp_path_factory.mktemp("tiny_run")
    config = load_train_config(
        "tiny",
        {"data_root": str(tiny_phantom_root), "runs_dir": str(folder / "runs"), "cache_dir": str(folder / "cache"),
         "name": "tiny"},
    )
    return train(config).run_dir

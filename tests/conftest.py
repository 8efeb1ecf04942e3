"""Shared fixtures: the real-format files in tests/fixtures and a tiny phantom root."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
# benchmarks/mutation.py runs the same tests hundreds of times: it names a folder here, and the session fixtures'
# data (built by unmutated code in its first run) is reused from it instead of being built again in every run.
REUSE_VARIABLE = "CXRUTILS_TEST_FIXTURES"


def built_once(name: str, tmp_path_factory: pytest.TempPathFactory, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills: fresh for each session, or reused from $CXRUTILS_TEST_FIXTURES/<name>."""
    reuse = os.environ.get(REUSE_VARIABLE)
    if not reuse:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = Path(reuse) / name
    if not (folder / ".built").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(folder)
        (folder / ".built").touch()
    return folder


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
    return built_once("phantoms", tmp_path_factory, lambda folder: build_demo_dataset(folder / "demo", spec,
                                                                                       workers=1)) / "demo"


@pytest.fixture
def phantom_copy(tiny_phantom_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny phantom dataset."""
    return Path(shutil.copytree(tiny_phantom_root, tmp_path / "demo"))


@pytest.fixture(scope="session")
def tiny_run(tiny_phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seconds-long training run (tiny profile) on the tiny phantom root; returns its run folder (read-only)."""
    from cxrutils.engine.train import train
    from cxrutils.settings import load_train_config

    def build(folder: Path) -> None:
        train(load_train_config("tiny", {"data_root": str(tiny_phantom_root), "runs_dir": str(folder / "runs"),
                                         "cache_dir": str(folder / "cache"), "name": "tiny"}))

    return built_once("tiny_run", tmp_path_factory, build) / "runs" / "tiny"

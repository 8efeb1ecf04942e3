"""Shared fixtures: the real-format files in tests/helpers/fixtures and a tiny phantom root."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "helpers" / "fixtures"
# benchmarks/mutation.py runs the same tests hundreds of times: it names a folder here, and the session fixtures'
# data (built by unmutated code in its first run) is reused from it instead of being built again in every run.
REUSE_VARIABLE = "CXRUTILS_TEST_FIXTURES"
# make test's lanes (tests/lanes.py) name the folder their session fixtures are built in once for both.
SHARED_ROOT_VARIABLE = "CXRUTILS_TEST_SHARED_ROOT"


def pytest_configure(config: pytest.Config) -> None:
    """With several pytest processes (``make test``'s two lanes, or pytest-xdist): one thread each for torch and BLAS.

    Two processes of two threads each on two cores meet at OpenMP barriers while the other holds
    a core, and spin: slower than one thread each. Children (kernels, torchrun) inherit it.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(SHARED_ROOT_VARIABLE):
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(variable, "1")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects: a test reading the rendered reports is a kernel test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that starts Jupyter kernels (marked ``notebook``, or reading the reports rendered once) is marked
    ``notebook``: ``make test`` runs them in a lane of their own (``tests/lanes.py``), and under pytest-xdist
    (``--dist loadgroup``) they share one worker.

    jupyter_client picks a kernel's five TCP ports by binding to port 0 and letting go: two
    kernels started at the same moment by two processes can be handed the same ports, and a
    client then reads the other kernel's messages ("Invalid Signature", "Kernel didn't respond").
    """
    for item in items:
        if item.get_closest_marker("notebook") or "rendered_reports" in getattr(item, "fixturenames", ()):
            if not item.get_closest_marker("notebook"):
                item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.xdist_group("kernels"))


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Where session fixtures are built once for several pytest processes: ``make test``'s two lanes name a folder
    (``tests/lanes.py``); under pytest-xdist, the folder above every worker's temporary root (pytest-xdist's
    documented recipe). None in a single process."""
    lanes = os.environ.get(SHARED_ROOT_VARIABLE)
    if lanes:
        return Path(lanes)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent


def _build_marked(folder: Path, build: Callable[[Path], None]) -> Path:
    """``build`` into ``folder`` unless a complete build (its ``.built`` mark) is there; a half build is redone."""
    if not (folder / ".built").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(folder)
        (folder / ".built").touch()
    return folder


def built_once(name: str, tmp_path_factory: pytest.TempPathFactory, build: Callable[[Path], None],
               reusable: bool = True) -> Path:
    """A folder that ``build`` fills: once per test session (once for all pytest-xdist workers), or, when
    ``reusable``, reused from $CXRUTILS_TEST_FIXTURES/<name> (what the code under test builds is not: a mutant must
    build it again)."""
    reuse = os.environ.get(REUSE_VARIABLE)
    if reuse and reusable:
        return _build_marked(Path(reuse) / name, build)
    shared = _shared_root(tmp_path_factory)
    if shared is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    # The first worker to ask builds it; the others wait on the lock, then find it built.
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_marked(shared / f"shared-{name}", build)


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


@dataclass
class RenderedReports:
    """Every notebook run once by the reports runner, as a user runs it: in its own process, on a terminal."""

    reports_dir: Path
    run_dir: Path
    terminal: str  # what the runner's terminal showed: its stdout and stderr, and the kernels' stderr
    returncode: int


def _tiny_training_settings() -> list[str]:
    """The tiny training profile (configs/train/tiny.yaml) as --set arguments for the demo report profile."""
    import yaml

    profile = yaml.safe_load((Path(__file__).parent.parent / "configs" / "train" / "tiny.yaml").read_text())
    flat = {key: value for key, value in profile.items() if key not in ("name", "data_root", "augment")}
    flat.update({f"augment.{key}": value for key, value in profile["augment"].items()})
    return [f"{key}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}"
            for key, value in flat.items()]


@pytest.fixture(scope="session")
def rendered_reports(tiny_phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RenderedReports:
    """``cxrutils reports`` over every notebook on the tiny phantom root, trained with the tiny profile.

    A subprocess without pytest in its environment: ipykernel then captures the kernel's file
    descriptors as it does for a user (inside pytest it does not), so what lands in the HTML and
    what reaches the terminal are what a user gets. Read-only: copy before changing.
    """
    def build(folder: Path) -> None:
        (folder / "no_weights").mkdir()
        sets = [f"data_root={tiny_phantom_root}", f"runs_dir={folder / 'runs'}", f"cache_dir={folder / 'cache'}",
                "name=tiny_reports", *_tiny_training_settings(), "n_bootstrap=50",
                f"weights_dir={folder / 'no_weights'}", "integrity_check=quick"]
        command = [sys.executable, "-m", "cxrutils", "reports", "--profile", "demo", "--reports-dir",
                   str(folder / "reports"), *[arg for text in sets for arg in ("--set", text)]]
        environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                  environment.get("PYTHONPATH")]))
        finished = subprocess.run(command, cwd=Path(__file__).parent.parent, env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=900)
        (folder / "terminal.txt").write_text(finished.stdout)
        (folder / "returncode.txt").write_text(str(finished.returncode))

    folder = built_once("rendered", tmp_path_factory, build, reusable=False)
    # Each run's reports have their own folder (reports/<run name>/); reports/index.html lists the runs.
    return RenderedReports(folder / "reports" / "tiny_reports", folder / "runs" / "tiny_reports",
                           (folder / "terminal.txt").read_text(), int((folder / "returncode.txt").read_text()))

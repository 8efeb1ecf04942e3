"""Every way a checkpoint or weights file is read, given a file whose unpickling would run code.

The crafted file is a real torch checkpoint whose pickle calls ``exec`` to write a
marker file. Each loading path that uses ``weights_only=True`` must refuse it with an
error naming the file, and the marker must never appear. TorchXRayVision's release
files are pickled whole modules that its own loader unpickles with
``weights_only=False``; they must be read only from the folder the user named.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from cxrutils.compare import compare_run, txv
from cxrutils.engine import run_folder
from cxrutils.engine.model import IMAGENET_DENSENET121_FILE, build_model, load_checkpoint_weights
from cxrutils.evaluate import evaluate_run

with warnings.catch_warnings():
    import torchxrayvision as xrv

MODEL = "densenet121-res224-nih"


class _WritesAMarker:
    """Unpickling this calls ``exec``: what a crafted checkpoint can make ``torch.load(weights_only=False)`` do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code from the checkpoint ran')",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER_code_ran"


def crafted(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file at ``path`` that writes ``marker`` when unpickled (checked once, then removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"classifier.weight": torch.zeros(14, 1024)}, "config": _WritesAMarker(marker),
                "label_order": [], "epoch": 1}, path)
    torch.load(path, weights_only=False)  # the control: this file really runs code when fully unpickled
    assert marker.is_file()
    marker.unlink()
    return path


def test_our_checkpoint_readers_refuse_a_pickle_that_runs_code(tmp_path, marker):
    path = crafted(tmp_path / "checkpoint_best.pt", marker)
    with pytest.raises(ValueError, match="weights_only=True") as error:
        run_folder.load_checkpoint(path)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint_weights(build_model("none"), path)
    with pytest.raises(ValueError, match=str(path)):
        build_model(str(path))  # --set weights=/path/checkpoint_best.pt
    assert not marker.exists()


def test_the_imagenet_weights_file_is_read_with_weights_only(tmp_path, marker, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = crafted(tmp_path / "torch" / "hub" / "checkpoints" / IMAGENET_DENSENET121_FILE, marker)
    with pytest.raises(ValueError, match="weights_only=True") as error:
        build_model("imagenet")
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_a_run_folder_with_a_crafted_checkpoint_is_neither_evaluated_nor_resumed(tiny_run, tmp_path, marker):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))
    crafted(run_dir / run_folder.BEST_CHECKPOINT, marker)
    with pytest.raises(ValueError, match="weights_only=True"):
        run_folder.open_run(run_dir).model()
    with pytest.raises(ValueError, match=str(run_dir / run_folder.BEST_CHECKPOINT)):
        evaluate_run(run_dir, n_bootstrap=10)

    from cxrutils.engine.train import train

    crafted(run_dir / run_folder.LAST_CHECKPOINT, marker)
    config = run_folder.read_run_config(run_dir)
    config.runs_dir = str(run_dir.parent)
    with pytest.raises(ValueError, match=str(run_dir / run_folder.LAST_CHECKPOINT)):
        train(config, resume=True)
    assert not marker.exists()


def test_a_run_whose_outputs_are_in_another_order_is_refused(tiny_run, tmp_path):
    """The label-order guard: a checkpoint that orders its 14 outputs differently would score every finding with
    another finding's output."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name))
    checkpoint = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    checkpoint["label_order"] = checkpoint["label_order"][::-1]
    run_folder.save_checkpoint(run_dir / run_folder.BEST_CHECKPOINT, checkpoint)
    with pytest.raises(ValueError, match="orders its outputs") as error:
        run_folder.load_run_model(run_dir)
    assert str(checkpoint["label_order"]) in str(error.value)


def test_txv_modules_are_unpickled_only_from_the_folder_the_user_named(tiny_run, tmp_path, marker, monkeypatch):
    """A crafted release file in torchxrayvision's default folder, in the working directory and beside the named
    folder: with a folder named, none of them is read; without one, only the default folder would be."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    file_name = txv.txv_spec(MODEL).weights_file
    default_folder = txv.default_weights_dir()
    assert str(default_folder).startswith(str(tmp_path / "home"))
    for folder in (default_folder, tmp_path, tmp_path / "weights_elsewhere"):
        crafted(folder / file_name, marker)
    named = tmp_path / "named"
    named.mkdir()
    with pytest.raises(txv.TxvWeightsNotFoundError, match=str(named)):
        txv.load_txv_model(MODEL, weights_dir=named)
    result = compare_run(tiny_run, [MODEL], weights_dir=named)
    assert result.skipped and result.loaded.missing[0].folder == named
    assert not marker.exists()

    # A relative weights_dir is the project's, not the working directory's (which holds a crafted file).
    assert txv.weights_path(MODEL, "weights_elsewhere").parent != tmp_path / "weights_elsewhere"
    # Without a named folder only the default one is read, not the working directory or any other folder.
    (default_folder / file_name).unlink()
    torch.manual_seed(3)
    torch.save(xrv.models.DenseNet(), named / file_name)  # a benign release-format file, in the named folder only
    with pytest.raises(txv.TxvWeightsNotFoundError, match=str(default_folder)):
        txv.load_txv_model(MODEL)
    loaded = txv.load_txv_model(MODEL, weights_dir=named)
    assert loaded.weights_path == named / file_name
    assert not marker.exists()

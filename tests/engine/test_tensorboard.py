"""TensorBoard's events, read back with TensorBoard's own reader: the history's figures, once per epoch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cxrutils.engine import run_folder
from cxrutils.engine.tensorboard_log import AUGMENTED_BATCH_TAG, SCALAR_TAGS, TENSORBOARD_FOLDER
from cxrutils.engine.train import train
from cxrutils.settings import load_train_config


def _config(root: Path, tmp: Path, **overrides):
    return load_train_config("tiny", {"data_root": str(root), "runs_dir": str(tmp / "runs"),
                                      "cache_dir": str(tmp / "cache"), **overrides})


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TENSORBOARD_FOLDER), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_each_epoch_of_the_history_is_in_tensorboard_once_and_a_resume_continues_it(tiny_phantom_root, tmp_path):
    config = _config(tiny_phantom_root, tmp_path, epochs=1)
    run_dir = train(config).run_dir
    train(dataclasses.replace(config, epochs=2), resume=True)

    events = _events(run_dir)
    history = run_folder.read_history(run_dir)
    scalars = set(events.Tags()["scalars"])
    for tag, column in SCALAR_TAGS.items():
        expected = history[column].to_numpy(dtype=float)
        if np.isnan(expected).all():  # a finding validation could not score: left out, not written as 0
            assert tag not in scalars, tag
            continue
        written = events.Scalars(tag)
        assert [event.step for event in written] == history["epoch"][~np.isnan(expected)].tolist(), tag
        np.testing.assert_allclose([event.value for event in written], expected[~np.isnan(expected)], rtol=1e-6,
                                   err_msg=tag)
    assert {"loss/train", "loss/validation", "auroc/validation_mean", "optimizer/lr"} <= scalars
    pictures = events.Images(AUGMENTED_BATCH_TAG)
    assert [picture.step for picture in pictures] == [1, 2]  # when each process started: epoch 1, then epoch 2
    # The first 8 training films side by side, each at the network's input size.
    assert (pictures[0].height, pictures[0].width) == (config.input_size, 8 * config.input_size)


def test_events_a_killed_process_wrote_after_its_checkpoint_are_purged_on_resume(tiny_phantom_root, tmp_path):
    from cxrutils.engine.tensorboard_log import TrainingBoard

    config = _config(tiny_phantom_root, tmp_path, epochs=1)
    run_dir = train(config).run_dir
    stray = TrainingBoard(run_dir, enabled=True, first_epoch=2)  # what a process killed in epoch 2 left behind
    stray.epoch({"epoch": 2, "train_loss": 99.0})
    stray.close()
    train(dataclasses.replace(config, epochs=2), resume=True)
    losses = _events(run_dir).Scalars("loss/train")
    assert [event.step for event in losses] == [1, 2] and losses[1].value != pytest.approx(99.0)


def test_tensorboard_off_writes_no_events(tiny_phantom_root, tmp_path):
    run_dir = train(_config(tiny_phantom_root, tmp_path, epochs=1, tensorboard=False)).run_dir
    assert not (run_dir / TENSORBOARD_FOLDER).exists()

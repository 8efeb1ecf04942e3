"""Where the network runs: a GPU torch cannot use, the first line of a run, batches, resuming elsewhere."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxrutils.engine import network_input, run_folder, runtime
from cxrutils.engine.model import build_model
from cxrutils.engine.train import TrainingState, interleave
from cxrutils.settings import AugmentConfig, TrainConfig


def _fake_nvidia_smi(folder: Path, answer: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_a_gpu_that_torch_cannot_use_stops_the_run_with_the_driver_the_cuda_build_and_the_fix(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "550.54.15, NVIDIA A100-SXM4-80GB")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runtime.GPUUnusableError) as error:
        runtime.select_device("auto")
    message = str(error.value)
    assert "NVIDIA A100-SXM4-80GB" in message and "550.54.15" in message
    assert str(torch.version.cuda) in message and "--index-url" in message and "device=cpu" in message
    assert runtime.select_device("cpu") == torch.device("cpu")  # asked for on purpose: no check


def test_without_a_gpu_auto_is_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device("auto") == torch.device("cpu")
    assert runtime.describe_runtime(torch.device("cpu"), True, False, runtime.Distributed()) == (
        "training on cpu, float32, 1 process")


def test_augmentation_resamples_the_cached_film_to_the_input_size_in_one_interpolation(monkeypatch):
    calls = []
    real_interpolate = F.interpolate
    monkeypatch.setattr(network_input.F, "interpolate", lambda *a, **k: calls.append(1) or real_interpolate(*a, **k))
    pixels = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    augmented = network_input.prepare_batch(pixels, torch.device("cpu"), 32, False, AugmentConfig(), generator)
    assert augmented.shape == (3, 1, 32, 32) and calls == []  # the warp's grid does the resize
    plain = network_input.prepare_batch(pixels, torch.device("cpu"), 32, False)
    assert plain.shape == (3, 1, 32, 32) and calls == [1]  # validation: one antialiased resize
    identity = AugmentConfig(rotation_degrees=0, scale_min=1, scale_max=1, translate_fraction=0, hflip_probability=0)
    assert torch.equal(network_input.prepare_batch(pixels, torch.device("cpu"), 32, False, identity), plain)


def test_shards_of_every_world_size_th_film_interleave_back_in_order():
    films = np.arange(11)[:, None] * np.ones((1, 3))
    for world in (1, 2, 3, 4):
        shards = [films[rank::world] for rank in range(world)]
        assert sum(len(s) for s in shards) == len(films)  # no film twice, none missing
        np.testing.assert_array_equal(interleave(shards), films)


def _state(scaler_enabled: bool = False) -> TrainingState:
    """A fresh CPU training state; with ``scaler_enabled``, the fp16 scaler a GPU without bf16 would use."""
    made = TrainingState.create(TrainConfig(weights="none", amp=False), build_model("none"), torch.device("cpu"))
    if scaler_enabled:
        made.scaler = torch.amp.GradScaler("cpu", enabled=True)
    return made


def test_a_checkpoint_without_a_scaler_resumes_where_a_scaler_is_needed(tiny_run):
    """A bf16 or CPU run saved no scaler state; resumed on an fp16-only GPU its enabled scaler starts afresh."""
    checkpoint = run_folder.load_checkpoint(tiny_run / run_folder.LAST_CHECKPOINT)
    assert checkpoint["scaler"] == {}
    state = _state(scaler_enabled=True)
    state.load_checkpoint(checkpoint, runtime.Distributed())
    assert state.scaler.is_enabled() and state.epoch == checkpoint["epoch"]


def test_resuming_on_another_number_of_processes_restores_what_it_can_and_says_what_it_cannot(tiny_run):
    checkpoint = run_folder.load_checkpoint(tiny_run / run_folder.LAST_CHECKPOINT)
    assert checkpoint["world_size"] == 1
    two = {**checkpoint, "rng": [checkpoint["rng"][0], checkpoint["rng"][0]], "world_size": 2}
    state = _state()
    with pytest.warns(UserWarning, match="saved from 2 process.*on 1.*random generators are not"):
        state.load_checkpoint(two, runtime.Distributed())
    assert state.epoch == checkpoint["epoch"] and state.history == checkpoint["history"]
    same = _state()
    before = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_checkpoint(checkpoint, runtime.Distributed())
    assert not torch.equal(torch.get_rng_state(), before)  # restored


def test_resume_reads_the_checkpoint_onto_the_cpu_whatever_the_training_device(tiny_phantom_root, tmp_path,
                                                                               monkeypatch):
    """Loaded onto a GPU, AdamW's step counters stay there and each step reads them back: the CPU it must be.

    (On a CPU box the two places are the same, so the call itself is checked.)"""
    from cxrutils.engine.train import train
    from cxrutils.settings import load_train_config

    config = load_train_config("tiny", {"data_root": str(tiny_phantom_root), "runs_dir": str(tmp_path / "runs"),
                                        "cache_dir": str(tmp_path / "cache"), "name": "r", "epochs": 1})
    train(config)
    locations = []
    real_load = run_folder.load_checkpoint
    monkeypatch.setattr(run_folder, "load_checkpoint",
                        lambda path, map_location="cpu": locations.append(map_location) or real_load(path,
                                                                                                     map_location))
    config.epochs = 2
    train(config, resume=True)
    assert locations and all(location == "cpu" for location in locations), locations


def test_cache_build_command_builds_once_and_reuses(tiny_phantom_root, tmp_path, capsys):
    from cxrutils.cli import main

    sets = ["--set", f"data_root={tiny_phantom_root}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(["cache", "build", "--config", "tiny", *sets]) == 0
    first = (tmp_path / "cache" / "manifest.json").read_text()
    assert main(["cache", "build", "--config", "tiny", *sets]) == 0
    assert (tmp_path / "cache" / "manifest.json").read_text() == first  # reused, not rebuilt
    assert "films cached" in capsys.readouterr().out


def _build_in_another_process(paths: dict, folder: str, out: str) -> None:
    import pandas as pd

    from cxrutils.data.cache import build_cache

    cache = build_cache(pd.Series(paths), folder, size=32, workers=1)
    Path(out).write_text(cache.fingerprint)


def test_two_processes_building_one_cache_take_turns(tiny_phantom_root, tmp_path):
    """Every torchrun process opens the cache; the first builds it, the others wait on its lock and reuse it."""
    import multiprocessing

    from cxrutils.data.cache import ImageCache, build_cache
    from cxrutils.data.dataset import load_dataset

    paths = load_dataset(tiny_phantom_root).index.paths.to_dict()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_build_in_another_process,
                                 args=(paths, str(tmp_path / "shared"), str(tmp_path / f"{n}.txt"))) for n in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    fingerprints = {(tmp_path / f"{n}.txt").read_text() for n in (1, 2)}
    serial = build_cache(pd.Series(paths), tmp_path / "serial", size=32, workers=1)
    assert fingerprints == {serial.fingerprint}
    shared = ImageCache.open(tmp_path / "shared")
    np.testing.assert_array_equal(np.asarray(shared.pixels), np.asarray(serial.pixels))

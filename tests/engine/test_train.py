"""The training engine on tiny phantom data: run folder, resume, determinism, DDP, accumulation, warmup, weights."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrutils.engine import network_input, run_folder
from cxrutils.engine.model import IMAGENET_DENSENET121_FILE, WeightsNotFoundError, build_model
from cxrutils.engine.train import train
from cxrutils.labels import FINDINGS
from cxrutils.locks import LOCK_NAME, FolderLocked
from cxrutils.settings import load_train_config

HELPERS_DIR = Path(__file__).parents[1] / "helpers"


def _config(root: Path, tmp: Path, **overrides):
    return load_train_config(
        "tiny",
        {"data_root": str(root), "runs_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"), "name": "run",
         **overrides},
    )


def _checkpoint(run_dir: Path) -> dict:
    return run_folder.load_checkpoint(run_dir / run_folder.LAST_CHECKPOINT)


def test_a_run_writes_everything_later_notebooks_read(tiny_phantom_root, tmp_path):
    result = train(_config(tiny_phantom_root, tmp_path))
    run_dir = result.run_dir
    config = run_folder.read_config(run_dir)
    assert config["label_order"] == list(FINDINGS) and config["synthetic"] is True
    history = run_folder.read_history(run_dir)
    assert history["epoch"].tolist() == [1, 2]
    for column in ("train_loss", "val_loss", "val_auroc_mean", "lr", "epoch_seconds", "train_images_per_second"):
        assert np.isfinite(history[column]).all(), column
    assert {f"val_auroc_{f}" for f in FINDINGS} <= set(history.columns)
    assert pd.read_csv(run_dir / run_folder.HISTORY_CSV)["epoch"].tolist() == [1, 2]
    best = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    assert best["epoch"] == result.best_epoch and best["label_order"] == list(FINDINGS)
    # Validation predictions of the best epoch: one row per validation image, probabilities in [0, 1].
    predictions = run_folder.read_predictions(run_dir, "val")
    assert len(predictions) == config["val_images"]
    probabilities = predictions[[f"prob_{f}" for f in FINDINGS]].to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    thresholds = run_folder.read_thresholds(run_dir)
    assert set(thresholds) == {"youden", "max_f1"} and set(thresholds["youden"]) == set(FINDINGS)
    # Nothing half-written is left behind.
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


def test_the_same_seed_gives_the_same_metrics_on_the_cpu(tiny_phantom_root, tmp_path):
    first = run_folder.read_history(train(_config(tiny_phantom_root, tmp_path, name="a")).run_dir)
    second = run_folder.read_history(train(_config(tiny_phantom_root, tmp_path, name="b")).run_dir)
    columns = ["train_loss", "val_loss", "val_auroc_mean"]
    pd.testing.assert_frame_equal(first[columns], second[columns])


@pytest.fixture(scope="module")
def uninterrupted(tiny_phantom_root, tmp_path_factory) -> Path:
    """A 3-epoch run that nothing interrupted: what a killed and resumed run must end up identical to."""
    return train(_config(tiny_phantom_root, tmp_path_factory.mktemp("uninterrupted"), name="whole",
                         epochs=3)).run_dir


def _assert_same_training_state(resumed_dir: Path, reference_dir: Path) -> None:
    """History, scheduler, best epoch, every weight and every optimizer state tensor, exactly."""
    history = run_folder.read_history(resumed_dir)
    reference_history = run_folder.read_history(reference_dir)
    assert history["epoch"].tolist() == reference_history["epoch"].tolist()  # no gap, no duplicate
    columns = ["train_loss", "val_loss", "val_auroc_mean", "lr"]
    pd.testing.assert_frame_equal(history[columns], reference_history[columns])
    resumed, reference = _checkpoint(resumed_dir), _checkpoint(reference_dir)
    assert resumed["epoch"] == reference["epoch"]
    assert resumed["scheduler"] == reference["scheduler"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    for key, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    assert resumed["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for index, state in reference["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)


def test_a_run_killed_mid_epoch_resumes_with_identical_state(tiny_phantom_root, tmp_path, monkeypatch, uninterrupted):
    epochs = 3
    reference_dir = uninterrupted

    # Kill the second run in the middle of epoch 2: augmentation runs once per training batch.
    calls = {"n": 0}
    real_affine = network_input.random_affine

    def dying_affine(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1 has 3 training batches: this is batch 2 of epoch 2
            raise KeyboardInterrupt("simulated kill")
        return real_affine(*args, **kwargs)

    monkeypatch.setattr(network_input, "random_affine", dying_affine)
    config = _config(tiny_phantom_root, tmp_path, name="killed", epochs=epochs)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(network_input, "random_affine", real_affine)
    killed_dir = config.run_dir
    assert _checkpoint(killed_dir)["epoch"] == 1
    with pytest.raises(FileExistsError, match="resume"):
        train(config)  # a fresh start would overwrite the run: refused

    train(config, resume=True)
    assert run_folder.read_history(killed_dir)["epoch"].tolist() == list(range(1, epochs + 1))
    _assert_same_training_state(killed_dir, reference_dir)


def test_a_run_sigkilled_from_outside_at_a_random_point_resumes_with_identical_state(tiny_phantom_root, tmp_path,
                                                                                    uninterrupted):
    """A real kill: no exception, no finally block, no atexit. It lands anywhere after the first epoch's
    checkpoint: in the middle of an epoch, of validation or of writing a checkpoint."""
    import random
    import signal
    import time

    config = _config(tiny_phantom_root, tmp_path, name="sigkilled", epochs=3)
    command = [sys.executable, "-m", "cxrutils", "train", "--config", "tiny", "--set", f"data_root={tiny_phantom_root}",
               "--set", f"runs_dir={config.runs_dir}", "--set", f"cache_dir={config.cache_dir}",
               "--set", f"name={config.name}", "--set", "epochs=3"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the reference's arithmetic exactly
    log = tmp_path / "train.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    history_file = config.run_dir / run_folder.HISTORY_JSON
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not history_file.is_file():
        time.sleep(0.02)
    assert process.poll() is None, log.read_text()[-3000:]
    # Anywhere within the next epoch's length: epochs 2 and 3 are still to come, so the run is never finished.
    delay = random.uniform(0.0, float(run_folder.read_history(config.run_dir)["epoch_seconds"].iloc[0]))
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"finished before the kill {delay:.2f} s after epoch 1"
    assert _checkpoint(config.run_dir)["epoch"] in (1, 2), f"killed {delay:.2f} s after epoch 1"

    train(config, resume=True)
    _assert_same_training_state(config.run_dir, uninterrupted)


def test_the_best_checkpoint_and_its_validation_outputs_are_those_of_the_epoch_with_the_best_mean_auroc(
        tiny_phantom_root, tmp_path, monkeypatch):
    """Epoch 1 of 2 is made the best (the mean validation AUROC is scripted): the best checkpoint, the validation
    predictions and the thresholds chosen on them must come from epoch 1, not from the last epoch."""
    import cxrutils.engine.train as train_module
    from cxrutils.data.cache import ImageCache
    from cxrutils.engine.network_input import prepare_batch

    scripted = iter([0.83, 0.61])
    monkeypatch.setattr(train_module, "per_class_auroc", lambda labels, scores: np.full(len(FINDINGS),
                                                                                        next(scripted)))
    result = train(_config(tiny_phantom_root, tmp_path, epochs=2))
    run_dir = result.run_dir
    history = run_folder.read_history(run_dir)
    assert history["val_auroc_mean"].tolist() == pytest.approx([0.83, 0.61])
    assert result.best_epoch == 1 == int(history["epoch"][history["val_auroc_mean"].idxmax()])
    best = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    assert best["epoch"] == 1 and best["best_val_auroc_mean"] == pytest.approx(0.83)
    assert _checkpoint(run_dir)["epoch"] == 2 and _checkpoint(run_dir)["best_epoch"] == 1
    # The last checkpoint of a better epoch is the best one's file (one write); a later epoch's write parts them.
    assert not os.path.samefile(run_dir / run_folder.BEST_CHECKPOINT, run_dir / run_folder.LAST_CHECKPOINT)

    predictions = run_folder.read_predictions(run_dir, "val")
    labels = predictions[list(FINDINGS)].to_numpy()
    written = predictions[[f"prob_{f}" for f in FINDINGS]].to_numpy()
    cache = ImageCache.open(run_folder.read_config(run_dir)["cache_dir"])
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(predictions["image"].tolist())]))[:, None]
    inputs = prepare_batch(pixels, torch.device("cpu"), 32, channels_last=False)

    def scored_by(checkpoint_name: str) -> np.ndarray:
        model, _, _ = run_folder.load_run_model(run_dir, checkpoint_name)
        with torch.no_grad():
            return torch.sigmoid(model(inputs)).numpy()

    np.testing.assert_allclose(written, scored_by(run_folder.BEST_CHECKPOINT), rtol=1e-5, atol=1e-6)
    assert not np.allclose(written, scored_by(run_folder.LAST_CHECKPOINT), rtol=1e-3, atol=1e-4)

    # Thresholds chosen on exactly those predictions: each maximises its criterion over the validation scores.
    thresholds = run_folder.read_thresholds(run_dir)
    for k, finding in enumerate(FINDINGS):
        y, s = labels[:, k], written[:, k]
        if y.min() == y.max():
            assert thresholds["youden"][finding] is None and thresholds["max_f1"][finding] is None
            continue
        def youden(t):
            return (s[y == 1] >= t).mean() - (s[y == 0] >= t).mean()

        def f1(t):
            flagged = s >= t
            return 2 * (flagged & (y == 1)).sum() / (flagged.sum() + (y == 1).sum())

        def as_written(t):  # the CSV holds 6 significant digits; the thresholds were chosen on full precision
            return float(f"{t:.6g}")

        candidates = np.unique(s)
        assert youden(as_written(thresholds["youden"][finding])) == pytest.approx(max(map(youden, candidates)))
        assert f1(as_written(thresholds["max_f1"][finding])) == pytest.approx(max(map(f1, candidates)))


def test_an_epoch_that_improves_writes_its_checkpoint_once_under_both_names(tiny_phantom_root, tmp_path, monkeypatch):
    """Rank 0 writes while every other rank waits: the best and the last checkpoint of an improving epoch are one
    file (a hard link), and the run resumes from it as from any last checkpoint."""
    import cxrutils.engine.train as train_module

    scripted = iter([0.61, 0.83, 0.90])
    monkeypatch.setattr(train_module, "per_class_auroc", lambda labels, scores: np.full(len(FINDINGS),
                                                                                        next(scripted)))
    saves = []
    real_save = run_folder.save_checkpoint
    monkeypatch.setattr(run_folder, "save_checkpoint", lambda path, state: saves.append(path.name) or
                        real_save(path, state))
    config = _config(tiny_phantom_root, tmp_path, epochs=2)
    result = train(config)
    best, last = result.run_dir / run_folder.BEST_CHECKPOINT, result.run_dir / run_folder.LAST_CHECKPOINT
    assert os.path.samefile(best, last) and run_folder.load_checkpoint(last)["epoch"] == 2
    assert saves == [run_folder.BEST_CHECKPOINT] * 2  # two epochs, each improved: one serialisation each
    train(dataclasses.replace(config, epochs=3), resume=True)
    assert run_folder.load_checkpoint(last)["epoch"] == 3 and run_folder.load_checkpoint(best)["epoch"] == 3


def test_resume_refuses_changed_settings_a_missing_checkpoint_and_changed_images_and_auto_starts_or_returns(
        phantom_copy, tmp_path):
    """Notebook 02 trains with resume="auto": a fresh run starts, a finished one returns at once. resume=True with
    other settings, with no checkpoint, or with images that changed since, is refused."""
    config = _config(phantom_copy, tmp_path, epochs=1)
    with pytest.raises(FileNotFoundError, match="cannot resume.*checkpoint_last.pt"):
        train(config, resume=True)
    assert not config.run_dir.exists()

    assert train(config, resume="auto").epochs_run == 1
    last = config.run_dir / run_folder.LAST_CHECKPOINT
    written = last.stat().st_mtime_ns
    assert train(config, resume="auto").epochs_run == 1  # finished: nothing trained again
    assert last.stat().st_mtime_ns == written

    with pytest.raises(ValueError, match="lr"):
        train(_config(phantom_copy, tmp_path, epochs=2, lr=0.5), resume=True)
    changed = sorted((phantom_copy / "images").iterdir())[0]
    from conftest import write_png

    write_png(changed, size=64, value=3)  # another file of another size: the cache's fingerprint changes
    config.epochs = 2
    with pytest.raises(ValueError, match="fingerprint"):
        train(config, resume=True)
    assert last.stat().st_mtime_ns == written


def test_a_training_into_a_run_folder_another_process_writes_is_refused_before_it_writes_anything(
        tiny_phantom_root, tmp_path, monkeypatch, capfd):
    """Two trainings with one name (two notebook renders with resume="auto") would mix one model's thresholds with
    the other's checkpoint: the second is refused at once, whatever its resume, before the folder's checks (a racing
    start could pass them too). A SIGKILLed writer's lock is no obstacle, and a training holds the lock until its
    last write (probed from another process) and releases it when it ends."""
    from lock_holders import HOLDER_SCRIPT, PROJECT, held_elsewhere

    config = _config(tiny_phantom_root, tmp_path, epochs=1)

    def second_writer() -> subprocess.CompletedProcess:
        """Another process that tries to take the run folder's lock (and lets it go at once if it gets it)."""
        return subprocess.run([sys.executable, "-c", HOLDER_SCRIPT, str(config.run_dir), "until-told"], input="go\n",
                              cwd=PROJECT, capture_output=True, text=True, timeout=120)

    with held_elsewhere(config.run_dir) as holder:
        for resume in (False, "auto", True):  # True: refused as locked, not as "no checkpoint to resume"
            with pytest.raises(FolderLocked, match=rf"process {holder.pid} on .* since 20.*a test holder"):
                train(config, resume=resume)
        assert [p.name for p in config.run_dir.iterdir()] == [LOCK_NAME]
        assert not (tmp_path / "cache").exists()  # not even the image cache was built
        holder.kill()  # no cleanup: its lock file, with its name, stays in the run folder

    probes = []
    real_write_history = run_folder.write_history

    def write_history_then_probe(run_dir, history):  # the last write of each epoch
        real_write_history(run_dir, history)
        probes.append(second_writer())

    monkeypatch.setattr(run_folder, "write_history", write_history_then_probe)
    assert train(config).epochs_run == 1  # the leftover lock file is not taken for "a run already there"
    assert f"taking over the lock of {config.run_dir} from process {holder.pid}" in capfd.readouterr().err
    assert len(probes) == 1 and probes[0].returncode != 0
    assert f"{config.run_dir} is being written by process {os.getpid()}" in probes[0].stderr
    assert "training run 'run'" in probes[0].stderr
    assert not (config.run_dir / LOCK_NAME).exists()
    assert second_writer().returncode == 0  # released when training ended


def test_absent_imagenet_weights_fail_before_anything_is_written(tiny_phantom_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = _config(tiny_phantom_root, tmp_path, weights="imagenet")
    with pytest.raises(WeightsNotFoundError) as error:
        train(config)
    assert IMAGENET_DENSENET121_FILE in str(error.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(error.value)
    assert not config.run_dir.exists()
    assert not (tmp_path / "cache").exists()


def test_unknown_settings_and_profiles_are_named(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        load_train_config("tiny", {"learning_rate": 0.1})
    with pytest.raises(FileNotFoundError, match="no_such_profile"):
        load_train_config("no_such_profile")


def test_the_shipped_profiles_carry_the_recipes():
    nih = load_train_config("nih")
    assert (nih.weights, nih.strategy, nih.head, nih.input_size, nih.cache_size) == ("imagenet", "full", "gap", 224, 256)
    assert (nih.scheduler, nih.plateau_factor, nih.plateau_patience) == ("plateau", 0.1, 5)
    assert 64 <= nih.batch_size <= 128 and nih.amp and nih.augment.hflip_probability > 0
    partial = load_train_config("nih_partial")
    assert (partial.strategy, partial.head, partial.class_weighting, partial.epochs) == (
        "freeze_through_denseblock3", "lse", "pos_weight", 20)
    # nih at 448 px: only the input differs, and the cache follows it.
    large = load_train_config("nih_448")
    assert (large.input_size, large.cache_size, large.arch) == (448, 512, "densenet121")
    assert {**large.to_dict(), "name": "nih", "input_size": 224, "cache_size": 256} == nih.to_dict()


def _torchrun(root: Path, tmp: Path, name: str, env: dict, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HELPERS_DIR / "ddp_probe.py"), "--config", "tiny", "--set", f"data_root={root}",
        "--set", f"runs_dir={tmp / 'runs'}", "--set", f"cache_dir={tmp / 'cache'}", "--set", f"name={name}",
        "--set", "epochs=3", *extra,
    ]


def test_torchrun_with_two_cpu_processes_trains_resumes_after_a_kill_and_only_rank_0_writes(tiny_phantom_root,
                                                                                            tmp_path):
    """gloo on the CPU: two processes, a cache that takes longer to build than the process group would wait
    (so it must be built before the group exists), a run killed from outside in epoch 2 and resumed."""
    import signal
    import time

    write_log = tmp_path / "writes.log"
    env = {**os.environ, "CXRUTILS_WRITE_LOG": str(write_log), "OMP_NUM_THREADS": "1",
           "CXRUTILS_DDP_TIMEOUT_SECONDS": "8", "CXRUTILS_SLOW_CACHE_SECONDS": "15"}
    completed = subprocess.run(_torchrun(tiny_phantom_root, tmp_path, "ddp", env), env=env, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = [line.split(" ", 1) for line in write_log.read_text().splitlines()]
    assert sorted(rank for rank, what in lines if what == "start") == ["0", "1"]  # both processes trained
    assert any(what.startswith("building the cache") for _, what in lines)
    run_dir = tmp_path / "runs" / "ddp"
    run_writers = {rank for rank, what in lines if what.startswith(str(tmp_path / "runs"))}
    assert run_writers == {"0"}  # only rank 0 wrote to the run folder
    # TensorBoard's writer bypasses the logged atomic writes, so its files are counted: each writing process opens
    # one, events.out.tfevents.<time>.<host>.<pid>.<n>. One file, holding each epoch once: rank 1 wrote none.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cxrutils.engine.tensorboard_log import TENSORBOARD_FOLDER

    events = [path.name for path in (run_dir / TENSORBOARD_FOLDER).iterdir()]
    assert len(events) == 1 and events[0].startswith("events.out.tfevents."), events
    board = EventAccumulator(str(run_dir / TENSORBOARD_FOLDER), size_guidance={"scalars": 0})
    board.Reload()
    assert [event.step for event in board.Scalars("loss/train")] == [1, 2, 3]
    config = json.loads((run_dir / run_folder.CONFIG_NAME).read_text())
    assert config["world_size"] == 2 and _checkpoint(run_dir)["world_size"] == 2
    whole = run_folder.read_history(run_dir)
    assert whole["epoch"].tolist() == [1, 2, 3]
    # Validation was sharded over the two processes and put back together: every film once, in order.
    validation = run_folder.read_predictions(run_dir, "val")
    split = run_folder.read_split(run_dir)
    assert validation["image"].tolist() == split.loc[split["split"] == "val", "image"].tolist()
    # ... by the model the best checkpoint holds: both processes validated with rank 0's BatchNorm statistics.
    from cxrutils.engine.predict import predict_split

    rescored = predict_split(run_folder.open_run(run_dir), "val", device="cpu", num_workers=0)
    probabilities = [column for column in validation.columns if column.startswith("prob_")]
    np.testing.assert_allclose(validation[probabilities], rescored[probabilities], rtol=2e-5, atol=1e-6)

    env.pop("CXRUTILS_SLOW_CACHE_SECONDS")
    killed = tmp_path / "runs" / "killed"
    process = subprocess.Popen(_torchrun(tiny_phantom_root, tmp_path, "killed", env), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if (killed / run_folder.HISTORY_JSON).is_file() and len(run_folder.read_history(killed)) >= 1:
            os.killpg(process.pid, signal.SIGKILL)  # every process of the job, mid epoch 2
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode != 0 and _checkpoint(killed)["epoch"] < 3
    resumed = subprocess.run(_torchrun(tiny_phantom_root, tmp_path, "killed", env, "--resume"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    history = run_folder.read_history(killed)
    assert history["epoch"].tolist() == [1, 2, 3]
    columns = ["train_loss", "val_loss", "val_auroc_mean", "lr"]
    pd.testing.assert_frame_equal(history[columns], whole[columns], rtol=1e-6)


def test_a_second_torchrun_launch_into_a_run_folder_being_written_ends_on_every_rank_and_writes_nothing(
        tiny_phantom_root, tmp_path):
    """Rank 0 is refused the run folder's lock at once; torchrun then stops rank 1, which would otherwise wait for
    rank 0 at the process group for its whole timeout (30 minutes, longer than this test waits)."""
    from lock_holders import held_elsewhere

    write_log = tmp_path / "writes.log"
    env = {**os.environ, "CXRUTILS_WRITE_LOG": str(write_log), "OMP_NUM_THREADS": "1"}
    env.pop("CXRUTILS_DDP_TIMEOUT_SECONDS", None)
    run_dir = tmp_path / "runs" / "taken"
    with held_elsewhere(run_dir) as holder:
        launch = subprocess.run(_torchrun(tiny_phantom_root, tmp_path, "taken", env), env=env, capture_output=True,
                                text=True, timeout=300)
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]
    output = launch.stdout + launch.stderr
    assert launch.returncode != 0, output[-3000:]
    assert f"{run_dir} is being written by process {holder.pid}" in output, output[-3000:]
    writes = write_log.read_text().splitlines() if write_log.exists() else []
    assert not [line for line in writes if str(run_dir) in line], writes


def test_two_processes_at_batch_b_take_the_step_one_process_takes_at_batch_2b(tiny_run, tiny_phantom_root, tmp_path):
    """gloo on the CPU: the DistributedSampler gives the ranks disjoint shards that cover the epoch, DDP averages
    their gradients, and the mean loss over ranks is the loss of both batches together.

    BatchNorm is held in eval mode for the comparison: in training mode each process normalises by its own
    batch's statistics (checked last), so no DenseNet step on B + B films equals one on 2B (SyncBatchNorm would).
    """
    from cxrutils.engine.data_adapters import open_training_cache, training_dataset
    from cxrutils.engine.network_input import prepare_batch
    from cxrutils.engine.runtime import Distributed
    from cxrutils.engine.train import TrainingState, training_data, training_step

    settings = [f"data_root={tiny_phantom_root}", f"cache_dir={run_folder.read_config(tiny_run)['cache_dir']}",
                f"runs_dir={tmp_path / 'runs'}"]
    import socket

    with socket.socket() as free:  # the variables torchrun sets, without its launcher process (one torch import less)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    logs, processes = [], []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CXRUTILS_DDP_TIMEOUT_SECONDS": "60", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        logs.append(open(tmp_path / f"rank{rank}.log", "w"))
        processes.append(subprocess.Popen([sys.executable, str(HELPERS_DIR / "ddp_numbers_probe.py"), str(tmp_path),
                                           *settings], env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    for process, log in zip(processes, logs):
        process.wait(timeout=300)
        log.close()
    assert [p.returncode for p in processes] == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    films = ranks[0]["train_films"]
    for epoch in (1, 2):
        first, second = set(ranks[0]["shards"][epoch]), set(ranks[1]["shards"][epoch])
        assert not first & second, f"epoch {epoch}: films on both ranks"
        assert len(first) == len(second) == films // 2 and first | second <= set(range(films))
    assert ranks[0]["shards"][1] != ranks[0]["shards"][2]  # reshuffled each epoch

    # One process, the same model and optimizer, both ranks' first batches as one batch of 2B.
    config = load_train_config("tiny", settings)
    dataset = training_dataset(config)
    data = training_data(config, dataset, open_training_cache(config, dataset), Distributed())
    both = ranks[0]["first_batch"] + ranks[1]["first_batch"]
    pixels, targets = data.train_loader.dataset.__getitems__(both)
    torch.manual_seed(0)
    model = build_model("none")
    model.train(False)
    state = TrainingState.create(config, model, torch.device("cpu"))
    images = prepare_batch(pixels, torch.device("cpu"), config.input_size, channels_last=False)
    loss = float(training_step(model, images, targets, torch.nn.BCEWithLogitsLoss(), state.optimizer, state.scaler,
                               None))
    frozen = [r["frozen_batchnorm"] for r in ranks]
    assert frozen[0]["loss"] != frozen[1]["loss"]  # the ranks really saw different films
    assert frozen[0]["mean_loss"] == frozen[1]["mean_loss"] == pytest.approx(loss, rel=1e-6)
    for name, parameter in model.named_parameters():
        assert torch.equal(frozen[0]["gradients"][name], frozen[1]["gradients"][name]), name
        scale = parameter.grad.abs().max().item()  # float32 sums in another order: errors relative to the tensor
        torch.testing.assert_close(frozen[0]["gradients"][name], parameter.grad, rtol=0, atol=1e-5 * scale, msg=name)
    for name, value in model.state_dict().items():
        assert torch.equal(frozen[0]["weights"][name], frozen[1]["weights"][name]), name
        # AdamW's first step is lr * g / (|g| + eps), about lr * sign(g): where |g| is near eps (1e-8), a last-bit
        # difference in g moves the step by a few percent of lr; a wrong gradient moves it by up to 2 lr.
        torch.testing.assert_close(frozen[0]["weights"][name], value, rtol=0, atol=0.1 * config.lr, msg=name)

    # BatchNorm in training mode: each rank's statistics are its own batch's (momentum 0.1 from a zero mean).
    torch.manual_seed(0)
    stem = build_model("none").features.conv0
    with torch.no_grad():
        own = [stem(batch).mean(dim=(0, 2, 3)) for batch in images.split(config.batch_size)]
        pooled = stem(images).mean(dim=(0, 2, 3))
    for rank in (0, 1):
        running_mean = ranks[rank]["training_batchnorm_running_mean"]
        torch.testing.assert_close(running_mean, 0.1 * own[rank], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(running_mean, 0.1 * pooled, rtol=1e-3, atol=1e-5)


def test_training_learns_the_phantoms(tmp_path_factory, monkeypatch):
    """A short CPU run tells phantoms with a finding from those without, far above chance.

    The phantom rows are relabelled so each film has Cardiomegaly, Emphysema, Effusion or
    nothing, with a quarter of films each: enough positives to measure learning in seconds.
    """
    from cxrutils.demo import roots as demo_data

    learnable = ("Cardiomegaly", "Emphysema", "Effusion")
    real_sample_rows = demo_data.sample_rows

    def relabelled_rows(metadata, spec):
        rows = real_sample_rows(metadata, spec).copy()
        rows[list(FINDINGS)] = 0
        drawn = np.random.default_rng(spec.seed).integers(0, len(learnable) + 1, size=len(rows))
        for k, finding in enumerate(learnable):
            rows.loc[drawn == k, finding] = 1
        return rows

    monkeypatch.setattr(demo_data, "sample_rows", relabelled_rows)
    folder = tmp_path_factory.mktemp("learnable")
    spec = demo_data.DemoSpec(n_patients=120, image_size=64, seed=1, difficulty=0.1, min_images_per_finding=0,
                              max_images_per_patient=2)
    root = demo_data.build_demo_dataset(folder / "demo", spec, workers=1)
    config = load_train_config("demo", {
        "data_root": str(root), "runs_dir": str(folder / "runs"), "cache_dir": str(folder / "cache"),
        "name": "learn", "input_size": 48, "epochs": 8, "batch_size": 16, "val_fraction": 0.3,
        "early_stopping_patience": 8,
    })
    result = train(config)
    history = run_folder.read_history(result.run_dir)
    assert history["train_loss"].iloc[-1] < 0.8 * history["train_loss"].iloc[0]
    best = history.loc[history["epoch"] == result.best_epoch].iloc[0]
    learned = {finding: best[f"val_auroc_{finding}"] for finding in learnable}
    print(learned)
    assert np.mean(list(learned.values())) > 0.75, learned


def test_unreadable_images_stop_training_unless_skipped_and_then_are_listed(phantom_copy, tmp_path):
    from cxrutils.data.film_files import ImageReadError

    damaged = sorted((phantom_copy / "images").iterdir())[3]
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=damaged.name):
        train(_config(phantom_copy, tmp_path, name="strict"))
    result = train(_config(phantom_copy, tmp_path, name="lenient", skip_bad_images=True, epochs=1))
    bad_files = run_folder.read_bad_files(result.run_dir)
    assert bad_files["image"].tolist() == [damaged.name]
    assert "truncated" in bad_files["reason"].iloc[0] or "corrupt" in bad_files["reason"].iloc[0]


def test_the_augmented_sample_looks_up_the_usable_films_once_not_once_per_film(tiny_phantom_root, tmp_path,
                                                                                  monkeypatch):
    """At 112,120 films, rebuilding the set of usable films for each training film kept notebook 02 from
    reaching training for over ten minutes: the lookups must not grow with the number of films."""
    from cxrutils.data.cache import ImageCache
    from cxrutils.engine.data_adapters import training_dataset
    from cxrutils.engine.train import augmented_sample

    config = _config(tiny_phantom_root, tmp_path)
    dataset = training_dataset(config)
    lookups = {"n": 0}
    real_usable = ImageCache.usable

    def counted(self):
        lookups["n"] += 1
        return real_usable.fget(self)

    monkeypatch.setattr(ImageCache, "usable", property(counted))
    images, names = augmented_sample(config, count=4, dataset=dataset)
    assert images.shape[0] == 4 and len(names) == 4
    assert set(names) <= set(dataset.images_in("train"))
    assert lookups["n"] <= 2, f"{lookups['n']} lookups for {len(dataset.images_in('train'))} training films"


def test_reopening_a_finished_run_keeps_the_record_of_the_machine_that_trained_it(tiny_phantom_root, tmp_path):
    """The reports call train(resume="auto") on a run trained elsewhere: its config.json must not become this machine's."""
    config = _config(tiny_phantom_root, tmp_path, name="elsewhere", epochs=1)
    train(config)
    record_path = config.run_dir / run_folder.CONFIG_NAME
    record = json.loads(record_path.read_text())
    record.update(device="cuda:0", world_size=8)  # as written by an 8-GPU training
    record_path.write_text(json.dumps(record))
    before = record_path.read_bytes()
    result = train(config, resume="auto")
    assert result.epochs_run == 1 and record_path.read_bytes() == before


# --------------------------------------------------------------------------- gradient accumulation and warmup


class _ConvNetWithoutBatchNorm(torch.nn.Module):
    """A small network whose gradient does not depend on which films share a batch (no BatchNorm), with DDP's
    ``no_sync`` as a stand-in that records which batches ran inside it. In float64, so that summing a gradient over
    one batch or over two leaves differences far below any a wrong step would make."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                          torch.nn.Flatten(), torch.nn.Linear(4, len(FINDINGS))).double()
        self.syncing = True
        self.synced_batches: list[bool] = []

    def forward(self, images):
        self.synced_batches.append(self.syncing)
        return self.layers(images.double())

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def _film_batches(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the same 32 px films (uint8, as the cache serves them) and labels, cut to ``sizes``."""
    generator = torch.Generator().manual_seed(1)
    films = sum(sizes)
    pixels = torch.randint(0, 256, (films, 1, 32, 32), dtype=torch.uint8, generator=generator)
    labels = (torch.rand(films, len(FINDINGS), generator=generator) < 0.3).float()
    return list(zip(pixels.split(sizes), labels.split(sizes)))


def _one_epoch(batches, config, optimizer_lr: float = 0.5, epoch: int = 1, scheduler_steps: tuple = ()) -> dict:
    """``train_one_epoch`` on ``batches`` with SGD (its step is proportional to the gradient) and an fp16-style
    scaler; what each optimizer step saw: its lr and gradients, and the weights, lr and bar after the epoch."""
    from cxrutils.engine import train as train_module

    model = _ConvNetWithoutBatchNorm()
    optimizer = torch.optim.SGD(model.parameters(), lr=optimizer_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=0)
    for val_loss in scheduler_steps:
        scheduler.step(val_loss)
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # power-of-two scale: unscaling is exact
    steps, updates, bars = [], [], []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append({
        "lr": opt.param_groups[0]["lr"], "gradients": [p.grad.clone() for p in model.parameters()]}))
    real_update = scaler.update
    scaler.update = lambda *args: updates.append(1) or real_update(*args)
    real_bar = train_module.progress_bar
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "progress_bar", lambda **kwargs: bars.append(real_bar(**kwargs)) or bars[-1])
        stats = train_module.train_one_epoch(model, batches, torch.nn.BCEWithLogitsLoss(), optimizer, scaler, config,
                                             torch.device("cpu"), torch.Generator(), epoch, show_progress=True)
    return {"steps": steps, "scaler_updates": len(updates), "weights": [p.detach() for p in model.parameters()],
            "train_loss": stats["train_loss"], "synced_batches": model.synced_batches, "bar": (bars[0].n, bars[0].total),
            "lr_after": optimizer.param_groups[0]["lr"], "scheduler": scheduler.state_dict()}


def _epoch_config(**overrides):
    identity = {"augment.rotation_degrees": 0, "augment.scale_min": 1, "augment.scale_max": 1,
                "augment.translate_fraction": 0, "augment.hflip_probability": 0}
    return load_train_config("tiny", {"input_size": 32, "limit_train_batches": None, "data_root": "unused",
                                      **identity, **overrides})


def test_k_batches_accumulated_take_the_step_one_batch_of_k_times_as_many_films_takes():
    """Five batches of 4 films, 2 per step: the steps (lr, gradient, weights after) equal those of batches of 8, 8
    and 4 films, one per step, up to BatchNorm (this network has none: with it, each batch normalises by its own
    statistics). The epoch's last, short step still steps; the fp16 scaler steps once per step; only each step's last
    batch synchronises the processes' gradients (DDP's no_sync on the others); the bar counts batches."""
    accumulated = _one_epoch(_film_batches([4] * 5), _epoch_config(batch_size=4, grad_accumulation_steps=2))
    films = _film_batches([4] * 5)
    together = [(torch.cat([p for p, _ in films[i:i + 2]]), torch.cat([t for _, t in films[i:i + 2]]))
                for i in (0, 2, 4)]
    assert [len(t) for _, t in together] == [8, 8, 4]
    one_batch_per_step = _one_epoch(together, _epoch_config(batch_size=8))

    assert len(accumulated["steps"]) == len(one_batch_per_step["steps"]) == 3
    assert accumulated["scaler_updates"] == one_batch_per_step["scaler_updates"] == 3
    for step, (mine, reference) in enumerate(zip(accumulated["steps"], one_batch_per_step["steps"])):
        assert mine["lr"] == reference["lr"] == 0.5
        for gradient, expected in zip(mine["gradients"], reference["gradients"]):
            scale = expected.abs().max().item()  # the loss is float32: errors relative to the tensor
            torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-6 * scale, msg=f"step {step + 1}")
    for weight, expected in zip(accumulated["weights"], one_batch_per_step["weights"]):
        torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-9)
    assert accumulated["train_loss"] == pytest.approx(one_batch_per_step["train_loss"], rel=1e-6)  # a mean over films
    assert accumulated["synced_batches"] == [False, True, False, True, True]
    assert one_batch_per_step["synced_batches"] == [True, True, True]
    assert accumulated["bar"] == (5, 5) and one_batch_per_step["bar"] == (3, 3)



def test_warmup_scales_the_lr_the_epoch_scheduler_set_step_by_step_and_gives_it_back():
    """ReduceLROnPlateau (per epoch, on the validation loss) has cut the lr to a tenth; epoch 2 of a 4-epoch warmup
    with three optimizer steps (5 batches, 2 per step) uses a tenth of lr x (1 + j/3)/4 at its j-th step. After the
    epoch the optimizer holds the scheduler's lr again, exactly: the scheduler and the checkpoint never see the ramp."""
    lr = 0.5
    run = _one_epoch(_film_batches([4] * 5), _epoch_config(batch_size=4, grad_accumulation_steps=2, warmup_epochs=4),
                     optimizer_lr=lr, epoch=2, scheduler_steps=(1.0, 2.0))
    reduced = lr * 0.1
    assert run["scheduler"]["_last_lr"] == [pytest.approx(reduced)]  # the plateau really did cut it
    expected = [reduced * (1 + j / 3) / 4 for j in (1, 2, 3)]
    assert [step["lr"] for step in run["steps"]] == pytest.approx(expected, rel=1e-12)
    assert run["lr_after"] == run["scheduler"]["_last_lr"][0]


def test_warmup_raises_the_lr_linearly_per_step_and_a_resumed_run_continues_the_ramp(tiny_phantom_root, tmp_path,
                                                                                      monkeypatch):
    """Warmup over 2.5 epochs of 3 steps: step n (counted from the run's start) uses lr x min(1, n / 7.5). A run
    killed in epoch 2 and resumed goes on from epoch 2's first step (n = 4), not from the ramp's start; the history's
    lr is each epoch's last step's; the checkpoint keeps the scheduler's lr, unwarmed."""
    # TensorBoard off: its augmented picture would be one more random_affine call than the batches counted below.
    config = _config(tiny_phantom_root, tmp_path, name="warm", epochs=3, warmup_epochs=2.5, tensorboard=False)
    steps_per_epoch = config.limit_train_batches
    assert steps_per_epoch == 3 and config.scheduler == "plateau"

    def expected(n: int) -> float:
        return config.lr * min(1.0, n / (config.warmup_epochs * steps_per_epoch))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    used_lrs: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: used_lrs.append(optimizer.param_groups[0]["lr"]))
    try:
        calls = {"n": 0}
        real_affine = network_input.random_affine

        def dying_affine(*args, **kwargs):  # augmentation runs once per batch: call 5 is batch 2 of epoch 2
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt("simulated kill")
            return real_affine(*args, **kwargs)

        monkeypatch.setattr(network_input, "random_affine", dying_affine)
        with pytest.raises(KeyboardInterrupt):
            train(config)
        monkeypatch.setattr(network_input, "random_affine", real_affine)
        assert used_lrs == pytest.approx([expected(n) for n in (1, 2, 3, 4)], rel=1e-12)
        assert _checkpoint(config.run_dir)["epoch"] == 1

        used_lrs.clear()
        train(config, resume=True)
    finally:
        hook.remove()
    assert used_lrs == pytest.approx([expected(n) for n in range(4, 10)], rel=1e-12)
    assert run_folder.read_history(config.run_dir)["lr"].tolist() == pytest.approx(
        [expected(3), expected(6), expected(9)], rel=1e-12)
    assert expected(9) == config.lr
    checkpoint = _checkpoint(config.run_dir)
    assert [group["lr"] for group in checkpoint["optimizer"]["param_groups"]] == [config.lr]
    assert checkpoint["scheduler"]["_last_lr"] == [config.lr]


def test_a_run_saved_before_the_cluster_settings_existed_resumes_with_their_defaults_only(tmp_path):
    """Its checkpoint's settings have no grad_accumulation_steps, warmup_epochs or sync_batchnorm: they count as the
    defaults (how it trained), so it resumes with them, and with any other value is refused, naming the setting."""
    from cxrutils.engine.train import check_same_settings

    config = load_train_config("tiny", {"data_root": "/data", "runs_dir": str(tmp_path)})
    new = ("grad_accumulation_steps", "warmup_epochs", "sync_batchnorm")
    saved = {key: value for key, value in config.to_dict().items() if key not in new}
    check_same_settings(saved, config)  # raises nothing
    for key, value in zip(new, (2, 1.0, True)):
        with pytest.raises(run_folder.SettingsChangedError, match=key):
            check_same_settings(saved, load_train_config("tiny", {"data_root": "/data", "runs_dir": str(tmp_path),
                                                                  key: value}))

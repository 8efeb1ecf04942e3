"""The training engine on tiny phantom data: run folder, resume, determinism, DDP, missing weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cxrutils.engine.runtime as runtime_module
from cxrutils.engine import run_folder
from cxrutils.engine.model import IMAGENET_DENSENET121_FILE, WeightsNotFoundError
from cxrutils.engine.train import train
from cxrutils.labels import FINDINGS
from cxrutils.settings import load_train_config

TESTS_DIR = Path(__file__).parent


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


def test_a_run_killed_mid_epoch_resumes_with_identical_state(tiny_phantom_root, tmp_path, monkeypatch):
    epochs = 3
    reference_dir = train(_config(tiny_phantom_root, tmp_path, name="whole", epochs=epochs)).run_dir

    # Kill the second run in the middle of epoch 2: augmentation runs once per training batch.
    calls = {"n": 0}
    real_affine = runtime_module.random_affine

    def dying_affine(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1 has 3 training batches: this is batch 2 of epoch 2
            raise KeyboardInterrupt("simulated kill")
        return real_affine(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "random_affine", dying_affine)
    config = _config(tiny_phantom_root, tmp_path, name="killed", epochs=epochs)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(runtime_module, "random_affine", real_affine)
    killed_dir = config.run_dir
    assert _checkpoint(killed_dir)["epoch"] == 1
    with pytest.raises(FileExistsError, match="resume"):
        train(config)  # a fresh start would overwrite the run: refused

    train(config, resume=True)
    history = run_folder.read_history(killed_dir)
    assert history["epoch"].tolist() == list(range(1, epochs + 1))  # no gap, no duplicate
    reference_history = run_folder.read_history(reference_dir)
    columns = ["train_loss", "val_loss", "val_auroc_mean", "lr"]
    pd.testing.assert_frame_equal(history[columns], reference_history[columns])

    resumed, reference = _checkpoint(killed_dir), _checkpoint(reference_dir)
    assert resumed["epoch"] == reference["epoch"] == epochs
    assert resumed["scheduler"] == reference["scheduler"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    for key, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    assert resumed["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for index, state in reference["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)


def test_resume_refuses_changed_settings(tiny_phantom_root, tmp_path):
    train(_config(tiny_phantom_root, tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr"):
        train(_config(tiny_phantom_root, tmp_path, epochs=2, lr=0.5), resume=True)


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


def _torchrun(root: Path, tmp: Path, name: str, env: dict, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(TESTS_DIR / "ddp_probe.py"), "--config", "tiny", "--set", f"data_root={root}",
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
    from cxrutils.data.images import ImageReadError

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
    from cxrutils.data.dataset import load_training_dataset
    from cxrutils.engine.train import augmented_sample

    config = _config(tiny_phantom_root, tmp_path)
    dataset = load_training_dataset(config)
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

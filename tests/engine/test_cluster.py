"""Training on a SLURM cluster: the launch srun must not make, SyncBatchNorm, and configs/slurm/train.sbatch end to end.

The sbatch script runs here with shell stand-ins for ``srun`` and ``scontrol`` on PATH (one
node: this machine), launching the real torchrun with two CPU processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrutils.engine import run_folder
from cxrutils.engine.model import build_model
from cxrutils.engine.runtime import (
    TORCHRUN_VARIABLES,
    Distributed,
    UncoordinatedLaunchError,
    check_coordinated_launch,
)
from cxrutils.engine.train import train, training_network
from cxrutils.settings import SettingsError, load_train_config

PROJECT = Path(__file__).parents[2]
SBATCH_SCRIPT = PROJECT / "configs" / "slurm" / "train.sbatch"
JOB_ID = "4242"


def _config(root: Path, tmp: Path, **overrides):
    return load_train_config("tiny", {"data_root": str(root), "runs_dir": str(tmp / "runs"),
                                      "cache_dir": str(tmp / "cache"), "name": "run", **overrides})


# --------------------------------------------------------------------------- several processes without torchrun

# What each process sees (the variables srun and sbatch set: srun(1) and sbatch(1), OUTPUT ENVIRONMENT VARIABLES).
SRUN_TASK_3_OF_8 = {"SLURM_JOB_ID": JOB_ID, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
                    "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
# The batch script of `sbatch --ntasks=8`: the allocation's task count, task 0 of the batch step, no step task count.
BATCH_SCRIPT_OF_8_TASKS = {"SLURM_JOB_ID": JOB_ID, "SLURM_NTASKS": "8", "SLURM_NPROCS": "8", "SLURM_PROCID": "0",
                           "SLURM_STEP_ID": "4294967291", "ENVIRONMENT": "BATCH"}
TORCHRUN_WORKER = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}


def _environment(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    """Exactly ``variables`` of SLURM's and torchrun's in this process's environment."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in TORCHRUN_VARIABLES or name == "ENVIRONMENT":
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("variables", [
    {},  # no cluster
    BATCH_SCRIPT_OF_8_TASKS,  # `python -m cxrutils train` in the batch script: one process, however many tasks
    {**SRUN_TASK_3_OF_8, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},  # srun -n 1
    {**SRUN_TASK_3_OF_8, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", **TORCHRUN_WORKER},  # train.sbatch's
], ids=["no-slurm", "batch-script", "srun-one-task", "torchrun-under-srun"])
def test_one_process_or_torchrun_processes_may_train(variables, monkeypatch):
    _environment(monkeypatch, variables)
    check_coordinated_launch()  # raises nothing


def test_srun_tasks_without_torchrun_are_refused_naming_the_fix(monkeypatch):
    _environment(monkeypatch, SRUN_TASK_3_OF_8)
    with pytest.raises(UncoordinatedLaunchError) as refused:
        check_coordinated_launch()
    message = str(refused.value)
    assert "task 3 of 8" in message and "SLURM_STEP_NUM_TASKS=8" in message
    assert "one torchrun per node" in message and "configs/slurm/train.sbatch" in message
    assert "--nnodes=$SLURM_JOB_NUM_NODES" in message and "--rdzv-id=$SLURM_JOB_ID" in message
    # Torchrun's variables only in part (set by hand, not by torchrun): still refused.
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(UncoordinatedLaunchError):
        check_coordinated_launch()
    # Task 0 is refused as well: it would train alone too, while the others fail.
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(UncoordinatedLaunchError, match="task 0 of 8"):
        check_coordinated_launch()


def test_a_training_in_an_srun_task_without_torchrun_is_refused_before_it_reads_or_writes_anything(
        tiny_phantom_root, tmp_path, monkeypatch):
    _environment(monkeypatch, SRUN_TASK_3_OF_8)
    config = _config(tiny_phantom_root, tmp_path)
    with pytest.raises(UncoordinatedLaunchError):
        train(config)
    assert not config.run_dir.exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- SyncBatchNorm


def _batchnorm_layers(model: nn.Module) -> dict[str, type]:
    return {name: type(module) for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def test_sync_batchnorm_converts_every_batchnorm_under_ddp_in_place_and_changes_nothing_for_one_process(monkeypatch):
    """The conversion only. This torch runs SyncBatchNorm on GPUs alone: DDP refuses to wrap it on the CPU and its
    training forward raises for CPU tensors (both checked last: why training refuses sync_batchnorm on the CPU), so
    DDP is a stand-in here and no step is taken."""
    torch.manual_seed(0)
    model = build_model("none")
    layers = _batchnorm_layers(model)
    assert len(layers) > 100 and set(layers.values()) == {nn.BatchNorm2d}
    assert training_network(model, Distributed(), torch.device("cpu"), sync_batchnorm=True) is model
    assert set(_batchnorm_layers(model).values()) == {nn.BatchNorm2d}  # one process: untouched

    parameters = [id(p) for p in model.parameters()]
    buffers = [id(b) for b in model.buffers()]
    keys = list(model.state_dict())

    class StandInDDP(nn.Module):
        def __init__(self, module: nn.Module, device_ids: list[int] | None = None) -> None:
            super().__init__()
            self.module = module

    with monkeypatch.context() as patch:
        patch.setattr(nn.parallel, "DistributedDataParallel", StandInDDP)
        network = training_network(model, Distributed(rank=0, world_size=2), torch.device("cpu"),
                                   sync_batchnorm=True)
    assert isinstance(network, StandInDDP) and network.module is model
    converted = _batchnorm_layers(model)
    assert converted.keys() == layers.keys() and set(converted.values()) == {nn.SyncBatchNorm}
    # The optimizer's parameters, the running statistics and the checkpoint's keys are still the model's own.
    assert [id(p) for p in model.parameters()] == parameters and [id(b) for b in model.buffers()] == buffers
    assert list(model.state_dict()) == keys

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm layers only work with GPU modules"):
            nn.parallel.DistributedDataParallel(model)
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            model.train()(torch.zeros(2, 1, 32, 32))
    finally:
        torch.distributed.destroy_process_group()


def test_sync_batchnorm_with_several_processes_on_the_cpu_is_refused_before_any_work(tiny_phantom_root, tmp_path,
                                                                                   monkeypatch):
    _environment(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    config = _config(tiny_phantom_root, tmp_path, sync_batchnorm=True, device="cpu")
    with pytest.raises(SettingsError, match="sync_batchnorm=true needs GPUs.*2 processes train on cpu.*"
                                            "set sync_batchnorm=false"):
        train(config)
    assert not (tmp_path / "cache").exists()
    assert not config.run_dir.exists() or not list(config.run_dir.iterdir())  # at most the lock's empty folder


# --------------------------------------------------------------------------- configs/slurm/train.sbatch


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _slurm_stand_ins(bin_dir: Path, hosts: list[str], run_srun: bool) -> Path:
    """``srun`` and ``scontrol`` for a job on ``hosts``, each call appended to the returned log.

    srun runs its command once, as the one task of a one-node step (as SLURM would for the
    first node), with the variables srun gives a task; scontrol answers ``show hostnames``
    and takes ``requeue``.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "calls.log"
    run = ('export SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS="$SLURM_JOB_NUM_NODES" SLURM_NTASKS="$SLURM_JOB_NUM_NODES" '
           'SLURM_PROCID=0 SLURM_LOCALID=0\nexec "$@"\n') if run_srun else "exit 0\n"
    _executable(bin_dir / "srun", f'#!/bin/bash\necho "srun $*" >> "{log}"\n'
                                  'while [[ $# -gt 0 && $1 == -* ]]; do shift; done\n' + run)
    _executable(bin_dir / "scontrol", f'#!/bin/bash\necho "scontrol $*" >> "{log}"\n'
                                      f'if [[ "$1 $2" == "show hostnames" ]]; then printf "%s\\n" {" ".join(hosts)}; fi\n')
    return log


def _job_environment(bin_dir: Path, **variables: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("SLURM_", "CXRUTILS_")) and name not in TORCHRUN_VARIABLES}
    environment.update({"PATH": f"{bin_dir}{os.pathsep}{environment['PATH']}", "SLURM_JOB_ID": JOB_ID,
                        "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
                        "CXRUTILS_PYTHON": sys.executable, **variables})
    return environment


def test_the_sbatch_script_parses_and_asks_slurm_for_a_requeue_before_the_time_limit():
    assert subprocess.run(["bash", "-n", str(SBATCH_SCRIPT)], capture_output=True).returncode == 0
    directives = [line.split(None, 1)[1] for line in SBATCH_SCRIPT.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--requeue" in directives and "--ntasks-per-node=1" in directives
    assert any(d.startswith("--signal=B:USR1@") for d in directives)  # B: the batch shell, which traps it


def test_the_sbatch_script_starts_one_torchrun_per_node_meeting_on_the_first_host(tmp_path):
    # More host names than a pipe holds (64 KiB): a script reading only the first line and closing the pipe would
    # kill scontrol with SIGPIPE every time, not only when the race goes that way.
    log = _slurm_stand_ins(tmp_path / "bin", ["gpu017", "gpu018"] + [f"node{i:05d}" for i in range(12_000)],
                           run_srun=False)
    environment = _job_environment(tmp_path / "bin", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[017-018]",
                                   SLURM_GPUS_PER_NODE="a100:4")
    done = subprocess.run(["bash", str(SBATCH_SCRIPT), "--set", "data_root=/data/nih"], env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "scontrol show hostnames gpu[017-018]"
    srun = calls[1].split()
    assert srun[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    port = str(29500 + int(JOB_ID) % 1000)
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu017:{port}",
            f"--rdzv-id={JOB_ID}"} <= set(srun)
    assert srun[srun.index("-m", srun.index("torch.distributed.run")):] == [
        "-m", "cxrutils", "train", "--config", "nih", "--resume", "auto", "--set", "data_root=/data/nih"]

    del environment["SLURM_GPUS_PER_NODE"]  # no GPUs asked for, no count given
    refused = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=environment, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "--gpus-per-node=N" in refused.stderr
    assert "CXRUTILS_NPROC_PER_NODE" in refused.stderr


# Imported by every Python the first job starts (PYTHONPATH): its rank 0 pauses after writing epoch 1's history, so
# the signal lands in the first job's epoch 2 however fast the machine trains (an epoch of the tiny profile takes
# well under a second).
PAUSE_AFTER_EPOCH_1 = """
import os

if os.environ.get("RANK") == "0":
    import time

    from cxrutils.engine import run_folder

    _write_history = run_folder.write_history

    def _write_history_then_pause(run_dir, history):
        _write_history(run_dir, history)
        if len(history) == 1:
            time.sleep(120)

    run_folder.write_history = _write_history_then_pause
"""


def test_the_sbatch_script_trains_with_torchrun_requeues_at_the_signal_and_the_requeued_job_continues(
        tiny_phantom_root, tmp_path):
    """Two CPU processes under the real torchrun, 2 batches a step and a 2-epoch warmup. USR1 after the first epoch
    (what SLURM sends before the time limit) makes the script requeue the job and stop; the requeued job (the same
    script again) continues the run: epoch 1 is the first job's, to its measured seconds, and the warmup goes on."""
    log = _slurm_stand_ins(tmp_path / "bin", ["localhost"], run_srun=True)
    (tmp_path / "pause").mkdir()
    (tmp_path / "pause" / "sitecustomize.py").write_text(PAUSE_AFTER_EPOCH_1)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    environment = _job_environment(tmp_path / "bin", CXRUTILS_NPROC_PER_NODE="2", CXRUTILS_RDZV_PORT=str(port),
                                   OMP_NUM_THREADS="1", CXRUTILS_DDP_TIMEOUT_SECONDS="120")
    config = _config(tiny_phantom_root, tmp_path, name="slurm", epochs=3, grad_accumulation_steps=2,
                     warmup_epochs=2, device="cpu")
    arguments = ["--config", "tiny", *[part for key in ("data_root", "runs_dir", "cache_dir", "name", "epochs",
                                                        "grad_accumulation_steps", "warmup_epochs", "device")
                                       for part in ("--set", f"{key}={getattr(config, key)}")]]
    history_file = config.run_dir / run_folder.HISTORY_JSON

    def job(restart: int, **variables: str) -> subprocess.Popen:
        with open(tmp_path / f"job{restart}.log", "w") as output:
            return subprocess.Popen(["bash", str(SBATCH_SCRIPT), *arguments], stdout=output, stderr=subprocess.STDOUT,
                                    env={**environment, "SLURM_RESTART_COUNT": str(restart), **variables},
                                    start_new_session=True)

    first = job(0, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "pause"), os.environ.get("PYTHONPATH")])))
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline and not history_file.is_file():
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "job0.log").read_text()[-3000:]
        os.kill(first.pid, signal.SIGUSR1)  # --signal=B:USR1: the batch shell alone
        assert first.wait(timeout=120) == 0, (tmp_path / "job0.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert f"scontrol requeue {JOB_ID}" in log.read_text().splitlines()
    assert run_folder.load_checkpoint(config.run_dir / run_folder.LAST_CHECKPOINT)["epoch"] == 1
    first_job_epochs = json.loads(history_file.read_text())
    assert len(first_job_epochs) == 1

    second = job(1)
    try:
        assert second.wait(timeout=300) == 0, (tmp_path / "job1.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    history = json.loads(history_file.read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:1] == first_job_epochs  # continued, not trained again
    assert [row["lr"] for row in history] == pytest.approx([config.lr / 2, config.lr, config.lr])
    recorded = json.loads((config.run_dir / run_folder.CONFIG_NAME).read_text())
    assert recorded["world_size"] == 2 and recorded["grad_accumulation_steps"] == 2

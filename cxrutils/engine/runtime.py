"""Where and how the network runs: processes (torchrun), the device, precision, seeds, and the input batch.

Training, prediction, Grad-CAM and inference all come through here, so a film is
prepared the same way wherever it is scored.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import random
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cxrutils.paths import PROJ_ROOT

# torch.distributed's default is 30 minutes; collectives wait this long for the slowest rank.
TIMEOUT_VARIABLE = "CXRUTILS_DDP_TIMEOUT_SECONDS"
# CUDA 13.0, which the pinned wheels are built for, needs an NVIDIA driver of this branch or newer.
MIN_DRIVER_FOR_PINNED_WHEELS = 580
# Drivers from R525 run CUDA 12.x builds (minor-version compatibility).
OLDER_WHEELS_INDEX = "https://download.pytorch.org/whl/cu126"


class GPUUnusableError(RuntimeError):
    """A GPU is there, but the installed torch cannot use it."""


class UncoordinatedLaunchError(RuntimeError):
    """Several processes were started without torchrun's variables: each would train alone, into one run folder."""


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ones torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """From the variables torchrun sets (a plain ``python`` run is one process); no process group yet."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        return cls(rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK",
                                                                                                       "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# What torchrun gives every process it starts; with them, the processes find each other.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def check_coordinated_launch(environment: Mapping[str, str] = os.environ) -> None:
    """Raise ``UncoordinatedLaunchError`` in a process that srun started as one of several tasks without torchrun.

    ``srun -n 8 cxrutils train ...`` starts eight processes that know nothing of each other:
    each would train alone on the first GPU, all into one run folder. srun gives every task of
    a step ``SLURM_STEP_NUM_TASKS`` (the step's task count) and ``SLURM_PROCID`` (its rank).
    The batch script runs outside any srun step: it has no step task count and rank 0, however
    many tasks the allocation has (its ``SLURM_NTASKS``), so one training started there passes.
    The processes torchrun starts pass too, however torchrun itself was started.
    """
    if all(name in environment for name in TORCHRUN_VARIABLES):
        return
    tasks = _whole_number(environment.get("SLURM_STEP_NUM_TASKS")) or 1
    task = _whole_number(environment.get("SLURM_PROCID")) or 0
    if tasks <= 1 and task == 0:
        return
    of_tasks = f" of {tasks}" if tasks > 1 else ""
    raise UncoordinatedLaunchError(
        f"srun started this process as task {task}{of_tasks} (SLURM_STEP_NUM_TASKS="
        f"{environment.get('SLURM_STEP_NUM_TASKS', 'unset')}, SLURM_PROCID={environment.get('SLURM_PROCID', 'unset')}) "
        f"without torchrun (not all of {', '.join(TORCHRUN_VARIABLES)} are set), so every task would train alone into "
        "the same run "
        "folder. Start one torchrun per node instead (it starts a process per GPU and connects them), as "
        "`sbatch configs/slurm/train.sbatch --set data_root=...` does: srun --ntasks-per-node=1 torchrun "
        "--nnodes=$SLURM_JOB_NUM_NODES --nproc-per-node=GPUS_PER_NODE --rdzv-backend=c10d "
        "--rdzv-endpoint=FIRST_HOST:PORT --rdzv-id=$SLURM_JOB_ID -m cxrutils train ..."
    )


def _whole_number(text: str | None) -> int | None:
    """A variable's value as an int; None when unset or unreadable, which then says nothing about the launch."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def start_process_group(ddp: Distributed, device: torch.device) -> None:
    """Join the other processes: NCCL on GPUs, gloo on the CPU. Nothing to do for one process.

    Call it after the slow single-process work (indexing, the image cache): collectives
    wait at most ``CXRUTILS_DDP_TIMEOUT_SECONDS`` (default: torch's 30 minutes) for the
    slowest rank, and a rank that is still decoding 112k films would make the others time out.
    """
    if not ddp.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    timeout = os.environ.get(TIMEOUT_VARIABLE)
    extra = {"timeout": dt.timedelta(seconds=float(timeout))} if timeout else {}
    dist.init_process_group(backend=backend, **extra)


def init_distributed() -> Distributed:
    """``Distributed.from_environment`` with its process group started (for callers with no slow setup)."""
    ddp = Distributed.from_environment()
    start_process_group(ddp, select_device("auto", ddp))
    return ddp


def nvidia_driver() -> tuple[str, str] | None:
    """(driver version, GPU name) when ``nvidia-smi`` answers, else None: a GPU box whatever torch thinks."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        answer = subprocess.run([command, "--query-gpu=driver_version,name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    first = answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else ""
    driver, _, name = first.partition(",")
    return (driver.strip(), name.strip()) if driver.strip() else None


def check_gpu_usable() -> None:
    """Raise ``GPUUnusableError`` when a GPU answers nvidia-smi but torch cannot use it, saying how to fix it.

    Without this, ``device: auto`` falls back to the CPU and the nih profile trains for
    days without a word (typically: the driver is older than the CUDA the wheels need).
    """
    if torch.cuda.is_available():
        return
    found = nvidia_driver()
    if found is None:
        return
    driver, name = found
    wheels_cuda = torch.version.cuda or "none (a CPU-only build)"
    major = driver.split(".")[0]
    old_driver = major.isdigit() and int(major) < MIN_DRIVER_FOR_PINNED_WHEELS
    advice = (
        f"The driver is older than CUDA {wheels_cuda} needs (R{MIN_DRIVER_FOR_PINNED_WHEELS} or newer). Update the "
        f"NVIDIA driver, or install a build for an older CUDA into this environment: .venv/bin/python -m pip "
        f"install --force-reinstall torch=={torch.__version__.split('+')[0]} torchvision --index-url "
        f"{OLDER_WHEELS_INDEX}" if old_driver else
        "Check that this torch is a CUDA build (`python -c 'import torch; print(torch.version.cuda)'`) and that the "
        "driver and CUDA_VISIBLE_DEVICES let this process see the GPU."
    )
    raise GPUUnusableError(
        f"nvidia-smi sees {name} (driver {driver}) but torch {torch.__version__} cannot use it (built for CUDA "
        f"{wheels_cuda}). {advice} Or pass --set device=cpu to train on the CPU on purpose."
    )


def select_device(requested: str, ddp: Distributed = Distributed()) -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU, but never the CPU when a GPU is there that torch cannot use."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda":
            check_gpu_usable()
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", ddp.local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    check_gpu_usable()
    return torch.device("cpu")


def describe_runtime(device: torch.device, amp: bool, channels_last: bool, ddp: Distributed) -> str:
    """One line for the start of every run: where it trains, on what, in which precision."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        where = str(device)
    dtype = autocast_dtype(device, amp)
    precision = f"{str(dtype).removeprefix('torch.')} autocast" if dtype is not None else "float32"
    processes = f"{ddp.world_size} processes (torchrun)" if ddp.enabled else "1 process"
    return f"training on {where}, {precision}{', channels_last' if channels_last else ''}, {processes}"


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no scaler needed), fp16 otherwise; no autocast on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as plain Python values (safe to pickle, gather and load with weights_only)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_state = random.getstate()
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [state.tolist() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def broadcast(value: Any, ddp: Distributed) -> Any:
    """Rank 0's ``value`` on every rank (as it is, when there is one process)."""
    if not ddp.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(value: Any, ddp: Distributed) -> list[Any]:
    """Every rank's ``value``, in rank order (a one-item list when there is one process)."""
    if not ddp.enabled:
        return [value]
    gathered: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(value: float, ddp: Distributed, device: torch.device) -> float:
    """The mean of every rank's ``value`` (``value`` itself for one process)."""
    if not ddp.enabled:
        return value
    total = torch.tensor([value], dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / ddp.world_size


def share_main_buffers(model: torch.nn.Module, ddp: Distributed) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before they score anything.

    DDP broadcasts rank 0's buffers at the start of each training forward, but each
    rank's last forward then updates its own from its own shard: without this, the
    ranks would validate slightly different models, none of them exactly the one the
    checkpoint (written by rank 0) holds.
    """
    if not ddp.enabled:
        return
    # One broadcast per dtype, not one per buffer: DenseNet121 has 363 buffers, and each collective costs a round trip.
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([buffer.detach().reshape(-1) for buffer in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for buffer in buffers:
            buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()


def gather_to_main(value: Any, ddp: Distributed) -> list[Any] | None:
    """Every rank's ``value`` on rank 0, in rank order; None on the other ranks."""
    if not ddp.enabled:
        return [value]
    gathered: list[Any] | None = [None] * ddp.world_size if ddp.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def environment(device: torch.device) -> dict[str, Any]:
    """The software and hardware a run trained with, for its record and model card."""
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = ("cxrutils", "torch", "torchvision", "torchxrayvision", "numpy", "pandas", "scikit-learn", "pillow")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: installed(name) for name in packages},
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpus": os.cpu_count(),
    }


def code_version() -> dict[str, Any]:
    """The git commit of the code, and whether it had uncommitted changes (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=PROJ_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "uncommitted_changes": None if status is None else bool(status)}

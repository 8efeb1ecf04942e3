"""Where and how the network runs: processes (torchrun), the device, precision, seeds, and the input batch.

Training, prediction, Grad-CAM and inference all come through here, so a film is
prepared the same way wherever it is scored.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxrutils.engine.augment import random_affine
from cxrutils.engine.model import normalize
from cxrutils.settings import AugmentConfig


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ones torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """From the variables torchrun sets; a plain ``python`` run is one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def select_device(requested: str, ddp: Distributed = Distributed()) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", ddp.local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def prepare_batch(
    pixels: torch.Tensor,
    device: torch.device,
    input_size: int,
    channels_last: bool,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, 1, S, S) from the cache -> normalized float input on ``device``."""
    images = pixels.to(device, non_blocking=True).float().div_(255.0)
    if images.shape[-1] != input_size:
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", antialias=True)
    if augment is not None:
        images = random_affine(images, augment, generator)
    images = normalize(images)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images

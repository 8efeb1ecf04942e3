"""One process of a 2-process training step, for tests/engine/test_sync_batchnorm.py.

``torch.multiprocessing.spawn(run_rank, args=(...), nprocs=2)`` starts it twice. Each process
sets the variables torchrun sets, joins the group through ``start_process_group`` (NCCL on
GPUs), wraps a small conv + BatchNorm network with ``training_network`` (with and then
without ``sync_batchnorm``) and takes one ``training_step`` on its half of the films. It
saves ``OUT_DIR/rank<r>-<sync|plain>.pt``: the network's outputs on its films, the loss, the
gradients after the step (DDP's average over the processes) and the model's state after it
(weights and BatchNorm running statistics). The test takes the same step in one process on
all the films and compares.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrutils.engine.runtime import Distributed, start_process_group
from cxrutils.engine.train import training_network, training_step
from cxrutils.labels import FINDINGS

MODEL_SEED = 0
LEARNING_RATE = 0.1


def small_network(dtype: torch.dtype, device: torch.device) -> nn.Sequential:
    """Two convolutions, each with BatchNorm, and a linear head of one logit per finding; the same weights each call."""
    torch.manual_seed(MODEL_SEED)
    network = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, len(FINDINGS)),
    )
    return network.to(device=device, dtype=dtype).train()


def one_step(network: nn.Module, model: nn.Module, films: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """``training_step`` (SGD) through ``network`` (``model``, perhaps inside DDP): what it computed and left behind."""
    outputs: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    scaler = torch.amp.GradScaler(films.device.type, enabled=False)
    try:
        loss = training_step(network, films, targets, nn.BCEWithLogitsLoss(), optimizer, scaler, None)
    finally:
        hook.remove()
    return {
        "outputs": outputs[0].cpu(), "loss": float(loss),
        "gradients": {name: parameter.grad.detach().cpu() for name, parameter in model.named_parameters()},
        "state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }


def run_rank(rank: int, world_size: int, port: int, films: torch.Tensor, targets: torch.Tensor,
             out_dir: str) -> None:
    """Process ``rank`` of ``world_size``: one step on its share of ``films`` with SyncBatchNorm, one without."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ddp = Distributed.from_environment()
    device = torch.device("cuda", ddp.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    start_process_group(ddp, device)
    share = films.shape[0] // world_size
    mine = slice(rank * share, (rank + 1) * share)
    try:
        for sync in (True, False):
            model = small_network(films.dtype, device)
            network = training_network(model, ddp, device, sync_batchnorm=sync)
            result = one_step(network, model, films[mine].to(device), targets[mine].to(device))
            result["layers"] = sorted({type(module).__name__ for module in model.modules()})
            torch.save(result, Path(out_dir) / f"rank{rank}-{'sync' if sync else 'plain'}.pt")
    finally:
        torch.distributed.destroy_process_group()

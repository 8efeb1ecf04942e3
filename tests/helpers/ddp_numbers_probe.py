"""One process of a 2-process job for tests/engine/test_train.py's DDP numbers: what it computes in one training step.

Started twice with the variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...):
``ddp_numbers_probe.py OUT_DIR KEY=VALUE ...`` (the tiny training profile with those
settings). Each process opens the run's loaders
(``training_data``: the DistributedSampler shards), takes one optimisation step through
``training_network`` and ``training_step`` on its first batch, and saves to
``OUT_DIR/rank<r>.pt``: its shard of two epochs, the films of that batch, its loss and
the mean loss over the processes, its gradients and weights after the step, and the
BatchNorm statistics a step in training mode leaves on it. The test computes the
one-process step on both batches together and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from cxrutils.engine.data_adapters import open_training_cache, training_dataset
from cxrutils.engine.model import build_model
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.runtime import Distributed, mean_over_ranks, start_process_group
from cxrutils.engine.train import TrainingState, _reshuffle, training_data, training_network, training_step
from cxrutils.settings import load_train_config

MODEL_SEED = 0


def one_step(config, data, ddp: Distributed, device: torch.device, batchnorm_training: bool) -> dict:
    """One step on this process's first batch of epoch 1; BatchNorm in eval mode unless ``batchnorm_training``."""
    torch.manual_seed(MODEL_SEED)
    model = build_model("none")
    model.train(batchnorm_training)  # DenseNet121 has no dropout: eval mode only fixes BatchNorm's statistics
    state = TrainingState.create(config, model, device)
    network = training_network(model, ddp, device)
    _reshuffle(data.train_loader, config.seed, 1)
    pixels, targets = next(iter(data.train_loader))
    images = prepare_batch(pixels, device, config.input_size, channels_last=False)
    loss = training_step(network, images, targets, nn.BCEWithLogitsLoss(), state.optimizer, state.scaler, None)
    return {
        "loss": float(loss), "mean_loss": mean_over_ranks(float(loss), ddp, device),
        "gradients": {name: p.grad.clone() for name, p in model.named_parameters()},
        "weights": {name: value.clone() for name, value in model.state_dict().items()},
    }


def main(out_dir: Path, overrides: list[str]) -> None:
    ddp = Distributed.from_environment()
    device = torch.device("cpu")
    config = load_train_config("tiny", overrides)
    dataset = training_dataset(config)
    cache = open_training_cache(config, dataset)
    start_process_group(ddp, device)
    data = training_data(config, dataset, cache, ddp)
    shards = {}
    for epoch in (1, 2):
        _reshuffle(data.train_loader, config.seed, epoch)
        shards[epoch] = list(data.train_loader.sampler)
    frozen = one_step(config, data, ddp, device, batchnorm_training=False)
    training = one_step(config, data, ddp, device, batchnorm_training=True)
    torch.save({
        "world_size": ddp.world_size, "train_films": len(data.train_names), "shards": shards,
        "first_batch": shards[1][: config.batch_size], "frozen_batchnorm": frozen,
        "training_batchnorm_running_mean": training["weights"]["features.norm0.running_mean"],
    }, out_dir / f"rank{ddp.rank}.pt")
    if ddp.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

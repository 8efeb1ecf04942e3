"""``sync_batchnorm=true``: two processes at batch B take the step one process takes at batch 2B, BatchNorm included.

Without it each process normalises by its own batch's statistics, so DDP's step on B + B
films equals no one-process step on 2B films (tests/engine/test_train.py holds BatchNorm in
eval mode for that reason). With it every BatchNorm layer is a ``SyncBatchNorm``, which
normalises by the statistics of all the processes' films together; so the outputs, the
BatchNorm running statistics and the gradients DDP averages must equal those of plain
BatchNorm in one process on all the films.

This torch (2.14) runs SyncBatchNorm on GPUs only, so the test needs two: on CPU tensors in
a gloo group the layer's training forward raises ``ValueError: SyncBatchNorm expected input
tensor to be on GPU or XPU or privateuseone``, DDP refuses to wrap it (``ValueError:
SyncBatchNorm layers only work with GPU modules``; both checked in
tests/engine/test_cluster.py), and its autograd function underneath calls
``torch.batch_norm_stats``, which has no CPU kernel (``NotImplementedError: Could not run
'aten::batch_norm_stats' with arguments from the 'CPU' backend``; checked last here, so that
a torch that adds one says the CPU could run the comparison).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from sync_batchnorm_probe import one_step, run_rank, small_network

from cxrutils.engine.runtime import Distributed
from cxrutils.engine.train import training_network
from cxrutils.labels import FINDINGS

WORLD_SIZE = 2
FILMS_PER_PROCESS = 4
# float64 throughout but the loss, which training takes in float32: its rounding reaches the gradients at about 5e-10
# (measured on the CPU with SyncBatchNorm emulated by an autograd all_gather); the control below differs by > 1e-3.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-8}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _films() -> tuple[torch.Tensor, torch.Tensor]:
    """2B films whose two halves differ in brightness and contrast: each half's statistics are far from both's."""
    generator = torch.Generator().manual_seed(1)
    films = torch.randn(WORLD_SIZE * FILMS_PER_PROCESS, 1, 16, 16, generator=generator, dtype=torch.float64)
    films[FILMS_PER_PROCESS:] = 3.0 * films[FILMS_PER_PROCESS:] + 2.0
    targets = (torch.rand(films.shape[0], len(FINDINGS), generator=generator) < 0.3).float()
    return films, targets


@pytest.mark.skipif(torch.cuda.device_count() < WORLD_SIZE,
                    reason="torch 2.14's SyncBatchNorm runs on GPUs only (module docstring): needs 2 GPUs (NCCL)")
def test_two_gpus_at_batch_b_with_sync_batchnorm_take_the_one_process_step_at_batch_2b(tmp_path: Path):
    films, targets = _films()
    mp.spawn(run_rank, args=(WORLD_SIZE, _free_port(), films, targets, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = {kind: [torch.load(tmp_path / f"rank{rank}-{kind}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
             for kind in ("sync", "plain")}
    assert all("SyncBatchNorm" in rank["layers"] and "BatchNorm2d" not in rank["layers"] for rank in ranks["sync"])
    assert all("BatchNorm2d" in rank["layers"] for rank in ranks["plain"])

    device = torch.device("cuda", 0)
    model = small_network(torch.float64, device)
    reference = one_step(training_network(model, Distributed(), device), model, films.to(device), targets.to(device))

    synced = ranks["sync"]
    torch.testing.assert_close(torch.cat([rank["outputs"] for rank in synced]), reference["outputs"], **TOLERANCE)
    # DDP's average of the two mean losses' gradients is the gradient of the mean loss over all 2B films.
    for rank in synced:
        assert rank["gradients"].keys() == reference["gradients"].keys()
        for name, gradient in reference["gradients"].items():
            torch.testing.assert_close(rank["gradients"][name], gradient, **TOLERANCE, msg=name)
        # Weights after the step, and BatchNorm's running mean and (unbiased) variance over all 2B films' pixels.
        for key, value in reference["state"].items():
            torch.testing.assert_close(rank["state"][key], value, **TOLERANCE, msg=key)
    assert sum(rank["loss"] for rank in synced) / WORLD_SIZE == pytest.approx(reference["loss"], rel=1e-6)

    # The control: plain BatchNorm in each process normalises by its own half, and the step is another one.
    plain = ranks["plain"]
    assert not torch.allclose(torch.cat([rank["outputs"] for rank in plain]), reference["outputs"], rtol=1e-3)
    assert not torch.allclose(plain[0]["state"]["1.running_mean"], reference["state"]["1.running_mean"], rtol=1e-3)
    assert not torch.allclose(plain[0]["gradients"]["0.weight"], reference["gradients"]["0.weight"], rtol=1e-3)


def test_on_the_cpu_sync_batchnorm_has_no_kernel_for_its_statistics():
    """Why the test above needs GPUs: the statistics SyncBatchNorm gathers are computed by a CUDA-only operator.

    If this fails, this torch can compute them on the CPU: try the comparison above with gloo on CPU processes.
    """
    with pytest.raises(NotImplementedError, match="aten::batch_norm_stats.*'CPU' backend"):
        torch.batch_norm_stats(torch.randn(2, 3, 4, 4), 1e-5)

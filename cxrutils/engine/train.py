"""Train a chest film classifier (``arch``: DenseNet121 by default) on NIH ChestX-ray14 (or the phantoms).

    cxrutils train --config demo [--set key=value ...]
    torchrun --nproc_per_node=N -m cxrutils train --config nih --set data_root=/data/nih
    sbatch configs/slurm/train.sbatch --set data_root=/data/nih   (one torchrun per node)

One function for every entry point: the notebook calls ``train(config)`` too. Images
come from the uint8 cache; augmentation runs batched on the training device; validation
is never augmented or shuffled. Only rank 0 writes to the run folder. The loop reads
like torchvision's reference: ``train_one_epoch``, ``validate``, then the epoch's
bookkeeping, with everything a resume needs kept in one ``TrainingState``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from scipy.special import expit
from torch import nn

from cxrutils import files
from cxrutils.data.cache import ImageCache
from cxrutils.data.dataset import NIHDataset
from cxrutils.engine import run_folder
from cxrutils.engine.data_adapters import open_training_cache, training_cache_dir, training_dataset
from cxrutils.engine.loader import CachedImageDataset, make_loader
from cxrutils.engine.model import build_model, initial_weights
from cxrutils.engine.network_input import denormalize, prepare_batch
from cxrutils.engine.predict import predict_logits
from cxrutils.engine.runtime import (
    Distributed,
    autocast_dtype,
    broadcast,
    check_coordinated_launch,
    code_version,
    describe_runtime,
    environment,
    gather,
    gather_to_main,
    mean_over_ranks,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
    share_main_buffers,
    start_process_group,
)
from cxrutils.engine.tensorboard_log import TrainingBoard
from cxrutils.labels import FINDINGS
from cxrutils.locks import folder_lock
from cxrutils.predictions import predictions_table
from cxrutils.profiling import mark_once, stage
from cxrutils.progress import announce, duration_text, progress_bar
from cxrutils.settings import SettingsError, TrainConfig
from cxrutils.stats.metrics import per_class_auroc
from cxrutils.stats.thresholds import METHODS, choose_thresholds

# The progress bar's running loss is read from the device this often (each read waits for the GPU).
LOSS_SHOWN_EVERY = 25
# Settings that may differ when a run is resumed (they do not change what is learned).
RESUMABLE_CHANGES = {"num_workers", "epochs", "early_stopping_patience", "device", "runs_dir", "cache_dir", "compile",
                     "tensorboard"}


# --------------------------------------------------------------------------- what the run trains on


@dataclass
class TrainingData:
    """The usable films of the train and validation splits, their labels and loaders."""

    train_names: list[str]
    val_names: list[str]
    train_labels: np.ndarray
    val_labels: np.ndarray
    val_rows: pd.DataFrame  # the validation films' metadata rows, in order
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader  # this process's shard of the validation films (all of them for one)


def training_data(config: TrainConfig, dataset: NIHDataset, cache: ImageCache, ddp: Distributed) -> TrainingData:
    """The cached films of each split (unreadable ones left out, and listed by the cache), and their loaders."""
    metadata = dataset.metadata
    labels = metadata[list(FINDINGS)].to_numpy(dtype=np.float32)
    in_cache = metadata["image"].isin(cache.usable_names).to_numpy()
    train_mask = (metadata["split"] == "train").to_numpy() & in_cache
    val_mask = (metadata["split"] == "val").to_numpy() & in_cache
    train_names, val_names = metadata["image"][train_mask].tolist(), metadata["image"][val_mask].tolist()
    train_labels, val_labels = labels[train_mask], labels[val_mask]
    if not train_names or not val_names:
        raise ValueError(f"{config.data_root}: no usable images in the train or val split")
    if not any(0 < val_labels[:, k].sum() < len(val_labels) for k in range(len(FINDINGS))):
        raise ValueError(
            f"the validation split of {config.data_root} ({len(val_names)} images) has no finding with both "
            "positive and negative images, so AUROC cannot guide training; raise val_fraction"
        )
    train_set = CachedImageDataset(cache, train_names, train_labels)
    # Each process validates every world_size-th film (no film twice, unlike a padded DistributedSampler);
    # rank 0 puts the shards back in order.
    shard = slice(ddp.rank, None, ddp.world_size)
    val_set = CachedImageDataset(cache, val_names[shard], val_labels[shard])
    train_loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                               num_workers=config.num_workers, drop_last=len(train_set) > config.batch_size,
                               distributed=ddp.enabled)
    val_loader = make_loader(val_set, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                             num_workers=config.num_workers)
    return TrainingData(train_names, val_names, train_labels, val_labels, metadata[val_mask], train_loader,
                        val_loader)


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """BCE ``pos_weight`` = negatives / positives per class, from the training split."""
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    return torch.tensor(negatives / np.maximum(positives, 1.0), dtype=torch.float32)


def class_weights(config: TrainConfig, train_labels: np.ndarray) -> torch.Tensor | None:
    if config.class_weighting == "pos_weight":
        return positive_weights(train_labels)
    if config.class_weighting == "none":
        return None
    raise ValueError(f"class_weighting must be 'none' or 'pos_weight', got {config.class_weighting!r}")


# --------------------------------------------------------------------------- what a checkpoint holds


@dataclass
class TrainingState:
    """Everything a resumed run needs to continue exactly where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    epoch: int = 0  # the last finished epoch
    best_val_auroc_mean: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best one
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, config: TrainConfig, model: nn.Module, device: torch.device) -> TrainingState:
        """A fresh state: AdamW on the trainable parameters, the configured scheduler, a scaler for fp16."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel updates every parameter in one launch on a GPU; the CPU uses the default (foreach) one.
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, **fused)
        if config.scheduler == "plateau":
            scheduler: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
        elif config.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        else:
            raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {config.scheduler!r}")
        scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, config.amp) == torch.float16)
        return cls(model, optimizer, scheduler, scaler)

    def to_checkpoint(self, config: TrainConfig, rng: list[Any], cache_fingerprint: str) -> dict[str, Any]:
        """Everything to save; ``rng`` holds every rank's generator states, in rank order."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
            "rng": rng, "world_size": len(rng), "best_val_auroc_mean": self.best_val_auroc_mean,
            "best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs, "history": self.history,
            "config": config.to_dict(), "arch": config.arch, "label_order": list(FINDINGS),
            "cache_fingerprint": cache_fingerprint,
        }

    def load_checkpoint(self, checkpoint: dict[str, Any], ddp: Distributed) -> None:
        """Restore from a checkpoint loaded on the CPU (the model and optimizer move its tensors themselves).

        The random generators are restored when the run continues on as many processes
        as it was saved from; otherwise there is no state for this process, and a warning
        says that shuffling and augmentation will differ from an uninterrupted run.
        """
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # A run saved without a scaler (bf16 or CPU) resumed where fp16 needs one starts a fresh scaler.
        if checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.best_val_auroc_mean = checkpoint["best_val_auroc_mean"]
        self.best_epoch = checkpoint["best_epoch"]
        self.stale_epochs = checkpoint["stale_epochs"]
        self.history = list(checkpoint["history"])
        saved = checkpoint["rng"] if isinstance(checkpoint["rng"], list) else [checkpoint["rng"]]
        saved_world_size = int(checkpoint.get("world_size", len(saved)))
        if saved_world_size == ddp.world_size and len(saved) == ddp.world_size:
            set_rng_state(saved[ddp.rank])
        else:
            warnings.warn(
                f"resuming a run saved from {saved_world_size} process(es) on {ddp.world_size}: the model, optimizer, "
                "scheduler and history are restored, the random generators are not, so shuffling and augmentation "
                "from here on differ from an uninterrupted run",
                stacklevel=2,
            )

    def record(self, row: dict[str, Any], val_mean: float) -> bool:
        """Add a finished epoch; return whether it is the best so far."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        improved = val_mean > self.best_val_auroc_mean
        if improved:
            self.best_val_auroc_mean, self.best_epoch, self.stale_epochs = val_mean, self.epoch, 0
        else:
            self.stale_epochs += 1
        return improved


# --------------------------------------------------------------------------- one epoch


def accumulate_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    batches_in_step: int = 1,
) -> torch.Tensor:
    """Forward and backward on a prepared batch, adding its share of the step's gradient; returns its (detached) loss.

    The loss is divided by ``batches_in_step``, so the gradients a step sums over its
    batches are their mean: the gradient of one batch that holds them all.
    """
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images)
    loss = criterion(logits.float(), targets)
    scaler.scale(loss / batches_in_step).backward()
    return loss.detach()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Apply the gradients gathered since ``zero_grad``; the fp16 scaler unscales them (and skips a step on inf)."""
    scaler.step(optimizer)
    scaler.update()


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One optimisation step on a prepared batch; returns the (detached) loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, images, targets, criterion, scaler, amp_dtype)
    optimizer_step(optimizer, scaler)
    return loss


def warmup_factor(warmup_epochs: float, progress_epochs: float) -> float:
    """The share of the scheduled lr that the optimizer step ending ``progress_epochs`` into training uses.

    Linear: the first of W warmup steps uses 1/W of the lr, the W-th the whole lr (W: the
    steps in ``warmup_epochs``); 1 without warmup. Counted in epochs, not steps: a run resumes
    at an epoch boundary, so it continues the ramp where it stopped, on any number of
    processes or batches per step.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, progress_epochs / warmup_epochs)


def training_network(
    model: nn.Module, ddp: Distributed, device: torch.device, compile: bool = False, sync_batchnorm: bool = False,
    force_ddp: bool = False,
) -> nn.Module:
    """What ``training_step`` calls: the model, inside DDP under torchrun, compiled around that with ``compile``.

    DDP averages the gradients over the processes during the backward pass, so N
    processes at batch B take the step one process takes at batch N x B on the same
    films (with BatchNorm in training mode, each process still normalises by its own
    batch's statistics, unless ``sync_batchnorm`` makes every BatchNorm layer a
    ``SyncBatchNorm``, which normalises by all N batches). Compiled around DDP, its
    all-reduce overlaps the backward pass. One process has nothing to synchronise:
    ``sync_batchnorm`` changes nothing there, and training runs it without DDP.
    ``force_ddp`` wraps one process in DDP all the same (its process group, of one, started
    by the caller): ``benchmarks/gpu_check.py`` measures DDP's own cost, and runs DDP and
    NCCL, compiled or not, on a box with one GPU. Training never sets it.
    """
    network: nn.Module = model
    if ddp.enabled or force_ddp:
        if sync_batchnorm:
            # In place (the network is no BatchNorm itself): the new layers hold the model's own parameters and buffers,
            # so the optimizer, the checkpoint's keys and validation (which uses ``model``) are unchanged.
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        network = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        network = torch.compile(network)
    return network


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    epoch: int,
    show_progress: bool,
) -> dict[str, float]:
    """One pass over the training films: an optimizer step per ``grad_accumulation_steps`` batches, the lr warmed up.

    A step's gradient is the mean over its batches (the epoch's last step may have fewer), so
    k batches of B films take the step one batch of k x B takes, up to BatchNorm (which
    normalises each batch by its own statistics). Under DDP only a step's last batch
    all-reduces the gradients. The warmup scales the lr the epoch's scheduler set, step by
    step, and gives it back when the epoch ends: the scheduler and the checkpoint never see it.
    The progress bar counts batches, the loss and the images per second count films.
    """
    model.train()
    amp_dtype = autocast_dtype(device, config.amp)
    # The loss stays on the device: reading it every step would make the CPU wait for the GPU each time.
    total_loss = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    seen = 0
    batches = len(loader) if config.limit_train_batches is None else min(len(loader), config.limit_train_batches)
    per_step = config.grad_accumulation_steps
    steps = math.ceil(batches / per_step)  # optimizer steps this epoch, a last short one included
    scheduled_lrs = [group["lr"] for group in optimizer.param_groups]
    started = time.perf_counter()
    # Transient: the epoch's line (``announce`` in ``train``) is what stays.
    bar = progress_bar(total=batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not show_progress,
                       leave=False, done=False)
    try:
        for batch, (pixels, targets) in enumerate(loader):
            if batch >= batches:
                break
            step_start = batch - batch % per_step
            batches_in_step = min(per_step, batches - step_start)
            ends_step = batch == step_start + batches_in_step - 1
            if batch == step_start:
                optimizer.zero_grad(set_to_none=True)
            images = prepare_batch(pixels, device, config.input_size, config.channels_last, config.augment, generator)
            targets = targets.to(device, non_blocking=True)
            with nullcontext() if ends_step else _gradients_kept_local(model):
                loss = accumulate_gradients(model, images, targets, criterion, scaler, amp_dtype, batches_in_step)
            if ends_step:
                if config.warmup_epochs > 0:
                    factor = warmup_factor(config.warmup_epochs, epoch - 1 + (batch // per_step + 1) / steps)
                    for group, scheduled in zip(optimizer.param_groups, scheduled_lrs):
                        group["lr"] = scheduled * factor
                optimizer_step(optimizer, scaler)
            mark_once("first training batch")
            total_loss += loss.to(total_loss.dtype) * targets.shape[0]
            seen += targets.shape[0]
            bar.update()
            if batch % LOSS_SHOWN_EVERY == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", refresh=False)
    finally:
        for group, scheduled in zip(optimizer.param_groups, scheduled_lrs):
            group["lr"] = scheduled
    bar.close()
    # Read before the clock: ``.item()`` waits for the device to finish the last step, which the CPU only queued.
    train_loss = total_loss.item() / max(seen, 1)
    elapsed = time.perf_counter() - started
    return {"train_loss": train_loss, "train_images_per_second": seen / max(elapsed, 1e-9)}


def _gradients_kept_local(network: nn.Module) -> Any:
    """DDP's ``no_sync``: this batch's gradients stay on this process until the step's last batch all-reduces the sum.

    Nothing to keep local for one process (no DDP) or a network without ``no_sync``.
    """
    no_sync = getattr(network, "no_sync", None)  # a compiled network finds it on the DDP module it wraps
    return no_sync() if no_sync is not None else nullcontext()


def validate(
    model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module, config: TrainConfig,
    device: torch.device, ddp: Distributed = Distributed(),
) -> dict[str, Any] | None:
    """Validation loss, per-class AUROC, and the probabilities and labels they came from; None off rank 0.

    Every process scores its shard (every world_size-th film) with rank 0's model,
    BatchNorm statistics included; rank 0 gathers the shards, puts the films back in
    order and computes the metrics over all of them.
    """
    share_main_buffers(model, ddp)
    logits, labels = predict_logits(model, loader, device, config.input_size, config.amp, config.channels_last,
                                    desc="validate", show_progress=ddp.is_main, summarise=False)
    shards = gather_to_main((logits[0].numpy(), labels.numpy()), ddp)
    if shards is None:
        return None
    logits_array, labels_array = interleave([s[0] for s in shards]), interleave([s[1] for s in shards])
    loss = float(criterion(torch.from_numpy(logits_array), torch.from_numpy(labels_array)).item())
    probabilities = expit(logits_array)
    return {"val_loss": loss, "auroc": per_class_auroc(labels_array, probabilities), "probabilities": probabilities,
            "labels": labels_array}


def interleave(shards: list[np.ndarray]) -> np.ndarray:
    """Undo ``items[rank::world_size]`` sharding: rows back in their original order."""
    total = sum(len(shard) for shard in shards)
    whole = np.empty((total, *shards[0].shape[1:]), dtype=shards[0].dtype)
    for rank, shard in enumerate(shards):
        whole[rank :: len(shards)] = shard
    return whole


# --------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_auroc_mean: float
    epochs_run: int


def train(config: TrainConfig, resume: bool | str = False, dataset: NIHDataset | None = None) -> TrainResult:
    """Train per ``config``.

    ``dataset`` is ``training_dataset(config)`` when the caller has it already
    (the notebook does), so a large root is not indexed twice.

    ``resume=True`` continues from the run's last checkpoint (its config must match);
    ``"auto"`` does so when the run folder has one and starts afresh otherwise, so
    re-running a finished run returns at once.

    One writer per run folder: the process that writes it (rank 0) holds its lock
    (``cxrutils.locks.folder_lock``) from before the folder is first checked (for a
    checkpoint to resume, or a run already there) until training ends, so of two
    trainings started with one name, the second raises ``FolderLocked`` at once, naming
    the first, before it reads or writes anything there. The other ranks write nothing
    to the run folder; torchrun stops them as soon as rank 0 fails.
    """
    check_coordinated_launch()  # before anything is read or written: srun's tasks without torchrun are refused
    ddp = Distributed.from_environment()
    writer = folder_lock(config.run_dir, purpose=f"training run {config.name!r}") if ddp.is_main else nullcontext()
    with writer:
        return _train(config, resume, dataset, ddp)


def _train(config: TrainConfig, resume: bool | str, dataset: NIHDataset | None, ddp: Distributed) -> TrainResult:
    device = select_device(config.device, ddp)
    if config.sync_batchnorm and ddp.enabled and device.type != "cuda":
        raise SettingsError(
            f"sync_batchnorm=true needs GPUs: torch {torch.__version__.split('+')[0]}'s SyncBatchNorm normalises only "
            f"GPU tensors, and these {ddp.world_size} processes train on {device.type}; set sync_batchnorm=false "
            "(each process then normalises by its own batch's statistics)")
    if device.type == "cpu" and ddp.enabled:  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ddp.world_size))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convolution once
    seed_everything(config.seed + ddp.rank)
    run_dir = config.run_dir
    last_path = run_dir / run_folder.LAST_CHECKPOINT
    resume = _check_resume(config, resume, ddp)

    # Build the model first: missing weights must fail before anything is written.
    model = build_model(config.weights, head=config.head, lse_r=config.lse_r,  # type: ignore[arg-type]
                        strategy=config.strategy, arch=config.arch)  # type: ignore[arg-type]

    dataset = dataset or training_dataset(config)
    # Every process opens the cache before the process group exists (the first builds it, the others wait on its
    # lock): a collective would time out while one rank decodes 112k films.
    cache = open_training_cache(config, dataset)
    start_process_group(ddp, device)
    data = training_data(config, dataset, cache, ddp)
    if ddp.is_main:
        announce(f"{describe_runtime(device, config.amp, config.channels_last, ddp)}; {_describe_step(config, ddp)}")

    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = TrainingState.create(config, model, device)
    pos_weight = class_weights(config, data.train_labels)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)
    val_criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)  # validation loss is computed on the CPU
    if resume:
        # On the CPU: loaded onto the GPU, AdamW's step counters would stay there and cost a sync per parameter.
        checkpoint = run_folder.load_checkpoint(last_path, map_location="cpu")
        if checkpoint.get("cache_fingerprint") != cache.fingerprint:
            raise ValueError(
                f"cannot resume {run_dir}: its images differ from the ones it was trained on (the image cache "
                f"fingerprint changed). Delete {run_dir} (for the demo: make clean-demo) or choose another run name"
            )
        state.load_checkpoint(checkpoint, ddp)

    network = training_network(model, ddp, device, config.compile, config.sync_batchnorm)
    finished = state.epoch >= config.epochs or state.stale_epochs >= config.early_stopping_patience
    # A finished run reopened (the reports after a command-line training, a requeued job that had ended) keeps the
    # record of the machine that trained it: nothing is trained here, so nothing of this machine belongs in it.
    if ddp.is_main and not (resume and finished):
        _write_run_record(run_dir, config, dataset, cache, data, device, ddp, pos_weight)

    # Rank 0 only; events an interrupted process wrote after its last checkpoint are dropped (purge from the epoch on).
    board = TrainingBoard(run_dir, enabled=config.tensorboard and ddp.is_main and not finished,
                          first_epoch=state.epoch + 1)
    try:
        if board.enabled:
            images, _ = _augmented_images(config, cache, data.train_names[:8])
            board.augmented_batch(images, state.epoch + 1)
        generator = torch.Generator(device=device)
        # This process's epochs (not a resumed run's earlier ones): the time-left estimate.
        epoch_seconds: list[float] = []
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.stale_epochs >= config.early_stopping_patience:
                break
            # Augmentation draws and the shuffle depend only on (seed, epoch, rank): a resumed run repeats them exactly.
            generator.manual_seed(config.seed * 1000003 + epoch * 1009 + ddp.rank)
            _reshuffle(data.train_loader, config.seed, epoch)
            started = time.perf_counter()
            with stage("train epoch", images=len(data.train_names)):
                train_stats = train_one_epoch(network, data.train_loader, criterion, state.optimizer, state.scaler,
                                              config, device, generator, epoch, show_progress=ddp.is_main)
            # Every rank trained on as many films (DistributedSampler), so the mean of the means is the mean.
            if ddp.enabled:
                train_stats["train_loss"] = mean_over_ranks(train_stats["train_loss"], ddp, device)
                train_stats["train_images_per_second"] *= ddp.world_size
            with stage("validate", images=len(data.val_names)):
                val = validate(model, data.val_loader, val_criterion, config, device, ddp)
            val_loss, val_mean = broadcast((val["val_loss"], float(np.nanmean(val["auroc"]))) if val else None, ddp)
            # The lr the epoch's last step used: the scheduler's, times the warmup's share at the epoch's end.
            lr = state.optimizer.param_groups[0]["lr"] * warmup_factor(config.warmup_epochs, epoch)
            if config.scheduler == "plateau":
                state.scheduler.step(val_loss)
            else:
                state.scheduler.step()
            row = {"epoch": epoch, **train_stats, "val_loss": val_loss, "val_auroc_mean": val_mean, "lr": lr,
                   "epoch_seconds": time.perf_counter() - started}
            if val is not None:
                row.update({f"val_auroc_{f}": float(a) for f, a in zip(FINDINGS, val["auroc"])})
            improved = state.record(row, val_mean)
            rng = gather(rng_state(), ddp)
            if ddp.is_main:
                with stage("checkpoint"):
                    _save_epoch(run_dir, state, config, rng, cache.fingerprint, improved, data.val_rows, val)
                board.epoch(row)
                epoch_seconds.append(row["epoch_seconds"])
                announce(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
                         f"val AUROC {val_mean:.4f}{' (best)' if improved else ''}, "
                         f"{row['train_images_per_second']:.0f} img/s, {duration_text(row['epoch_seconds'])}",
                         live=_time_left(epoch_seconds, config.epochs - epoch, state.stale_epochs, config))
            if ddp.enabled:
                dist.barrier()
    finally:
        board.close()  # also when an epoch raises: the events written so far are flushed, the file closed
    if ddp.enabled:
        dist.destroy_process_group()
    return TrainResult(run_dir=run_dir, best_epoch=state.best_epoch, best_val_auroc_mean=state.best_val_auroc_mean,
                       epochs_run=len(state.history))


def _describe_step(config: TrainConfig, ddp: Distributed) -> str:
    """"batch 32 per process (64 in all), lr 0.001", with the accumulation, warmup and SyncBatchNorm where set."""
    films = config.batch_size * ddp.world_size
    if config.grad_accumulation_steps == 1:
        text = f"batch {config.batch_size} per process ({films} in all), lr {config.lr:g}"
    else:
        text = (f"batch {config.batch_size} per process, {config.grad_accumulation_steps} batches a step "
                f"({films * config.grad_accumulation_steps} films a step in all), lr {config.lr:g}")
    if config.warmup_epochs > 0:
        text += f" after a linear warmup over {config.warmup_epochs:g} epochs"
    if config.sync_batchnorm and ddp.enabled:
        text += ", BatchNorm synchronised over the processes"
    return text


def _time_left(epoch_seconds: list[float], epochs_left: int, stale_epochs: int, config: TrainConfig) -> str:
    """"; up to 4 min 10 s left (5 more epochs)" from the mean epoch so far; early stopping may end sooner."""
    if epochs_left <= 0:
        return ""
    if stale_epochs >= config.early_stopping_patience:
        return f"; stopping early: no better validation AUROC in {stale_epochs} epochs"
    left = duration_text(float(np.mean(epoch_seconds)) * epochs_left)
    return f"; up to {left} left ({epochs_left} more epoch{'s' if epochs_left > 1 else ''}, fewer if it stops early)"


def _check_resume(config: TrainConfig, resume: bool | str, ddp: Distributed) -> bool:
    """Whether to resume; refuses to overwrite a run, to resume nothing, and to resume with other settings."""
    last_path = config.run_dir / run_folder.LAST_CHECKPOINT
    if resume == "auto":
        resume = last_path.exists()
    if resume and not last_path.exists():
        raise run_folder.NothingToResumeError(
            f"cannot resume: {last_path} does not exist; --resume auto starts the run when there is nothing to resume")
    if resume:
        check_same_settings(run_folder.load_checkpoint(last_path)["config"], config)
    elif ddp.is_main and last_path.exists():
        raise run_folder.RunExistsError(
            f"{config.run_dir} already holds a run; pass resume=True (--resume, or --resume auto where a scheduler "
            "may relaunch the job) to continue it, or choose another name"
        )
    return bool(resume)


def check_same_settings(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume a run with settings that change what it learns (a setting added since counts as its default).

    A run saved before ``arch`` existed trained DenseNet121, ``arch``'s default: it resumes as densenet121, and
    with any other architecture is refused.
    """
    known = set(TrainConfig.__dataclass_fields__)
    before = TrainConfig.from_dict({k: v for k, v in saved.items() if k in known}).to_dict()
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and before.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {current[k]!r}" for k in changed)
        raise run_folder.SettingsChangedError(
            f"cannot resume {config.run_dir}: settings changed ({details}); use a new run name")


def _write_run_record(
    run_dir: Path, config: TrainConfig, dataset: NIHDataset, cache: ImageCache, data: TrainingData,
    device: torch.device, ddp: Distributed, pos_weight: torch.Tensor | None,
) -> None:
    """config.json (settings and facts), split.csv and bad_files.csv: what later steps read instead of recomputing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = run_folder.write_split(run_dir, dataset.metadata)
    run_folder.write_config(run_dir, {
        **config.to_dict(), "cache_dir": str(training_cache_dir(config)), "device": str(device),
        "world_size": ddp.world_size, "label_order": list(FINDINGS), "data_description": dataset.description,
        "synthetic": dataset.synthetic, "split_kind": dataset.split_kind, "data_fingerprint": fingerprint,
        "cache_fingerprint": cache.fingerprint, "train_images": len(data.train_names),
        "val_images": len(data.val_names), "pos_weight": pos_weight.tolist() if pos_weight is not None else None,
        "initial_weights": initial_weights(config.weights, config.arch), "environment": environment(device),
        "code": code_version(),
    })
    if len(cache.bad_files):
        run_folder.write_bad_files(run_dir, cache.bad_files)


def _save_epoch(
    run_dir: Path, state: TrainingState, config: TrainConfig, rng: list[Any], cache_fingerprint: str, improved: bool,
    val_rows: pd.DataFrame, val: dict[str, Any] | None,
) -> None:
    """The best checkpoint and its validation outputs when improved, then the last checkpoint and the history.

    The checkpoint is serialised and written once: when the epoch improved, the last
    checkpoint is the best one's file under a second name (a hard link, or a copy where
    the file system has none). Rank 0 writes while the other ranks wait at the barrier,
    so a second 85 MB write would be the epoch tail of every GPU.
    """
    checkpoint = state.to_checkpoint(config, rng, cache_fingerprint)
    last, best = run_dir / run_folder.LAST_CHECKPOINT, run_dir / run_folder.BEST_CHECKPOINT
    if improved:
        run_folder.save_checkpoint(best, checkpoint)
        assert val is not None  # rank 0 validates
        _write_validation_outputs(run_dir, val_rows, val)
        files.atomic_same_file(best, last)  # written last: the epoch is done
    else:
        run_folder.save_checkpoint(last, checkpoint)  # written last: the epoch is done
    run_folder.write_history(run_dir, state.history)


def _write_validation_outputs(run_dir: Path, rows: pd.DataFrame, val: dict[str, Any]) -> None:
    """Validation predictions of the best epoch, and the thresholds chosen on them."""
    table = predictions_table(rows["image"].tolist(), rows["patient_id"].tolist(), val["probabilities"], val["labels"])
    run_folder.write_predictions(run_dir, table, "val")
    thresholds = {
        method: {f: (None if np.isnan(t) else float(t)) for f, t in
                 zip(FINDINGS, choose_thresholds(val["labels"], val["probabilities"], method))}  # type: ignore[arg-type]
        for method in METHODS
    }
    run_folder.write_thresholds(run_dir, thresholds)


def _reshuffle(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """The epoch's shuffle depends only on (seed, epoch), so a resumed run sees the same order."""
    sampler = loader.sampler
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed * 7919 + epoch)


# --------------------------------------------------------------------------- for the notebook


def describe_training_data(config: TrainConfig, dataset: NIHDataset | None = None) -> pd.DataFrame:
    """Per finding: positives in train and val, train prevalence, and the pos_weight it implies."""
    dataset = dataset or training_dataset(config)
    side = dataset.metadata["split"].to_numpy()
    labels = dataset.metadata[list(FINDINGS)].to_numpy(dtype=np.float32)
    table = pd.DataFrame({
        "train positives": labels[side == "train"].sum(axis=0).astype(int),
        "val positives": labels[side == "val"].sum(axis=0).astype(int),
        "train prevalence %": 100 * labels[side == "train"].mean(axis=0),
        "pos_weight": positive_weights(labels[side == "train"]).numpy(),
    }, index=list(FINDINGS))
    table.attrs["synthetic"] = dataset.synthetic
    return table


def augmented_sample(
    config: TrainConfig, count: int = 8, dataset: NIHDataset | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The first training images of the cache as the model sees them after augmentation."""
    dataset = dataset or training_dataset(config)
    cache = open_training_cache(config, dataset)
    train_names = dataset.images_in("train")
    return _augmented_images(config, cache, train_names[train_names.isin(cache.usable_names)][:count].tolist())


def _augmented_images(config: TrainConfig, cache: ImageCache, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """``names``' films of the cache after the run's augmentation (seeded by the run's seed), in [0, 1]."""
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(list(names))]))[:, None]
    generator = torch.Generator().manual_seed(config.seed)
    images = prepare_batch(pixels, torch.device("cpu"), config.input_size, False, config.augment, generator)
    return denormalize(images), list(names)


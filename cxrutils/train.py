"""Train DenseNet121 on NIH ChestX-ray14 (or the phantoms): one function for every entry point.

    python -m cxrutils.train --config configs/train/demo.yaml [--set key=value ...]
    torchrun --nproc_per_node=N -m cxrutils.train --config configs/train/nih.yaml --set data_root=/data/nih

The notebook calls ``train(config)`` too. Images come from the uint8 cache;
augmentation runs batched on the training device; validation is never
augmented or shuffled. Only rank 0 writes to the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from scipy.special import expit
from torch import nn

from cxrutils import run_folder
from cxrutils.augment import AugmentConfig, random_affine
from cxrutils.cache import ImageCache, build_cache
from cxrutils.loader import CachedImageDataset, make_loader
from cxrutils.config import parse_override
from cxrutils.dataset import NIHDataset, load_dataset
from cxrutils.labels import FINDINGS
from cxrutils.metrics import per_class_auroc
from cxrutils.model import GRAY_MEAN as GRAY_MEAN_FOR_DISPLAY
from cxrutils.model import GRAY_STD as GRAY_STD_FOR_DISPLAY
from cxrutils.model import build_model, normalize
from cxrutils.paths import CONFIGS_DIR, DATA_DIR, RUNS_DIR, resolve
from cxrutils.profiling import mark_once, stage
from cxrutils.progress import progress_bar
from cxrutils.thresholds import METHODS, choose_thresholds

TRAIN_CONFIGS_DIR = CONFIGS_DIR / "train"


@dataclass
class TrainConfig:
    """Every setting of a run; saved resolved next to it as config.json."""

    name: str = "demo"
    data_root: str = "data/demo"
    images_dir: str | None = None
    cache_dir: str | None = None  # default: data/cache/<dataset folder>_<cache_size>
    cache_size: int = 256
    skip_bad_images: bool = False  # True: unreadable files are listed in the run folder, not fatal
    input_size: int = 224
    weights: str = "imagenet"  # "imagenet", "none", or a path to a cxrutils checkpoint
    head: str = "gap"  # "gap" or "lse"
    lse_r: float = 10.0
    strategy: str = "full"  # "full", "freeze_through_denseblock3", "head_only"
    class_weighting: str = "none"  # "none" or "pos_weight" (from training prevalence)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: str = "plateau"  # "plateau" (on val loss) or "cosine"
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    epochs: int = 20
    early_stopping_patience: int = 10  # epochs without a better mean val AUROC
    batch_size: int = 64
    num_workers: int = 4
    val_fraction: float = 0.1
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA where supported, else fp16 with a GradScaler
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), or a torch device string
    limit_train_batches: int | None = None  # for smoke tests and benchmarks
    runs_dir: str = str(RUNS_DIR)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return resolve(self.runs_dir) / self.name


def load_train_config(profile: str, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """``configs/train/<profile>.yaml`` (or a YAML path) with overrides (``key=value`` or a dict)."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else TRAIN_CONFIGS_DIR / f"{profile}.yaml"
    path = resolve(path)
    if not path.is_file():
        known = sorted(p.stem for p in TRAIN_CONFIGS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no training profile {profile!r} ({path}); known profiles: {known}")
    values = yaml.safe_load(path.read_text()) or {}
    pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in pairs:
        if key.startswith("augment."):
            values.setdefault("augment", {})[key.removeprefix("augment.")] = value
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


# --------------------------------------------------------------------------- devices and processes


@dataclass(frozen=True)
class Distributed:
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


def select_device(requested: str, ddp: Distributed) -> torch.device:
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


# --------------------------------------------------------------------------- input pipeline


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


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """BCE ``pos_weight`` = negatives / positives per class, from the training split."""
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    return torch.tensor(negatives / np.maximum(positives, 1.0), dtype=torch.float32)


# --------------------------------------------------------------------------- epochs


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
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images)
    loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


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
    model.train()
    amp_dtype = autocast_dtype(device, config.amp)
    total_loss, seen = 0.0, 0
    batches = len(loader) if config.limit_train_batches is None else min(len(loader), config.limit_train_batches)
    started = time.perf_counter()
    bar = progress_bar(total=batches, desc=f"epoch {epoch} train", unit="batch", disable=not show_progress)
    for step, (pixels, targets) in enumerate(loader):
        if step >= batches:
            break
        images = prepare_batch(pixels, device, config.input_size, config.channels_last, config.augment, generator)
        targets = targets.to(device, non_blocking=True)
        loss = training_step(model, images, targets, criterion, optimizer, scaler, amp_dtype)
        mark_once("first training batch")
        total_loss += loss.item() * targets.shape[0]
        seen += targets.shape[0]
        bar.update()
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    bar.close()
    elapsed = time.perf_counter() - started
    return {"train_loss": total_loss / max(seen, 1), "train_images_per_second": seen / max(elapsed, 1e-9)}


@torch.no_grad()
def predict(
    model: nn.Module, loader: torch.utils.data.DataLoader, config: TrainConfig, device: torch.device, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for a non-shuffled loader, in dataset order."""
    model.eval()
    amp_dtype = autocast_dtype(device, config.amp)
    all_logits, all_labels = [], []
    for pixels, targets in progress_bar(loader, desc=desc, unit="batch"):
        images = prepare_batch(pixels, device, config.input_size, config.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            all_logits.append(model(images).float().cpu())
        all_labels.append(targets)
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module, config: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    logits, labels = predict(model, loader, config, device, desc="validate")
    loss = float(criterion(torch.from_numpy(logits), torch.from_numpy(labels)).item())
    probabilities = expit(logits)
    auroc = per_class_auroc(labels, probabilities)
    return {"val_loss": loss, "auroc": auroc, "probabilities": probabilities, "labels": labels}


# --------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_auroc_mean: float
    epochs_run: int


def default_cache_dir(config: TrainConfig) -> Path:
    return DATA_DIR / "cache" / f"{resolve(config.data_root).name}_{config.cache_size}"


def image_cache_dir(config: TrainConfig) -> Path:
    """Where a config's image cache lives: ``cache_dir`` if set, else data/cache/<root>_<size>."""
    return resolve(config.cache_dir) if config.cache_dir else default_cache_dir(config)


def open_image_cache(dataset: NIHDataset, config: TrainConfig) -> ImageCache:
    """The config's image cache: reused when complete, otherwise built (or its interrupted build resumed).

    Training, prediction and the comparison all come through here, so they share one
    fingerprint and never rebuild each other's cache.
    """
    return build_cache(listed_image_paths(dataset, config), image_cache_dir(config), size=config.cache_size,
                       skip_bad=config.skip_bad_images)


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """A run's ``config.json`` as a ``TrainConfig``.

    ``config.json`` also records facts about the run that are not settings (device,
    world size, image counts, ...); they are dropped here. Its ``cache_dir`` is the
    resolved folder the run trained from.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in run_folder.read_config(run_dir).items() if k in known})


def _rng_state() -> dict[str, Any]:
    """Every generator's state as plain Python values (safe to pickle, gather and load with weights_only)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [state.tolist() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _broadcast(value: Any, ddp: Distributed) -> Any:
    if not ddp.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def load_training_dataset(config: TrainConfig) -> NIHDataset:
    """The dataset a config trains on (its split carved with the config's seed and val_fraction)."""
    if not config.data_root:
        raise ValueError("data_root is not set: pass --set data_root=/path/to/nih (or data_root=... in the notebook)")
    return load_dataset(config.data_root, images_dir=config.images_dir, val_fraction=config.val_fraction,
                        seed=config.seed)


def listed_image_paths(dataset: NIHDataset, config: TrainConfig) -> pd.Series:
    """Every image the metadata lists, found or not: a missing file then stops the cache build
    with its name, or (``skip_bad_images``) is listed in ``bad_files.csv``; it is never dropped silently."""
    if dataset.index is None:
        raise ValueError("training needs images: data_root is metadata-only; point it at a dataset folder")
    images_root = resolve(config.images_dir or config.data_root)
    missing = pd.Series({name: str(images_root / name) for name in dataset.index.missing}, dtype=object)
    return pd.concat([dataset.index.paths, missing]) if len(missing) else dataset.index.paths


def train(config: TrainConfig, resume: bool | str = False, dataset: NIHDataset | None = None) -> TrainResult:
    """Train per ``config``.

    ``dataset`` is ``load_training_dataset(config)`` when the caller has it already
    (the notebook does), so a large root is not indexed twice.

    ``resume=True`` continues from the run's last checkpoint (its config must match);
    ``"auto"`` does so when the run folder has one and starts afresh otherwise, so
    re-running a finished run returns at once.
    """
    ddp = init_distributed()
    device = select_device(config.device, ddp)
    if device.type == "cpu" and ddp.enabled:  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ddp.world_size))
    seed_everything(config.seed + ddp.rank)
    run_dir = config.run_dir
    last_path = run_dir / run_folder.LAST_CHECKPOINT
    if resume == "auto":
        resume = last_path.exists()
    if resume:
        _check_same_config(run_folder.load_checkpoint(last_path)["config"], config)
    if ddp.is_main and not resume and last_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, or choose another name"
        )
    if resume and not last_path.exists():
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist")

    # Build the model first: missing weights must fail before anything is written.
    model = build_model(config.weights, head=config.head, lse_r=config.lse_r, strategy=config.strategy)  # type: ignore[arg-type]

    dataset = dataset or load_training_dataset(config)
    cache_dir = image_cache_dir(config)
    if ddp.is_main:
        cache = open_image_cache(dataset, config)
    if ddp.enabled:
        dist.barrier()
    if not ddp.is_main:
        cache = ImageCache.open(cache_dir)

    metadata = dataset.metadata
    split = dataset.split.reindex(metadata["image"]).to_numpy()
    labels_all = metadata[list(FINDINGS)].to_numpy(dtype=np.float32)
    in_cache = metadata["image"].isin(cache.usable_names).to_numpy()
    train_mask, val_mask = (split == "train") & in_cache, (split == "val") & in_cache
    train_names, val_names = metadata["image"][train_mask].tolist(), metadata["image"][val_mask].tolist()
    train_labels, val_labels = labels_all[train_mask], labels_all[val_mask]
    if not train_names or not val_names:
        raise ValueError(f"{config.data_root}: no usable images in the train or val split")
    if not any(0 < val_labels[:, k].sum() < len(val_labels) for k in range(len(FINDINGS))):
        raise ValueError(
            f"the validation split of {config.data_root} ({len(val_names)} images) has no finding with both "
            "positive and negative images, so AUROC cannot guide training; raise val_fraction"
        )

    train_set = CachedImageDataset(cache, train_names, train_labels)
    val_set = CachedImageDataset(cache, val_names, val_labels)
    train_loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                               num_workers=config.num_workers, drop_last=len(train_set) > config.batch_size,
                               distributed=ddp.enabled)
    val_loader = make_loader(val_set, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                             num_workers=config.num_workers)

    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    if config.scheduler == "plateau":
        scheduler: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    elif config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {config.scheduler!r}")
    amp_dtype = autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if config.class_weighting == "pos_weight":
        pos_weight: torch.Tensor | None = positive_weights(train_labels)
    elif config.class_weighting == "none":
        pos_weight = None
    else:
        raise ValueError(f"class_weighting must be 'none' or 'pos_weight', got {config.class_weighting!r}")
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)
    val_criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)  # validation loss is computed on the CPU

    history: list[dict[str, Any]] = []
    start_epoch, best_auroc, best_epoch, stale_epochs = 1, -math.inf, 0, 0
    if resume:
        state = run_folder.load_checkpoint(last_path, map_location=device)
        if state.get("cache_fingerprint") != cache.fingerprint:
            raise ValueError(
                f"cannot resume {run_dir}: its images differ from the ones it was trained on (the image cache "
                f"fingerprint changed). Delete {run_dir} (for the demo: make clean-demo) or choose another run name"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_auroc, best_epoch, stale_epochs = state["best_val_auroc_mean"], state["best_epoch"], state["stale_epochs"]
        _set_rng_state(state["rng"][ddp.rank] if isinstance(state["rng"], list) else state["rng"])

    network: nn.Module = model
    if config.compile:
        network = torch.compile(network)
    if ddp.enabled:
        network = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)

    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.write_json(run_dir / run_folder.CONFIG_NAME, {
            **config.to_dict(), "cache_dir": str(cache_dir), "device": str(device), "world_size": ddp.world_size,
            "label_order": list(FINDINGS), "data_description": dataset.description, "synthetic": dataset.synthetic,
            "cache_fingerprint": cache.fingerprint,
            "train_images": len(train_names), "val_images": len(val_names),
            "pos_weight": pos_weight.tolist() if pos_weight is not None else None,
        })
        if len(cache.bad_files):
            cache.bad_files.to_csv(run_dir / run_folder.BAD_FILES_NAME, index=False)

    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed * 1000 + ddp.rank)
    for epoch in range(start_epoch, config.epochs + 1):
        if stale_epochs >= config.early_stopping_patience:
            break
        # Augmentation draws depend only on (seed, epoch, rank): a resumed run repeats them exactly.
        generator.manual_seed(config.seed * 1000003 + epoch * 1009 + ddp.rank)
        _reshuffle(train_loader, config.seed, epoch)
        started = time.perf_counter()
        with stage("train epoch", images=len(train_names)):
            train_stats = train_one_epoch(network, train_loader, criterion, optimizer, scaler, config, device,
                                          generator, epoch, show_progress=ddp.is_main)
        if ddp.enabled:  # mean training loss over ranks
            loss_tensor = torch.tensor([train_stats["train_loss"]], device=device)
            dist.all_reduce(loss_tensor)
            train_stats["train_loss"] = loss_tensor.item() / ddp.world_size
            train_stats["train_images_per_second"] *= ddp.world_size
        with stage("validate", images=len(val_names)):
            val = evaluate(model, val_loader, val_criterion, config, device) if ddp.is_main else None
        val_loss, val_mean = _broadcast((val["val_loss"], float(np.nanmean(val["auroc"]))) if val else None, ddp)
        lr = optimizer.param_groups[0]["lr"]
        if config.scheduler == "plateau":
            scheduler.step(val_loss)
        else:
            scheduler.step()
        improved = val_mean > best_auroc
        if improved:
            best_auroc, best_epoch, stale_epochs = val_mean, epoch, 0
        else:
            stale_epochs += 1
        row = {"epoch": epoch, **train_stats, "val_loss": val_loss, "val_auroc_mean": val_mean, "lr": lr,
               "epoch_seconds": time.perf_counter() - started}
        if val is not None:
            row.update({f"val_auroc_{f}": float(a) for f, a in zip(FINDINGS, val["auroc"])})
        history.append(row)
        rng_states = _gather_rng_states(ddp)
        if ddp.is_main:
            with stage("checkpoint"):
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                    "rng": rng_states, "best_val_auroc_mean": best_auroc, "best_epoch": best_epoch,
                    "stale_epochs": stale_epochs, "history": history, "config": config.to_dict(),
                    "label_order": list(FINDINGS), "cache_fingerprint": cache.fingerprint,
                }
                if improved:
                    run_folder.save_checkpoint(run_dir / run_folder.BEST_CHECKPOINT, state)
                    _write_validation_outputs(run_dir, metadata, val_mask, val)
                run_folder.save_checkpoint(last_path, state)  # written last: it marks the epoch as done
                run_folder.write_history(run_dir, history)
                print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
                      f"val AUROC {val_mean:.4f}{' (best)' if improved else ''}, {row['train_images_per_second']:.0f} img/s",
                      flush=True)
        if ddp.enabled:
            dist.barrier()
    if ddp.enabled:
        dist.destroy_process_group()
    return TrainResult(run_dir=run_dir, best_epoch=best_epoch, best_val_auroc_mean=best_auroc,
                       epochs_run=len(history))


# Settings that may differ when a run is resumed (they do not change what is learned).
_RESUMABLE_CHANGES = {"num_workers", "epochs", "early_stopping_patience", "device", "runs_dir", "cache_dir", "compile"}


def _check_same_config(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {config.run_dir}: settings changed ({details}); use a new run name")


def describe_training_data(config: TrainConfig, dataset: NIHDataset | None = None) -> pd.DataFrame:
    """Per finding: positives in train and val, train prevalence, and the pos_weight it implies."""
    dataset = dataset or load_training_dataset(config)
    side = dataset.split.reindex(dataset.metadata["image"]).to_numpy()
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
    dataset = dataset or load_training_dataset(config)
    cache = open_image_cache(dataset, config)
    train_names = dataset.split.index[dataset.split == "train"]
    names = train_names[train_names.isin(cache.usable_names)][:count].tolist()
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(names)]))[:, None]
    generator = torch.Generator().manual_seed(config.seed)
    images = prepare_batch(pixels, torch.device("cpu"), config.input_size, False, config.augment, generator)
    return images * GRAY_STD_FOR_DISPLAY + GRAY_MEAN_FOR_DISPLAY, names


def _reshuffle(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """The epoch's shuffle depends only on (seed, epoch), so a resumed run sees the same order."""
    sampler = loader.sampler
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed * 7919 + epoch)


def _gather_rng_states(ddp: Distributed) -> Any:
    """Every rank's RNG state, so a resumed multi-process run restores each one."""
    state = _rng_state()
    if not ddp.enabled:
        return state
    gathered: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _write_validation_outputs(run_dir: Path, metadata: Any, val_mask: np.ndarray, val: dict[str, Any]) -> None:
    """Validation predictions of the best epoch, and the thresholds chosen on them."""
    rows = metadata[val_mask]
    run_folder.write_predictions(run_dir / run_folder.predictions_name("val"), rows["image"].tolist(),
                                 rows["patient_id"].tolist(), val["probabilities"], val["labels"])
    thresholds = {
        method: {f: (None if np.isnan(t) else float(t)) for f, t in
                 zip(FINDINGS, choose_thresholds(val["labels"], val["probabilities"], method))}  # type: ignore[arg-type]
        for method in METHODS
    }
    run_folder.write_json(run_dir / run_folder.THRESHOLDS_NAME, thresholds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a profile name in configs/train/ or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set epochs=5 --set augment.hflip_probability=0")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    args = parser.parse_args(argv)
    config = load_train_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best epoch {result.best_epoch}: mean val AUROC {result.best_val_auroc_mean:.4f} -> {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

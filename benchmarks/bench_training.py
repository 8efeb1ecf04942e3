"""Where training time goes: decoding PNGs every epoch versus the uint8 cache, and the real epoch loop.

    python benchmarks/bench_training.py                      # CPU, small settings (what `make bench` runs)
    python benchmarks/bench_training.py --preset gpu         # 224 px, bf16, channels_last, eager then compiled

Measured in one run, on one machine, over 1024 px phantom PNGs in the NIH layout
(``cxrutils.demo.roots``: a rehearsal root at 1024 px, built once into data/bench/):

  (a) img/s of a decode-every-epoch loader: PIL decode, resize, normalise, the way the
      recipe notebooks do it (torchvision transforms in a Dataset);
  (b) img/s of the cache loader (cxrutils.data.cache) with the same worker count, up to
      the same normalised float batch;
  (c) img/s of the real ``train_one_epoch`` (augmentation, step, bookkeeping) fed from
      batches already on the device: the compute bound;
  (d) img/s of the same ``train_one_epoch`` fed by the cache loader, ``drop_last``;
  the tail: validation over the validation split plus the epoch's checkpoint, written as
  training writes it (``train._save_epoch`` for an improved epoch: one checkpoint, the
  last one a link to it, the validation predictions and thresholds), as a share of the
  epoch it ends (what idles the GPU between epochs);
  each of (c), (d) and the tail eager, and compiled with ``--compile`` (or both with ``--both``).

As training does, a GPU runs with ``cudnn.benchmark`` on; every timing ends with a
synchronisation (``train_one_epoch`` reads its clock after the epoch's loss, which waits
for the device). Each figure is the median of ``repeats`` epochs after warm-up epochs
(the cuDNN search, the compilation, the loader's workers), with more repeats on a GPU,
whose epochs here last about a second.

It prints the figures, a/b and d/c, and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cxrutils.data.images import read_image
from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.demo.roots import RehearsalSpec, ensure_rehearsal_dataset
from cxrutils.engine.data_adapters import open_training_cache, training_dataset
from cxrutils.engine.model import build_model
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.runtime import Distributed, describe_runtime, select_device
from cxrutils.engine.train import TrainingState, _save_epoch, train_one_epoch, training_data, validate
from cxrutils.labels import FINDINGS
from cxrutils.paths import DATA_DIR
from cxrutils.settings import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for a 2-core CPU in a few minutes.
    "cpu": {"fraction": 0.005, "cache_size": 96, "input_size": 64, "batch_size": 16, "workers": 1, "amp": False,
            "channels_last": False, "repeats": 3, "fed_warmup": False},
    # The real-data settings on one GPU: about 2,600 training films, 224 px from a 256 px cache. An epoch is about
    # a second there: 7 repeats, after a warm-up epoch on each feed, make the median a steady state's.
    "gpu": {"fraction": 0.035, "cache_size": 256, "input_size": 224, "batch_size": 128, "workers": 8, "amp": True,
            "channels_last": True, "repeats": 7, "fed_warmup": True},
}


class DecodeEveryEpoch(Dataset):
    """The recipe notebooks' loader: open the 1024 px PNG, resize, crop, normalise, every time."""

    def __init__(self, paths: list[str], input_size: int, cache_size: int) -> None:
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(cache_size),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize([GRAY_MEAN], [GRAY_STD]),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(read_image(self.paths[i]))
        return self.transform(image), torch.zeros(len(FINDINGS))


class InMemoryBatches:
    """Batches already on the device, as a loader: what ``train_one_epoch`` sees with no data path at all."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    _synchronize(device)
    started = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - started


def _images_per_second(run: Callable[[], int], device: torch.device, min_seconds: float = 1.0) -> float:
    """Repeat ``run`` (which returns how many images it processed) for at least ``min_seconds``."""
    images, started = 0, time.perf_counter()
    while True:
        images += run()
        _synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return images / elapsed


def bench_root(settings: dict[str, Any]) -> Path:
    """A rehearsal root of 1024 px phantom PNGs (the size and kind of the real files), built once."""
    fraction = settings["fraction"]
    return ensure_rehearsal_dataset(DATA_DIR / "bench" / f"rehearsal_1024_{fraction:g}",
                                    RehearsalSpec(fraction=fraction, image_size=1024, variants=2))


def loader_rates(config: TrainConfig, paths: list[str], cache_loader: DataLoader, device: torch.device) -> dict:
    """(a) and (b): a decode-every-epoch loader and the cache loader, to the same normalised batch."""
    decode_loader = DataLoader(DecodeEveryEpoch(paths, config.input_size, config.cache_size),
                               batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                               persistent_workers=config.num_workers > 0)

    def decode_epoch() -> int:
        count = 0
        for images, _ in decode_loader:
            images.to(device, non_blocking=True)
            count += images.shape[0]
        return count

    def cache_epoch() -> int:
        count = 0
        for pixels, _ in cache_loader:
            prepare_batch(pixels, device, config.input_size, config.channels_last)
            count += pixels.shape[0]
        return count

    decode_epoch(), cache_epoch()  # start the workers and warm the page cache for both
    return {"a_decode_loader": _images_per_second(decode_epoch, device, min_seconds=3.0),
            "b_cache_loader": _images_per_second(cache_epoch, device, min_seconds=3.0)}


def epoch_rates(config: TrainConfig, data: Any, device: torch.device, repeats: int,
                fed_warmup: bool = False) -> dict[str, float]:
    """(c), (d) and the tail for one setting of ``config.compile``, each the median of ``repeats`` epochs.

    ``fed_warmup``: a loader-fed epoch before the timed ones too (its workers start, the page cache fills).
    """
    torch.manual_seed(0)
    model = build_model("none").to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = TrainingState.create(config, model, device)
    network: nn.Module = torch.compile(model) if config.compile else model
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device=device).manual_seed(0)
    on_device = InMemoryBatches([(pixels.to(device), targets.to(device))
                                 for pixels, targets in data.train_loader])
    full_batches = len(data.train_loader)

    def epoch(loader: Any) -> float:
        stats = train_one_epoch(network, loader, criterion, state.optimizer, state.scaler, config, device, generator,
                                epoch=1, show_progress=False)
        return stats["train_images_per_second"]

    epoch(on_device)  # warm-up: cuDNN's algorithm search, and the compilation
    if fed_warmup:
        epoch(data.train_loader)
    in_memory, fed, tails, epoch_seconds = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):  # alternated, so drift in the machine's speed does not land on one of them
            in_memory.append(epoch(on_device))
            started = time.perf_counter()
            fed.append(epoch(data.train_loader))
            _synchronize(device)
            epoch_seconds.append(time.perf_counter() - started)

            def tail() -> None:
                val = validate(model, data.val_loader, criterion, config, device, Distributed())
                # An improved epoch, as training ends it: one checkpoint written, the last one a link to it.
                _save_epoch(Path(folder), state, config, [{}], "bench", True, data.val_rows, val)

            tails.append(_timed(tail, device))
    tail_seconds, fed_seconds = float(np.median(tails)), float(np.median(epoch_seconds))
    return {
        "c_epoch_in_memory": float(np.median(in_memory)),
        "d_epoch_cache_loader": float(np.median(fed)),
        "d_over_c": float(np.median(fed) / np.median(in_memory)),
        "epoch_seconds": fed_seconds,
        "tail_seconds": tail_seconds,
        "tail_share": tail_seconds / (fed_seconds + tail_seconds),
        "train_films": full_batches * config.batch_size,
        "val_films": len(data.val_names),
    }


def run_benchmark(settings: dict[str, Any]) -> dict[str, Any]:
    device = select_device(settings["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training sets it: fixed input size, the fastest convolutions
    root = bench_root(settings)
    config = TrainConfig(name="bench", data_root=str(root), cache_dir=str(DATA_DIR / "bench" / f"cache_{root.name}_"
                         f"{settings['cache_size']}"), cache_size=settings["cache_size"],
                         input_size=settings["input_size"], weights="none", batch_size=settings["batch_size"],
                         num_workers=settings["workers"], amp=settings["amp"], channels_last=settings["channels_last"],
                         device=str(device))
    dataset = training_dataset(config)
    cache = open_training_cache(config, dataset)
    data = training_data(config, dataset, cache, Distributed())
    print(f"{len(dataset.metadata):,} PNGs of 1024 px in {root}; "
          f"{describe_runtime(device, config.amp, config.channels_last, Distributed())}; "
          f"{config.num_workers} loader worker(s); batch {config.batch_size}; input {config.input_size} px from a "
          f"{config.cache_size} px cache; {len(data.train_loader)} full training batches (drop_last)", flush=True)
    results: dict[str, Any] = loader_rates(config, dataset.index.paths.tolist(), data.train_loader, device)
    print(f"(a) decode-every-epoch loader: {results['a_decode_loader']:9.1f} img/s", flush=True)
    print(f"(b) cache loader:              {results['b_cache_loader']:9.1f} img/s", flush=True)
    results["a_over_b"] = results["a_decode_loader"] / results["b_cache_loader"]
    print(f"a/b = {results['a_over_b']:.4f}  (the cache loader is {1 / results['a_over_b']:.0f}x the decode loader "
          f"with {max(config.num_workers, 1)} worker(s))", flush=True)
    for compiled in settings["compile"]:
        config.compile = compiled
        key = "compiled" if compiled else "eager"
        figures = epoch_rates(config, data, device, settings["repeats"], settings.get("fed_warmup", False))
        results[key] = figures
        print(f"[{key}] (c) epoch in memory {figures['c_epoch_in_memory']:9.1f} img/s; (d) epoch fed by the cache "
              f"loader {figures['d_epoch_cache_loader']:9.1f} img/s; d/c = {figures['d_over_c']:.3f}; tail "
              f"(validation of {figures['val_films']} films + the checkpoint) {figures['tail_seconds']:.1f} s = "
              f"{figures['tail_share']:.1%} of the epoch", flush=True)
    results["settings"] = {**settings, "n_images": len(dataset.metadata), "device": str(device),
                           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
                           platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "date": dt.date.today().isoformat()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="the training epochs compiled (default: eager)")
    parser.add_argument("--both", action="store_true", help="the training epochs eager, then compiled")
    for key in ("cache_size", "input_size", "batch_size", "workers", "repeats"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"override the preset's {key}")
    parser.add_argument("--fraction", type=float, help="override the preset's share of the NIH rows")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    compiled = [False, True] if args.both else [args.compile]
    settings = dict(PRESETS[args.preset], device=args.device, compile=compiled, preset=args.preset)
    for key in ("cache_size", "input_size", "batch_size", "workers", "repeats", "fraction"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    results = run_benchmark(settings)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where training time goes: decoding PNGs every epoch versus the uint8 cache, and the training step.

    python benchmarks/bench_training.py                 # CPU, small settings (what `make bench` runs)
    python benchmarks/bench_training.py --preset gpu    # 224 px, bf16, channels_last; add --compile

Measured in one run, on one machine, over 1024 px phantom PNGs in the NIH layout
(rendered once into data/bench/; the files are the size and kind of the real ones):

  (a) img/s of a decode-every-epoch loader: PIL decode, resize, normalise, the way the
      recipe notebooks do it (torchvision transforms in a Dataset);
  (b) img/s of the cache loader (cxrutils.data.cache) with the same worker count, up to
      the same normalised float batch;
  (c) img/s of the training step on a batch already in memory (the compute bound);
  (d) img/s of the same step fed by the cache loader, with batched augmentation;
  inference img/s (eval mode, no grad).

It prints the figures, a/b and d/c, and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cxrutils.data.cache import build_cache
from cxrutils.data.dataset import load_dataset
from cxrutils.data.images import read_image
from cxrutils.demo.roots import DemoSpec, ensure_demo_dataset
from cxrutils.engine.loader import CachedImageDataset, make_loader
from cxrutils.engine.model import GRAY_MEAN, GRAY_STD, build_model
from cxrutils.engine.runtime import autocast_dtype, prepare_batch, select_device
from cxrutils.engine.train import training_step
from cxrutils.labels import FINDINGS
from cxrutils.paths import DATA_DIR
from cxrutils.settings import AugmentConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for a 2-core CPU in a few minutes.
    "cpu": {"patients": 24, "cache_size": 128, "input_size": 96, "batch_size": 16, "workers": 1, "steps": 6,
            "repeats": 3, "amp": False, "channels_last": False},
    # The real-data settings on one GPU.
    "gpu": {"patients": 150, "cache_size": 256, "input_size": 224, "batch_size": 128, "workers": 8, "steps": 30,
            "repeats": 3, "amp": True, "channels_last": True},
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(run: Callable[[], int], device: torch.device, min_seconds: float = 1.0) -> float:
    """Repeat ``run`` (which returns how many images it processed) for at least ``min_seconds``."""
    images, started = 0, time.perf_counter()
    while True:
        images += run()
        _synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return images / elapsed


def _cycle(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def run_benchmark(settings: dict[str, Any]) -> dict[str, Any]:
    device = select_device(settings["device"])
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    root = ensure_demo_dataset(
        DATA_DIR / "bench" / f"phantoms_1024_{settings['patients']}",
        DemoSpec(n_patients=settings["patients"], image_size=1024, seed=0, min_images_per_finding=0,
                 max_images_per_patient=2),
    )
    dataset = load_dataset(root)
    paths = dataset.index.paths
    names = paths.index.tolist()
    labels = dataset.metadata.set_index("image").loc[names, list(FINDINGS)].to_numpy(dtype="float32")
    cache = build_cache(paths, DATA_DIR / "bench" / f"cache_{settings['patients']}_{settings['cache_size']}",
                        size=settings["cache_size"])
    workers, batch_size, input_size = settings["workers"], settings["batch_size"], settings["input_size"]
    channels_last, amp_dtype = settings["channels_last"], autocast_dtype(device, settings["amp"])
    print(f"{len(names)} PNGs of 1024 px in {root}; device {device}; {workers} loader worker(s); "
          f"batch {batch_size}; input {input_size} px from a {settings['cache_size']} px cache; "
          f"autocast {amp_dtype}; channels_last {channels_last}; compile {settings['compile']}", flush=True)

    decode_loader = DataLoader(DecodeEveryEpoch(paths.tolist(), input_size, settings["cache_size"]),
                               batch_size=batch_size, shuffle=True, num_workers=workers,
                               persistent_workers=workers > 0)
    cached = CachedImageDataset(cache, names, labels)
    cache_loader = make_loader(cached, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers)

    def decode_epoch() -> int:
        count = 0
        for images, _ in decode_loader:
            images.to(device, non_blocking=True)
            count += images.shape[0]
        return count

    def cache_epoch() -> int:
        count = 0
        for pixels, _ in cache_loader:
            prepare_batch(pixels, device, input_size, channels_last)
            count += pixels.shape[0]
        return count

    decode_epoch(), cache_epoch()  # start the workers and warm the page cache for both
    results: dict[str, Any] = {}
    results["a_decode_loader"] = _images_per_second(decode_epoch, device, min_seconds=3.0)
    print(f"(a) decode-every-epoch loader: {results['a_decode_loader']:9.1f} img/s", flush=True)
    results["b_cache_loader"] = _images_per_second(cache_epoch, device, min_seconds=3.0)
    print(f"(b) cache loader:              {results['b_cache_loader']:9.1f} img/s", flush=True)

    model: nn.Module = build_model("none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if settings["compile"] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = nn.BCEWithLogitsLoss()
    steps = settings["steps"]
    pixels, targets = next(iter(cache_loader))
    memory_images = prepare_batch(pixels, device, input_size, channels_last)
    memory_targets = targets.to(device)
    model.train()
    for _ in range(2):  # warm-up (and compilation)
        training_step(network, memory_images, memory_targets, criterion, optimizer, scaler, amp_dtype)

    def memory_steps() -> int:
        for _ in range(steps):
            training_step(network, memory_images, memory_targets, criterion, optimizer, scaler, amp_dtype)
        return steps * memory_images.shape[0]

    augment = AugmentConfig()
    generator = torch.Generator(device=device).manual_seed(0)
    batches = _cycle(cache_loader)

    def loader_steps() -> int:
        count = 0
        for pixels, targets in itertools.islice(batches, steps):
            images = prepare_batch(pixels, device, input_size, channels_last, augment, generator)
            training_step(network, images, targets.to(device, non_blocking=True), criterion, optimizer, scaler,
                          amp_dtype)
            count += pixels.shape[0]
        return count

    loader_steps()  # warm the loader's worker and the augmentation kernels
    # (c) and (d) alternate and each reports its median, so drift in the machine's speed
    # (other load, frequency scaling) does not land on one of them only.
    memory_rates, loader_rates = [], []
    for _ in range(settings["repeats"]):
        memory_rates.append(_images_per_second(memory_steps, device, min_seconds=2.0))
        loader_rates.append(_images_per_second(loader_steps, device, min_seconds=2.0))
    results["c_step_in_memory"] = float(np.median(memory_rates))
    print(f"(c) training step, in memory:  {results['c_step_in_memory']:9.1f} img/s", flush=True)
    results["d_step_cache_augment"] = float(np.median(loader_rates))
    print(f"(d) step fed by cache + aug:   {results['d_step_cache_augment']:9.1f} img/s", flush=True)

    model.eval()

    @torch.no_grad()
    def inference() -> int:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            for _ in range(steps):
                network(memory_images)
        return steps * memory_images.shape[0]

    inference()
    results["inference"] = _images_per_second(inference, device)
    print(f"inference:                     {results['inference']:9.1f} img/s", flush=True)
    results["a_over_b"] = results["a_decode_loader"] / results["b_cache_loader"]
    results["d_over_c"] = results["d_step_cache_augment"] / results["c_step_in_memory"]
    per_worker = max(workers, 1)
    print(f"a/b = {results['a_over_b']:.4f}  (the cache loader is {1 / results['a_over_b']:.0f}x the decode loader "
          f"with {per_worker} worker(s))", flush=True)
    print(f"d/c = {results['d_over_c']:.3f}  (1.0: the data path costs the training step nothing)", flush=True)
    results["settings"] = {**settings, "n_images": len(names), "device": str(device),
                           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
                           platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "date": dt.date.today().isoformat()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    for key in ("patients", "cache_size", "input_size", "batch_size", "workers", "steps", "repeats"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"override the preset's {key}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    settings = dict(PRESETS[args.preset], device=args.device, compile=args.compile, preset=args.preset)
    for key in ("patients", "cache_size", "input_size", "batch_size", "workers", "steps", "repeats"):
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

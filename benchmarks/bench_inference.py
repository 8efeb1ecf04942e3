"""How fast ``cxrutils infer`` scores new films, and what decoding a full-size 16-bit DICOM costs.

    python benchmarks/bench_inference.py                     # CPU, the nih input size (224 px from 256 px)
    python benchmarks/bench_inference.py --device cuda       # the same on a GPU

Measured in one run, on one machine, with a run folder of the ``nih`` profile's shape
(224 px input, 256 px cache; batches of 16, ``--batch-size``) holding a randomly initialised DenseNet121 (the
speed of a network does not depend on its weights) and thresholds that call exactly one
finding per film, so each film costs one Grad-CAM, as a trained model calling one
finding would:

  (a) films/s of ``infer_films`` on 1024 px phantom PNGs (NIH's size), scoring only,
      with 0 (in-process), 1 and 2 loader workers, and with one Grad-CAM overlay per film;
  (b) the whole command (``cxrutils infer``: headers, scoring, Grad-CAM, the
      pictures, the CSV/JSON and the HTML page) on the same folder;
  (c) the time to decode one 2560 x 2048, 16-bit DICOM (``read_image``: decode, window,
      uint8) stored uncompressed, as JPEG 2000 lossless and as RLE lossless, its header
      alone, and a 1024 px PNG for comparison;
  (d) films/s of ``infer_films`` on a folder of those JPEG 2000 DICOMs, 0 and 2 workers
      (batches of 4, ``--dicom-batch-size``).

It prints the figures and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from cxrutils.cli import main as cli_main
from cxrutils.data.dicom import read_dicom_header, write_dicom
from cxrutils.data.images import read_image
from cxrutils.demo.phantoms import render_phantom
from cxrutils.engine import run_folder
from cxrutils.engine.model import ChestXrayDenseNet
from cxrutils.inference.scoring import infer_films, load_inference_model
from cxrutils.labels import FINDINGS
from cxrutils.settings import load_train_config

DICOM_SHAPE = (2560, 2048)  # rows, columns: a 35 x 43 cm detector at about 0.17 mm


def fake_run(folder: Path) -> Path:
    """A run folder of the nih profile's shape: random weights, one finding (Effusion) called on every film."""
    config = load_train_config("nih", {"data_root": str(folder / "no_data"), "runs_dir": str(folder), "name": "bench",
                                       "weights": "none"})
    run_dir = config.run_dir
    run_dir.mkdir(parents=True)
    model = ChestXrayDenseNet()
    run_folder.save_checkpoint(run_dir / run_folder.BEST_CHECKPOINT, {
        "model": model.state_dict(), "config": config.to_dict(), "label_order": list(FINDINGS), "epoch": 0})
    run_folder.write_config(run_dir, {**config.to_dict(), "synthetic": True})
    # A threshold of 0 calls Effusion on every film; above 1, nothing else is ever called.
    chosen = {finding: 0.0 if finding == "Effusion" else 1.5 for finding in FINDINGS}
    run_folder.write_thresholds(run_dir, {"youden": chosen, "max_f1": chosen})
    return run_dir


def phantom(size: int, seed: int) -> np.ndarray:
    return render_phantom(["Effusion"], rng=np.random.default_rng(seed), size=size).pixels


def full_size_values(film: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 1024 px phantom as a detector's 16-bit values: enlarged to ``DICOM_SHAPE``, with quantum-like noise.

    Phantoms render at most 1024 px; the noise gives the values the entropy of a real
    film, so the compressed files are not unrealistically small or quick to decode.
    """
    rows, columns = DICOM_SHAPE
    enlarged = np.asarray(Image.fromarray(film).resize((rows, rows), Image.Resampling.BICUBIC), dtype=np.float64)
    values = enlarged[:, (rows - columns) // 2 : (rows + columns) // 2] * 257
    values += np.random.default_rng(seed).normal(0, 150, size=values.shape)
    return np.rint(values).clip(0, 65535).astype(np.uint16)


def median_seconds(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_benchmark(n_films: int, n_dicoms: int, device: str, repeats: int, batch_size: int,
                  dicom_batch_size: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    run_dir = fake_run(work / "runs")
    pngs = work / "pngs"
    pngs.mkdir()
    base = phantom(1024, 0)
    for k in range(n_films):  # one rendering, shifted: rendering is not what is measured
        Image.fromarray(np.roll(base, 8 * k, axis=1)).save(pngs / f"{k:08d}_000.png")
    model = load_inference_model(run_dir, device=device)
    figures: dict[str, Any] = {}

    def films_per_second(folder: Path, workers: int, gradcam: bool, batch: int = batch_size) -> float:
        def run() -> Any:
            return infer_films(model, [folder], batch_size=batch, num_workers=workers, with_gradcam=gradcam,
                               keep_films=False, show_progress=False)

        run()  # warm-up: the allocator and oneDNN's kernels (each call starts its own loader workers)
        result = run()
        return result.n_scored / result.seconds["total"]

    for workers in (0, 1, 2):
        figures[f"(a) PNG 1024 px, scoring only, {workers} workers"] = films_per_second(pngs, workers, False)
    figures["(a) PNG 1024 px, scoring + 1 Grad-CAM per film, 2 workers"] = films_per_second(pngs, 2, True)
    started = time.perf_counter()
    cli_main(["infer", "--run", str(run_dir), str(pngs), "--out", str(work / "out"), "--workers", "2", "--device", device,
                "--batch-size", str(batch_size)])
    figures["(b) cxrutils infer, whole command, 2 workers"] = n_films / (time.perf_counter() - started)

    big = full_size_values(phantom(1024, 1))
    decode: dict[str, float] = {}
    for name, syntax in (("uncompressed", ExplicitVRLittleEndian), ("JPEG 2000 lossless", JPEG2000Lossless),
                         ("RLE lossless", RLELossless)):
        path = write_dicom(work / f"{name.replace(' ', '_')}.dcm", big, bits_stored=16,
                           window=(32768.0, 65536.0, "LINEAR"), transfer_syntax=syntax)
        decode[f"(c) decode {DICOM_SHAPE[0]} x {DICOM_SHAPE[1]} 16-bit DICOM, {name} "
               f"({path.stat().st_size / 2**20:.1f} MB), s"] = median_seconds(lambda p=path: read_image(p), repeats)
    decode["(c) its header alone (read_dicom_header), s"] = median_seconds(
        lambda: read_dicom_header(work / "uncompressed.dcm"), repeats)
    decode["(c) decode a 1024 px PNG, s"] = median_seconds(lambda: read_image(pngs / "00000000_000.png"), repeats)
    figures.update(decode)

    dicoms = work / "dicoms"
    dicoms.mkdir()
    source = work / "JPEG_2000_lossless.dcm"
    for k in range(n_dicoms):
        (dicoms / f"film{k:03d}.dcm").write_bytes(source.read_bytes())
    for workers in (0, 2):
        figures[f"(d) 16-bit JPEG 2000 DICOM {DICOM_SHAPE[0]} x {DICOM_SHAPE[1]}, scoring only, {workers} workers"] = (
            films_per_second(dicoms, workers, False, dicom_batch_size))
    return {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus_usable": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "torch": torch.__version__, "pydicom": pydicom.__version__,
                    "device": str(model.device), "torch_threads": torch.get_num_threads()},
        "settings": {"input_size": model.config.input_size, "cache_size": model.config.cache_size,
                     "batch_size": batch_size, "dicom_batch_size": dicom_batch_size, "png_films": n_films,
                     "dicom_films": n_dicoms},
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=48, help="1024 px PNG films scored per measurement")
    parser.add_argument("--dicoms", type=int, default=16, help="2560 x 2048 JPEG 2000 DICOMs scored per measurement")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="films per batch: several batches per folder, so loader workers can decode ahead")
    parser.add_argument("--dicom-batch-size", type=int, default=4,
                        help="DICOMs per batch in (d): a second per decode, so workers need several batches to overlap")
    parser.add_argument("--repeats", type=int, default=3, help="decode timings: the median of this many")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    results = run_benchmark(args.films, args.dicoms, args.device, args.repeats, args.batch_size,
                            args.dicom_batch_size)
    for name, value in results["figures"].items():
        unit = "" if name.endswith(", s") else " films/s"
        print(f"{name:<90} {value:8.3f}{unit}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

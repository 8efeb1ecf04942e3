"""How long notebook 03's Grad-CAM localization takes: the box heatmaps of a run's test films, as evaluated.

    python benchmarks/bench_localization.py --run runs/demo --data-root data/demo
    python benchmarks/bench_localization.py --run runs/demo --data-root data/demo --code /tmp/cxrutils_2a4aed4

The evaluation (``evaluation.evaluate_run``, which notebook 03 calls) maps every box on a
scored test film onto its film and into the model frame (``localization.place_boxes``), then
takes Grad-CAM of each box's film and finding (the heatmaps) before scoring them; the heatmaps
are nearly all of its time. This times those two parts apart, after the run's model and image
cache are loaded (not timed), and prints and writes (``--out``) the seconds, the boxes, the
films and (film, finding) maps they need, films and boxes a second, and the process's peak
resident memory.

``--code PATH`` puts another checkout of the project first on ``sys.path`` before cxrutils is
imported (so does ``PYTHONPATH=PATH``), so one sitting can time the code before and after a
change on the same machine and data. A checkout that predates ``evaluation.run_box_heatmaps``
(2a4aed4, before per-film Grad-CAM, among them) is called as its own ``localize`` called it:
``localization.box_heatmaps`` with the training batch as its batch and the stage from
``model.dense_block`` (later ``model.stage``). ``--maps FILE.npy`` saves the heatmaps and
``--compare FILE.npy`` reports the largest difference from maps saved so, box by box: the
same maps within a tolerance, whichever code made them.

``--max-boxes N`` times the first N boxes only (a quick check that it runs). Paths are made
absolute before another checkout is imported, since its project root is elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def code_commit(folder: Path) -> str | None:
    """The checkout's commit, or None where it is not a git work tree (an exported archive)."""
    try:
        answer = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None


def gradcam_layer_name(run: Any, requested: str) -> str:
    """The stage the evaluation reads: newer code knows the run's architecture, 2a4aed4's only DenseNet121's."""
    import inspect

    from cxrutils.engine.gradcam import gradcam_layer_for

    if "arch" in inspect.signature(gradcam_layer_for).parameters:
        return gradcam_layer_for(run.config.input_size, requested, run.config.arch)
    return gradcam_layer_for(run.config.input_size, requested)


def test_boxes(run: Any) -> Any:
    """The boxes the evaluation scores: those on the test films in the image cache (``predict_split``'s films)."""
    metadata = run.dataset.metadata
    cache = run.image_cache()
    scored = metadata.loc[(metadata["split"] == "test") & metadata["image"].isin(cache.usable_names), "image"]
    boxes = run.dataset.boxes
    return boxes[boxes["image"].isin(set(scored))].reset_index(drop=True)


def run_model(run: Any) -> Any:
    """The run's best model, as ``Run.model`` loads it; for older code, also from a checkpoint newer code wrote.

    2a4aed4's ``load_run_model`` refuses a checkpoint whose settings it does not know (settings added
    since, none of which changes DenseNet121's layers): the network is then built as that code builds
    it, from the settings it knows (``read_run_config`` drops the others), and the weights load strictly.
    """
    from cxrutils.engine import run_folder
    from cxrutils.settings import SettingsError

    try:
        return run.model()
    except SettingsError:
        arch = run_folder.read_config(run.run_dir).get("arch", "densenet121")
        if arch != "densenet121":
            raise
        from cxrutils.engine.model import ChestXrayDenseNet
        from cxrutils.labels import FINDINGS

        checkpoint = run_folder.load_checkpoint(run.run_dir / run_folder.BEST_CHECKPOINT)
        model = ChestXrayDenseNet(num_classes=len(FINDINGS), head=run.config.head, lse_r=run.config.lse_r)
        model.load_state_dict(checkpoint["model"], strict=True)
        model.eval()
        run._model = (model, {})  # where Run.model keeps it: the evaluation's calls find it loaded
        return model


def evaluation_heatmaps(run: Any, mapped: Any, layer: str) -> tuple[Any, str]:
    """The heatmaps as the loaded code's evaluation computes them, and which call made them."""
    from cxrutils.engine.runtime import select_device
    from cxrutils.evaluate import evaluation, localization

    if hasattr(evaluation, "run_box_heatmaps"):
        return evaluation.run_box_heatmaps(run, mapped, layer), "evaluation.run_box_heatmaps"
    # Older code: what its localize passed to box_heatmaps (2a4aed4: a pass per chunk of boxes, a forward per box).
    model = run_model(run)
    stage = getattr(model, "stage", None) or model.dense_block
    maps = localization.box_heatmaps(model, run.image_cache(), mapped, run.config.input_size,
                                     device=select_device(run.config.device), batch_size=run.config.batch_size,
                                     layer=stage(layer))
    return maps, "localization.box_heatmaps(batch_size=config.batch_size), as localize called it"


def measure(run_dir: Path, data_root: Path | None, max_boxes: int | None = None,
            gradcam_layer: str = "auto") -> tuple[dict[str, Any], Any]:
    """The figures (module docstring) and the heatmaps, from the cxrutils that is imported."""
    import torch

    import cxrutils
    from cxrutils.engine import run_folder
    from cxrutils.evaluate import localization

    started = time.perf_counter()
    run = run_folder.open_run(run_dir, data_root=data_root)
    layer = gradcam_layer_name(run, gradcam_layer)
    boxes = test_boxes(run)
    if max_boxes is not None:
        boxes = boxes.head(max_boxes).reset_index(drop=True)
    if boxes.empty:
        raise ValueError(f"{run_dir}: no bounding box lies on a cached test film of {run.data_root}; nothing to time")
    run_model(run)  # loaded before the clock, as the evaluation has it loaded by then
    opened = time.perf_counter()
    mapped, outside = localization.place_boxes(boxes, run.dataset.index.paths, run.config.input_size)
    placed = time.perf_counter()
    rss_before = peak_rss_mb()
    heatmaps, api = evaluation_heatmaps(run, mapped, layer)
    finished = time.perf_counter()
    seconds = finished - placed
    films = int(mapped["image"].nunique())
    figures = {
        "seconds": seconds, "boxes": len(mapped), "films": films,
        "maps": int(mapped[["image", "finding"]].drop_duplicates().shape[0]), "boxes_outside_films": len(outside),
        "boxes_per_second": len(mapped) / seconds if seconds > 0 else None,
        "films_per_second": films / seconds if seconds > 0 else None,
        "place_boxes_seconds": placed - opened, "open_seconds": opened - started,
        "peak_rss_mb": peak_rss_mb(), "peak_rss_mb_before_heatmaps": rss_before,
        "gradcam_layer": layer, "input_size": run.config.input_size, "batch_size": run.config.batch_size,
        "heatmap_call": api, "max_boxes": max_boxes, "run": str(run_dir), "data_root": str(run.data_root),
        "synthetic": bool(run_folder.read_config(run_dir).get("synthetic")),
        "code": str(Path(cxrutils.__file__).resolve().parent.parent),
        "commit": code_commit(Path(cxrutils.__file__).resolve().parent.parent),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "date": dt.date.today().isoformat(),
    }
    return figures, heatmaps


def largest_difference(heatmaps: Any, saved: Path) -> float:
    """The largest absolute difference, box by box, from maps saved by ``--maps`` (the same boxes, in order)."""
    import numpy as np

    other = np.load(saved)
    if other.shape != heatmaps.shape:
        raise ValueError(f"{saved} holds maps of shape {other.shape}, these are {heatmaps.shape}: not the same boxes "
                         "(same run, data root and --max-boxes?)")
    return float(np.abs(other.astype(np.float64) - heatmaps.astype(np.float64)).max()) if heatmaps.size else 0.0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder (e.g. runs/demo)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="the run's data (default: the run's own data_root, e.g. data/demo)")
    parser.add_argument("--code", type=Path, default=None,
                        help="a checkout of the project to import cxrutils from (default: this one, or PYTHONPATH)")
    parser.add_argument("--max-boxes", type=int, default=None, help="time the first N boxes only")
    parser.add_argument("--gradcam-layer", default="auto", help="the stage Grad-CAM reads (default: auto)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--maps", type=Path, default=None, help="save the heatmaps here (.npy)")
    parser.add_argument("--compare", type=Path, default=None, help="maps saved by --maps to compare with")
    args = parser.parse_args(argv)
    for name in ("run", "data_root", "code", "out", "maps", "compare"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if args.max_boxes is not None and args.max_boxes < 1:
        parser.error(f"--max-boxes must be at least 1, got {args.max_boxes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.code is not None:
        if not (args.code / "cxrutils" / "__init__.py").is_file():
            raise SystemExit(f"--code {args.code}: no cxrutils/__init__.py there; give a checkout of the project")
        sys.path.insert(0, str(args.code))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(args.code), *filter(None, [os.environ.get("PYTHONPATH")])])
    import numpy as np

    figures, heatmaps = measure(args.run, args.data_root, args.max_boxes, args.gradcam_layer)
    if args.code is not None and not figures["code"] == str(args.code):
        raise SystemExit(f"cxrutils came from {figures['code']}, not from --code {args.code}")
    if args.compare is not None:
        figures["compared_with"] = str(args.compare)
        figures["largest_difference"] = largest_difference(heatmaps, args.compare)
    if args.maps is not None:
        args.maps.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.maps, np.asarray(heatmaps, dtype=np.float32))
        figures["maps_file"] = str(args.maps)
    kind = "SYNTHETIC (phantom films) " if figures["synthetic"] else ""
    print(f"{kind}Grad-CAM localization of {figures['run']}: {figures['boxes']:,} boxes on {figures['films']:,} films "
          f"({figures['maps']:,} film-finding maps) in {figures['seconds']:.1f} s = "
          f"{figures['boxes_per_second']:.1f} boxes/s, {figures['films_per_second']:.1f} films/s; placing the boxes "
          f"{figures['place_boxes_seconds']:.2f} s; peak RSS {figures['peak_rss_mb']:,.0f} MB; code "
          f"{figures['code']} ({(figures['commit'] or 'no git')[:10]}), {figures['heatmap_call']}; "
          f"{figures['torch_threads']} torch threads", flush=True)
    if "largest_difference" in figures:
        print(f"largest difference from {args.compare}: {figures['largest_difference']:.3g}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
        print(f"figures: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

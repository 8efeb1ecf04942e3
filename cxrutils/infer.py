"""``python -m cxrutils.infer --run runs/<name> PATH [PATH ...]``: a trained run on new films (PNG, JPEG, DICOM).

Writes into ``--out`` (default ``reports/inference/<run name>/``): ``inference.csv`` and
``inference.json`` (per file: the 14 probabilities, the calls at the run's validation
thresholds, size, format and header facts, or why it was refused), a picture of each
scored film and a Grad-CAM overlay per finding called positive, and ``inference.html``.
Computation: ``cxrutils.inference.infer_films``; drawing: ``cxrutils.report.inference_view``.
Relative paths are taken from the current directory. One run at a time writes into an
output folder (a second stops at once, naming the first); every finished film is on
disk as its batch ends, and a run that was stopped continues when started again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrutils.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_VARIABLE
from cxrutils.inference.reference import compare_with_training, training_reference
from cxrutils.inference.scoring import infer_films, load_inference_model
from cxrutils.paths import REPORTS_DIR
from cxrutils.report.inference_view import InferenceOutput
from cxrutils.stats.thresholds import METHODS
from cxrutils.text import printable


def _absolute(path: str) -> Path:
    return Path(path).expanduser().absolute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder written by training, e.g. runs/demo")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="films or folders of films (walked)")
    parser.add_argument("--out", default=None, help="output folder (default: reports/inference/<run name>/)")
    parser.add_argument("--threshold-method", default="youden", choices=METHODS,
                        help="which validation thresholds of the run's thresholds.json make the calls")
    parser.add_argument("--batch-size", type=int, default=None, help="films per batch (default: the run's)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes that decode films (0: this one)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda:0, ...")
    parser.add_argument("--no-overlays", action="store_true", help="skip Grad-CAM (faster on large folders)")
    parser.add_argument("--compare-training", action="store_true",
                        help="set each film beside the run's training films (needs the run's data)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help=f"refuse films whose header declares more pixels (default: ${MAX_PIXELS_VARIABLE}, "
                             f"else {DEFAULT_MAX_PIXELS:,})")
    args = parser.parse_args(argv)
    model = load_inference_model(_absolute(args.run), args.threshold_method, args.device)
    out = _absolute(args.out) if args.out else REPORTS_DIR / "inference" / model.run_dir.name
    output = InferenceOutput(out, with_overlays=not args.no_overlays)
    try:
        result = infer_films(model, [_absolute(path) for path in args.paths], batch_size=args.batch_size,
                             num_workers=args.workers, with_gradcam=not args.no_overlays, keep_films=False,
                             on_film=output.on_film, max_pixels=args.max_pixels, journal=output.journal)
        differences = None
        if args.compare_training:
            differences = compare_with_training(result.table, training_reference(model.run_dir))
    except BaseException:
        output.close()  # the journal keeps every finished film: the same command continues from there
        raise
    csv_path, _, page = output.finish(result, differences)
    synthetic = " (the model was trained on SYNTHETIC phantoms)" if result.synthetic else ""
    print(f"{result.headline}{synthetic}")
    for reason, count in result.summary()["refused_by_reason"].items():
        print(f"  refused {count}: {printable(reason)}")
    print(f"-> {printable(csv_path)}\n-> {printable(page)}")
    return 0 if result.n_scored else 1


if __name__ == "__main__":
    sys.exit(main())

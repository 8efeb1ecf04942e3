"""``python -m cxrutils.evaluate --run runs/<name>``: score a run's test split and write its ``metrics.json``.

The same computation notebook 03 shows (``cxrutils.evaluate.evaluate_run``), with the
same defaults, so both write the same file.
"""

from __future__ import annotations

import argparse
import sys

from cxrutils.engine.predict import SPLITS
from cxrutils.evaluate.evaluation import evaluate_run, write_metrics
from cxrutils.stats.thresholds import METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder written by training, e.g. runs/demo")
    parser.add_argument("--split", default="test", choices=SPLITS, help="the split to score (default: test)")
    parser.add_argument("--threshold-method", default="youden", choices=METHODS,
                        help="which validation thresholds of thresholds.json to apply")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient-bootstrap resamples per interval")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the resamples and the random heatmaps")
    parser.add_argument("--tta-hflip", action="store_true", help="also score each film mirrored and average")
    parser.add_argument("--gradcam-layer", default="auto",
                        help="denseblock1-4, or auto: the deepest block with at least a 4 x 4 grid")
    parser.add_argument("--gallery-per-kind", type=int, default=4, help="films per gallery row (TP, FP, FN)")
    parser.add_argument("--data-root", default=None, help="where the run's data is, if it moved since training")
    args = parser.parse_args(argv)
    result = evaluate_run(args.run, split=args.split, threshold_method=args.threshold_method,
                          n_bootstrap=args.n_bootstrap, bootstrap_seed=args.bootstrap_seed, tta_hflip=args.tta_hflip,
                          gradcam_layer=args.gradcam_layer, gallery_per_kind=args.gallery_per_kind,
                          data_root=args.data_root)
    path = write_metrics(result)
    synthetic = " (SYNTHETIC phantoms: says nothing about real films)" if result.synthetic else ""
    print(f"{result.headline}{synthetic} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cxrutils.compare --run runs/<name>``: compare a run with TorchXRayVision models, write ``comparison.json``.

The same computation notebook 04 shows (``cxrutils.compare.compare_run``). Models whose
weights file is missing are skipped, and the file says where to put it.
"""

from __future__ import annotations

import argparse
import sys

from cxrutils.compare.provenance import DEFAULT_MODELS
from cxrutils.compare.run import compare_run, write_comparison
from cxrutils.compare.txv import TXV_MODEL_NAMES
from cxrutils.stats.thresholds import METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder written by training, e.g. runs/demo")
    parser.add_argument("--model", dest="models", action="append", choices=TXV_MODEL_NAMES, default=[],
                        help=f"a TorchXRayVision model (repeatable; default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--weights-dir", default=None, help="the folder of the release files "
                        "(default: ~/.torchxrayvision/models_data)")
    parser.add_argument("--split", default="test", help="the split both models score (default: test)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient-bootstrap resamples per interval")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the resamples")
    parser.add_argument("--threshold-method", default="youden", choices=METHODS)
    parser.add_argument("--max-images", type=int, default=None, help="compare at most this many films per split "
                        "(a seeded sample of whole patients; for CPU runs)")
    parser.add_argument("--random-weights-for-testing", action="store_true",
                        help="TEST ONLY: random TorchXRayVision weights, labelled as such")
    parser.add_argument("--data-root", default=None, help="where the run's data is, if it moved since training")
    args = parser.parse_args(argv)
    result = compare_run(args.run, args.models or DEFAULT_MODELS, weights_dir=args.weights_dir, split=args.split,
                         n_bootstrap=args.n_bootstrap, bootstrap_seed=args.bootstrap_seed,
                         threshold_method=args.threshold_method, random_init=args.random_weights_for_testing,
                         max_images=args.max_images, data_root=args.data_root)
    path = write_comparison(result)
    print(f"{result.headline} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cxrutils.export --run runs/<name> --format onnx``: the best checkpoint as verified ONNX.

Writes ``<run>/model.onnx`` (or ``--out``) and ``model_onnx.json`` beside it, after
onnxruntime matched torch on real films (``cxrutils.inference.export``).
Relative paths are taken from the current directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrutils.inference.export import TOLERANCE, export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxrutils.export", description=__doc__.split("\n\n")[0],
        epilog=f"The file is kept only when onnxruntime's probabilities are within {TOLERANCE:g} of torch's.")
    parser.add_argument("--run", required=True, help="a run folder written by training, e.g. runs/demo")
    parser.add_argument("--format", required=True, choices=["onnx"], help="the export format (onnx)")
    parser.add_argument("--out", default=None, help="the file to write (default: <run>/model.onnx)")
    parser.add_argument("--films", nargs="+", default=None, metavar="PATH",
                        help="films or folders to verify on (default: films of the run's test split)")
    parser.add_argument("--max-films", type=int, default=8, help="at most this many verification films")
    parser.add_argument("--data-root", default=None, help="where the run's data is, if it moved since training")
    args = parser.parse_args(argv)
    result = export_onnx(Path(args.run).expanduser().absolute(),
                         out=Path(args.out).expanduser().absolute() if args.out else None,
                         films=[Path(p).expanduser().absolute() for p in args.films] if args.films else None,
                         max_films=args.max_films, data_root=args.data_root)
    print(f"exported {result.headline}")
    print(f"sha256 {result.sha256}; record {result.record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

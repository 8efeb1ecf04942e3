"""``python -m cxrutils.cache build --config nih --set data_root=/data/nih``: build a run's image cache up front.

Training builds the cache itself when it is missing, but a multi-GPU or multi-node job
should find it ready: ``torchrun`` starts every process at once, and on several machines
sharing a file system their builds would collide. Build it once here (any machine that
sees the data), then start the job with the same settings; it reuses the cache.
"""

from __future__ import annotations

import argparse
import sys

from cxrutils.data.cache import image_cache_dir, open_image_cache
from cxrutils.data.dataset import load_training_dataset
from cxrutils.settings import load_train_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrutils.cache", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="decode every listed film once into the run's cache")
    build.add_argument("--config", required=True, help="a training profile in configs/train/ or a YAML path")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a training setting, e.g. --set data_root=/data/nih --set cache_size=256")
    args = parser.parse_args(argv)
    config = load_train_config(args.config, args.overrides)
    print(f"image cache for {config.data_root} at {config.cache_size} px -> {image_cache_dir(config)}", flush=True)
    cache = open_image_cache(load_training_dataset(config), config)
    unusable = int((~cache.usable).sum())
    print(f"{len(cache):,} films cached in {cache.folder}" + (f"; {unusable:,} unreadable (bad_files.csv)"
                                                             if unusable else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One call from a root folder (or none) to everything the notebooks need.

``load_dataset`` ties the layout, metadata, split and box readers together and
reports, never hides, what does not match: images listed but missing, files
present but unlisted, and (on request) files that cannot be decoded. Every function
here takes its settings as arguments; ``cxrutils.engine.data_adapters`` reads them
from a run's ``TrainConfig``.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrutils.data import splits as split_lib
from cxrutils.data.bboxes import read_bbox_list
from cxrutils.data.images import full_integrity_problem, quick_integrity_problem
from cxrutils.data.layout import DatasetFiles, ImageIndex, index_images, locate_files
from cxrutils.data.metadata import SHIPPED_BBOX_NAME, read_metadata, shipped_data_file
from cxrutils.paths import resolve
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar

METADATA_ONLY = "metadata-only"
# Written by cxrutils.demo.roots into every phantom dataset it builds.
SYNTHETIC_MANIFEST_NAME = "PHANTOM_DATASET.json"

IntegrityMode = Literal["off", "quick", "full"]


@dataclass
class NIHDataset:
    """Metadata (with each film's ``split``), boxes and image index for one dataset root."""

    metadata: pd.DataFrame  # the tidy frame (cxrutils.data.metadata) and a "split" column: train/val/test
    split_kind: str  # "official" (from the root's lists), "random" (drawn by patient), or a RecordedSplit's kind
    boxes: pd.DataFrame  # empty when no box file was found
    index: ImageIndex | None  # None in metadata-only mode
    files: DatasetFiles | None
    description: str  # where the data came from, for reports
    synthetic: bool
    images_root: Path | None = None  # the folder the images were looked for in; None in metadata-only mode

    @property
    def metadata_only(self) -> bool:
        return self.index is None

    def images_in(self, split: str) -> pd.Series:
        """The image names of one split, in metadata order."""
        return self.metadata.loc[self.metadata["split"] == split, "image"]

    def image_path(self, image: str) -> Path:
        if self.index is None:
            raise FileNotFoundError("metadata-only mode has no images; set data_root to a dataset folder")
        if image not in self.index.paths.index:
            raise FileNotFoundError(f"image {image} is listed in the metadata but not found on disk")
        return Path(self.index.paths[image])


@dataclass(frozen=True)
class RecordedSplit:
    """A split drawn earlier (a run's split.csv), applied as it stands: nothing is drawn again."""

    sides: pd.Series  # index: image name, values: "train", "val" or "test"
    kind: str  # how it was drawn ("official", "random"; "run" where the record does not say): the split_kind


def is_synthetic(root: str | os.PathLike[str]) -> bool:
    """True for a phantom dataset built by ``cxrutils.demo.roots``."""
    manifest = Path(root) / SYNTHETIC_MANIFEST_NAME
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("synthetic"))


def load_dataset(
    data_root: str | os.PathLike[str] | None,
    *,
    images_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    split: RecordedSplit | None = None,
) -> NIHDataset:
    """Load a dataset root, or the metadata shipped in torchxrayvision.

    ``data_root`` is a folder in any NIH layout, or ``"metadata-only"``/None.
    ``images_dir`` points at images kept apart from the metadata (default: the root).
    Validation is carved from official train_val by patient (``val_fraction`` of its
    patients); without split lists, all three splits are drawn by patient. With
    ``split`` (a recorded split), no split is drawn: each film takes its recorded side,
    and a film the record does not list has none (NaN).
    """
    with stage("load dataset") as facts:
        dataset = _load(data_root, images_dir, val_fraction, test_fraction, seed, split)
        facts["images"] = len(dataset.metadata)
    return dataset


def _load(
    data_root: str | os.PathLike[str] | None,
    images_dir: str | os.PathLike[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    split: RecordedSplit | None,
) -> NIHDataset:
    if data_root is None or str(data_root) == METADATA_ONLY:
        return _load_metadata_only(val_fraction, test_fraction, seed, split)
    root = resolve(data_root)
    files = locate_files(root)
    if files.metadata_csv is None:
        metadata = read_metadata(None)
        metadata_note = "no metadata CSV under the root, so the v2020 metadata shipped in torchxrayvision"
    else:
        metadata = read_metadata(files.metadata_csv)
        metadata_note = files.metadata_csv.name
    if split is not None:
        kind = split.kind
        metadata["split"] = _recorded_sides(metadata, split)
    elif files.train_val_list and files.test_list:
        kind = "official"
        metadata["split"] = split_lib.assign_official(
            metadata,
            split_lib.read_split_list(files.train_val_list),
            split_lib.read_split_list(files.test_list),
            val_fraction=val_fraction,
            seed=seed,
        )
    else:
        kind = "random"
        metadata["split"] = split_lib.assign_random(metadata, val_fraction=val_fraction, test_fraction=test_fraction,
                                                    seed=seed)
    boxes = read_bbox_list(files.bbox_csv) if files.bbox_csv else _empty_boxes()
    images_root = resolve(images_dir) if images_dir else root
    index = index_images(images_root, metadata["image"])
    synthetic = is_synthetic(root)
    what = "SYNTHETIC phantom dataset" if synthetic else "dataset"
    return NIHDataset(
        metadata=metadata,
        split_kind=kind,
        boxes=boxes,
        index=index,
        files=files,
        description=f"{what} at {root} (metadata: {metadata_note})",
        synthetic=synthetic,
        images_root=images_root,
    )


def _recorded_sides(metadata: pd.DataFrame, split: RecordedSplit) -> np.ndarray:
    """Each film's recorded side, in metadata order (NaN where the record does not list the film)."""
    return split.sides.reindex(metadata["image"]).to_numpy()


def _load_metadata_only(
    val_fraction: float, test_fraction: float, seed: int, split: RecordedSplit | None
) -> NIHDataset:
    metadata = read_metadata(None)
    if split is not None:
        metadata["split"] = _recorded_sides(metadata, split)
    else:
        # The official split lists are not shipped in the wheel, so the split is drawn.
        metadata["split"] = split_lib.assign_random(metadata, val_fraction=val_fraction, test_fraction=test_fraction,
                                                    seed=seed)
    return NIHDataset(
        metadata=metadata,
        split_kind="random" if split is None else split.kind,
        boxes=read_bbox_list(shipped_data_file(SHIPPED_BBOX_NAME)),
        index=None,
        files=None,
        description=(
            "metadata only: Data_Entry_2017_v2020.csv and BBox_List_2017.csv shipped in torchxrayvision (no images)"
        ),
        synthetic=False,
    )


def _empty_boxes() -> pd.DataFrame:
    return pd.DataFrame({"image": [], "finding": [], "x": [], "y": [], "w": [], "h": []})


def find_unreadable_images(paths: pd.Series, mode: IntegrityMode = "quick", workers: int = 8) -> pd.DataFrame:
    """Check image files; return one row (image, path, problem) per bad file.

    ``quick`` reads each file's first and last bytes (a truncated PNG lacks its
    IEND chunk); ``full`` decodes every file. Threads, because this is I/O bound.
    """
    if mode == "off" or paths.empty:
        return pd.DataFrame(columns=["image", "path", "problem"])
    check = {"quick": quick_integrity_problem, "full": full_integrity_problem}[mode]
    with stage(f"integrity check ({mode})", images=int(paths.size)), ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(
            progress_bar(
                pool.map(check, paths.to_numpy()), total=paths.size, desc=f"{mode} integrity check", unit="img",
                done=f"checked {{n:,}} files ({mode} integrity check)",
            )
        )
    report = pd.DataFrame({"image": paths.index, "path": paths.to_numpy(), "problem": problems})
    return report[report["problem"].notna()].reset_index(drop=True)


def listed_image_paths(dataset: NIHDataset) -> pd.Series:
    """Every image the metadata lists, found or not: a missing file (or a FIFO, a folder, ... in its place)
    then stops the cache build with its name, or (``skip_bad``) is listed in ``bad_files.csv``;
    it is never dropped silently."""
    if dataset.index is None or dataset.images_root is None:
        raise ValueError("training needs images: data_root is metadata-only; point it at a dataset folder")
    listed_not_files = {name: path for name, (path, _) in dataset.index.not_files.items()}
    listed_not_files = {name: listed_not_files[name]
                        for name in pd.Index(dataset.metadata["image"]).intersection(list(listed_not_files))}
    missing = pd.Series({**{name: str(dataset.images_root / name) for name in dataset.index.missing},
                         **listed_not_files}, dtype=object)
    return pd.concat([dataset.index.paths, missing]) if len(missing) else dataset.index.paths

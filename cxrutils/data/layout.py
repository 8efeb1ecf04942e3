"""Find the NIH files under a root, whichever of the three download layouts it has.

- NIH box: ``images/`` (flat, from the 12 archives) + CSVs and lists beside it;
- Kaggle full: ``images_001/images/*.png`` ... ``images_012/images/*.png``;
- Kaggle sample: ``sample/images/*.png`` + ``sample_labels.csv``;

and partial extractions, or images kept in a separate folder. One directory walk
(``os.scandir``, which needs no per-file ``stat`` on local disks) finds every image.
The walk follows linked folders (a root assembled from links to the archives'
folders is common) but enters each real folder once, so a link loop cannot stop it;
an entry named like a film that is not a regular file (a FIFO, a device, a folder,
a broken link) is never indexed as a film: it is listed with what it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrutils.data.film_files import not_a_regular_file
from cxrutils.data.images import IMAGE_SUFFIXES

# Most specific first: v2020 has the revised ages and labels.
METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "sample_labels.csv")
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_LIST_NAME = "train_val_list.txt"
TEST_LIST_NAME = "test_list.txt"
_SEARCH_DEPTH = 2  # root, root/sample, root/<anything>/... is enough for all layouts


@dataclass(frozen=True)
class DatasetFiles:
    """The metadata files found under a root (None where absent)."""

    root: Path
    metadata_csv: Path | None
    bbox_csv: Path | None
    train_val_list: Path | None
    test_list: Path | None


@dataclass
class ImageIndex:
    """Image name -> path, and what did not match the metadata."""

    paths: pd.Series  # index: image name, values: absolute path (str)
    missing: list[str] = field(default_factory=list)  # listed in metadata, no file
    unlisted: list[str] = field(default_factory=list)  # file present, not in metadata
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # same name twice
    not_files: dict[str, tuple[str, str]] = field(default_factory=dict)  # named like a film: name -> (path, what)

    def summary(self) -> dict[str, int]:
        return {
            "found": int(self.paths.size),
            "missing": len(self.missing),
            "unlisted": len(self.unlisted),
            "duplicate_names": len(self.duplicates),
            "not_regular_files": len(self.not_files),
        }


def locate_files(root: str | os.PathLike[str]) -> DatasetFiles:
    """Find the metadata CSV, box list and split lists under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    found: dict[str, Path] = {}
    wanted = {*METADATA_NAMES, BBOX_NAME, TRAIN_VAL_LIST_NAME, TEST_LIST_NAME}
    for folder in _folders_to_depth(root, _SEARCH_DEPTH):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in wanted and entry.name not in found and entry.is_file():
                    found[entry.name] = Path(entry.path)
    metadata = next((found[name] for name in METADATA_NAMES if name in found), None)
    return DatasetFiles(
        root=root,
        metadata_csv=metadata,
        bbox_csv=found.get(BBOX_NAME),
        train_val_list=found.get(TRAIN_VAL_LIST_NAME),
        test_list=found.get(TEST_LIST_NAME),
    )


def _folders_to_depth(root: Path, max_depth: int):
    """Breadth-first folders under root, skipping image folders (they hold only PNGs)."""
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        yield folder
        if depth == max_depth:
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir() and entry.name != "images" and not entry.name.startswith("."):
                    queue.append((Path(entry.path), depth + 1))


@dataclass
class ImageScan:
    """What one walk of an images folder found."""

    paths: dict[str, str]  # film name -> path of a regular file
    duplicates: dict[str, list[str]]  # a film name found in several folders -> every path
    not_files: dict[str, tuple[str, str]]  # a film name that is not a regular file -> (path, what it is)


def scan_images(images_root: str | os.PathLike[str]) -> ImageScan:
    """Walk ``images_root`` once (module docstring): films by name, names found twice, entries that are not files."""
    paths: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}
    not_files: dict[str, tuple[str, str]] = {}
    stack = [os.fspath(images_root)]
    entered: set[tuple[int, int]] = set()
    while stack:
        folder = stack.pop()
        try:
            folder_stat = os.stat(folder)
        except OSError:
            continue
        if (folder_stat.st_dev, folder_stat.st_ino) in entered:
            continue  # reached again through a link: a loop, or two links to one folder
        entered.add((folder_stat.st_dev, folder_stat.st_ino))
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                named_like_film = entry.name.lower().endswith(IMAGE_SUFFIXES)
                try:
                    is_folder = entry.is_dir(follow_symlinks=True)
                    is_file = entry.is_file(follow_symlinks=True)
                except OSError:  # e.g. a link loop on the entry itself
                    is_folder = is_file = False
                if is_folder and not named_like_film:
                    stack.append(entry.path)
                elif not named_like_film:
                    continue
                elif not is_file:
                    not_files[entry.name] = (entry.path, not_a_regular_file(entry.path) or "not a regular file")
                elif entry.name in paths:
                    duplicates.setdefault(entry.name, [paths[entry.name]]).append(entry.path)
                else:
                    paths[entry.name] = entry.path
    return ImageScan(paths, duplicates, not_files)


def index_images(images_root: str | os.PathLike[str], listed_images: pd.Series | list[str]) -> ImageIndex:
    """Match the image files under ``images_root`` against the metadata's names."""
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise FileNotFoundError(f"images folder {images_root} does not exist")
    scan = scan_images(images_root)
    on_disk, duplicates = scan.paths, scan.duplicates
    listed = pd.Index(listed_images)
    present = listed[listed.isin(list(on_disk))]
    paths = pd.Series([on_disk[name] for name in present], index=present, name="path", dtype=str)
    paths.index.name = "image"
    listed_set = set(listed)
    return ImageIndex(
        paths=paths,
        missing=sorted(set(listed) - set(on_disk) - set(scan.not_files)),
        unlisted=sorted(name for name in on_disk if name not in listed_set),
        duplicates=duplicates,
        not_files=scan.not_files,
    )

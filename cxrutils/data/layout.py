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

Two things users get wrong are said where they happen, as warnings (the notebook and
the terminal show them; nothing stops): images missing while the folder still holds
the archives they come in (``UnextractedArchivesWarning``, which names the archives and
the commands that unpack them), and a root whose only metadata is Kaggle's older
``Data_Entry_2017.csv`` (``OlderLabelReleaseWarning``).
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrutils.data.film_files import not_a_regular_file
from cxrutils.data.images import IMAGE_SUFFIXES
from cxrutils.data.metadata import SHIPPED_METADATA_NAME, shipped_data_file

# Most specific first: v2020 has the revised ages and labels.
METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "sample_labels.csv")
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_LIST_NAME = "train_val_list.txt"
TEST_LIST_NAME = "test_list.txt"
_SEARCH_DEPTH = 2  # root, root/sample, root/<anything>/... is enough for all layouts
OLDER_METADATA_NAME = "Data_Entry_2017.csv"  # Kaggle's copy: the 2017 label release
# cxrutils.data.dataset.SYNTHETIC_MANIFEST_NAME (a tested copy: dataset imports this module): the file every
# phantom root holds. A phantom's Data_Entry_2017.csv is made up in Kaggle's shape: no label release to advise on.
PHANTOM_MANIFEST_NAME = "PHANTOM_DATASET.json"
BOX_FOLDER_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
# The command-line verb that runs cxrutils.data.download (add --extract-only to unpack what is already here).
DOWNLOAD_COMMAND = "cxrutils download nih --root {root}"

# What the releases download before anything is unpacked: NIH box's images_001.tar.gz ... images_012.tar.gz
# (NIH's batch_download_zips.py names them images_01.tar.gz ...), cxrutils' download of one still under way
# (.part), and Kaggle's zip of the whole dataset (its web page names it archive.zip, `kaggle datasets download`
# names it after the dataset: data.zip, sample.zip).
_BOX_ARCHIVE = re.compile(r"^images_\d{2,3}\.(tar\.gz|tgz)$")
_UNFINISHED_BOX_ARCHIVE = re.compile(r"^images_\d{2,3}\.tar\.gz\.part$")
_KAGGLE_ZIP = re.compile(r"^(archive|data|sample|nih-chest-xrays.*|images_\d{2,3})\.zip$", re.IGNORECASE)
_ARCHIVES_NAMED = 12  # all of the box release's; a longer list is cut


class UnextractedArchivesWarning(UserWarning):
    """Listed images are missing and the images folder holds the archives they come in, never unpacked."""


class OlderLabelReleaseWarning(UserWarning):
    """The root's only metadata is Kaggle's Data_Entry_2017.csv, the label release before NIH's v2020 revision."""


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
    # Where images are missing: the image archives lying in the images folder (never unpacked), by path.
    archives: list[str] = field(default_factory=list)
    # Where images are missing and archives lie there: what to do (UnextractedArchivesWarning's text), else "".
    archives_note: str = ""

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
    if metadata is not None and metadata.name == OLDER_METADATA_NAME and not (root / PHANTOM_MANIFEST_NAME).is_file():
        warnings.warn(older_label_release_message(metadata), OlderLabelReleaseWarning, stacklevel=2)
    return DatasetFiles(
        root=root,
        metadata_csv=metadata,
        bbox_csv=found.get(BBOX_NAME),
        train_val_list=found.get(TRAIN_VAL_LIST_NAME),
        test_list=found.get(TEST_LIST_NAME),
    )


def older_label_release_message(metadata_csv: Path) -> str:
    """What a root whose metadata is Kaggle's Data_Entry_2017.csv lacks, and how to add NIH's v2020 file beside it."""
    folder = metadata_csv.parent
    target = shlex.quote(str(folder / METADATA_NAMES[0]))
    try:
        shipped_copy = shlex.quote(str(shipped_data_file(SHIPPED_METADATA_NAME)))
        shipped = f", or copy the one torchxrayvision ships: `gunzip -c {shipped_copy} > {target}`"
    except FileNotFoundError:  # torchxrayvision is not installed: the box is the only source to name
        shipped = ""
    return (
        f"{metadata_csv} is the 2017 label release (Kaggle's copy has 16 impossible ages; NIH's 2020 revision "
        f"corrected the ages and relabelled 181 images). {METADATA_NAMES[0]} is read instead when it lies beside "
        f"it: download it from {BOX_FOLDER_URL} into {folder}{shipped}."
    )


def find_image_archives(images_root: str | os.PathLike[str]) -> list[Path]:
    """The image archives (box ``images_NNN.tar.gz`` and its ``.part``, Kaggle's zip) in a folder or its ``images/``."""
    images_root = Path(images_root)
    found = []
    for folder in (images_root, images_root / "images"):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                archive_name = any(pattern.match(entry.name)
                                   for pattern in (_BOX_ARCHIVE, _UNFINISHED_BOX_ARCHIVE, _KAGGLE_ZIP))
                if archive_name and entry.is_file():
                    found.append(Path(entry.path))
    return sorted(found, key=lambda path: (path.name, str(path)))


def unextracted_archives_message(
    images_root: str | os.PathLike[str], archives: list[Path], missing: int, found: int = 0
) -> str:
    """Images missing beside the archives they come in: which archives, and the commands that unpack them there.

    A box archive's members are ``images/NAME.png`` and a Kaggle zip holds the Kaggle layout
    (``images_NNN/images/NAME.png``), so both unpack into the images root wherever the archive
    itself lies (the root or its ``images/``). ``found``: the listed images that are on disk.
    """
    root = shlex.quote(str(images_root))
    names = [path.name for path in archives]
    named = ", ".join(names[:_ARCHIVES_NAMED]) + (f" and {len(names) - _ARCHIVES_NAMED} more"
                                                   if len(names) > _ARCHIVES_NAMED else "")
    steps = []
    unfinished = [path for path in archives if _UNFINISHED_BOX_ARCHIVE.match(path.name)]
    tarballs = [path for path in archives if _BOX_ARCHIVE.match(path.name)]
    zips = [path for path in archives if _KAGGLE_ZIP.match(path.name)]
    if unfinished:
        steps.append(f"{unfinished[0].name} is a download that never finished: `{DOWNLOAD_COMMAND.format(root=root)}` "
                     "resumes it and unpacks everything")
    if tarballs:
        steps.append(f"Unpack the box archives with `{DOWNLOAD_COMMAND.format(root=root)} --extract-only` (it checks "
                     f"each archive before it unpacks it), or by hand with "
                     f"`tar -xzf {shlex.quote(str(tarballs[0]))} -C {root}` for each")
    if zips:
        steps.append(f"Unpack the Kaggle download with `unzip -q {shlex.quote(str(zips[0]))} -d {root}`"
                     + (" (each zip the same way)" if len(zips) > 1 else ""))
    unpacked = "were never unpacked" if not found else "may not have been unpacked completely"
    return (f"{missing:,} listed images are not on disk, and {images_root} holds image archives that {unpacked}: "
            f"{named}. " + " ".join(f"{step}." for step in steps))


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
    missing = sorted(set(listed) - set(on_disk) - set(scan.not_files))
    # Only where images are missing: archives kept beside a complete extraction are the user's business.
    archives = find_image_archives(images_root) if missing else []
    archives_note = (unextracted_archives_message(images_root, archives, len(missing), found=int(paths.size))
                     if archives else "")
    if archives_note:
        warnings.warn(archives_note, UnextractedArchivesWarning, stacklevel=2)
    return ImageIndex(
        paths=paths,
        missing=missing,
        unlisted=sorted(name for name in on_disk if name not in listed_set),
        duplicates=duplicates,
        not_files=scan.not_files,
        archives=[str(path) for path in archives],
        archives_note=archives_note,
    )

"""The films handed to inference: found under the paths given, inspected, refused with a reason, or decoded.

``collect_films`` walks the paths (files and folders, PNG, JPEG and DICOM mixed, any
other file too: nothing found is left out); ``inspect_film`` reads each file's header
without decoding its pixels and says why it must not be scored, if it must not:

- anything but a regular file (a FIFO, a device, a socket), which is never opened;
- a symbolic link inside a folder given that points outside it (or to a folder), which
  is not followed: a shared folder must not make inference read ``/etc/passwd`` (a
  file named on the command line is read wherever its link points: the user chose it);
- a file that is not PNG, JPEG or DICOM, or does not exist, or is truncated;
- an image whose header declares more pixels than the limit (``images.DEFAULT_MAX_PIXELS``):
  a decompression bomb is refused before a byte of pixel data is decoded;
- a DICOM that is not one grey film (no pixel data, several frames, colour);
- a DICOM whose header says it is not a frontal chest radiograph: a modality other
  than CR, DX, RG (or an unspecific OT / SC / none, which is scored with a note), or a
  lateral or oblique view.

``FilmDataset`` decodes the rest for the network the way the image cache does
(``cxrutils.data.preparation.prepare_film`` at the run's ``cache_size``), so a film
scored here gets the pixels it would get as part of a dataset.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrutils.data.dicom import RADIOGRAPH_MODALITIES, UNSPECIFIC_MODALITIES, DicomHeader, read_dicom_header
from cxrutils.data.film_files import ImageReadError, describe_start, too_many_pixels
from cxrutils.data.images import bits_of_mode, film_format, image_header, quick_integrity_problem, read_image
from cxrutils.data.preparation import prepare_film
from cxrutils.locks import is_lock_file
from cxrutils.paths import resolve
from cxrutils.progress import progress_bar

# Every film gets these facts (empty where its format does not record them), in this order.
FACT_COLUMNS = (
    "source_format", "width", "height", "bits_stored", "photometric", "modality", "view", "view_source",
    "body_part", "pixel_spacing_row_mm", "pixel_spacing_column_mm", "pixel_spacing_source", "transfer_syntax",
    "intensity", "orientation", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber",
)
INTEGER_FACTS = ("width", "height", "bits_stored")
DECIMAL_FACTS = ("pixel_spacing_row_mm", "pixel_spacing_column_mm")
_PIL_INTENSITY = {
    "L": "8-bit grey, as stored", "RGBA": "the first channel (RGBA)", "LA": "the first channel (LA)",
    "RGB": "luminance of RGB", "P": "luminance of a palette image",
}


@dataclass
class FilmRecord:
    """One file handed to inference: where it is, what its header says, and why it is refused (None: scored)."""

    path: Path
    image: str  # its name in every output: its path under the folder it was found in
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    refusal: str | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None


class FoundFile(NamedTuple):
    """A file found under the paths given: where it is, its name in every output, and why it is refused at once."""

    path: Path
    image: str
    refusal: str | None = None


def collect_films(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[FoundFile], list[str]]:
    """Every file under ``paths``, in order; and the files that were given twice.

    A folder is walked (sorted, hidden files included: nothing is left out silently)
    and its files are named by their path under it; a file is named by its file name.
    Two files with the same name from different arguments are named by their full
    path. A file reached twice (a folder and a file in it) is kept once and listed in
    the second list. A path that does not exist is kept: ``inspect_film`` refuses it.
    Inside a folder, a symbolic link is followed only to a file inside that folder; a
    link to a folder, or out of the folder, is found with its refusal (module docstring).
    """
    found: list[FoundFile] = []
    for argument in paths:
        root = resolve(argument)
        if root.is_dir():
            found.extend(sorted(_walk(root), key=lambda item: item.path))
        else:
            found.append(FoundFile(root, root.name))
    unique: dict[Path, FoundFile] = {}
    repeated: list[str] = []
    for item in found:
        if item.path in unique:
            repeated.append(str(item.path))
        else:
            unique[item.path] = item
    uses = Counter(item.image for item in unique.values())
    return [item._replace(image=str(item.path)) if uses[item.image] > 1 else item for item in unique.values()], \
        repeated


def _walk(root: Path) -> Iterator[FoundFile]:
    """Every entry under ``root`` that is not a folder; linked folders are not entered, so no loop is walked."""
    inside = os.path.realpath(root)
    folders = [root]
    while folders:
        folder = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_lock_file(entry.path):  # an output folder's lock, when --out lies inside the folder given
                    continue
                path = Path(entry.path)
                image = path.relative_to(root).as_posix()
                if entry.is_symlink():
                    yield FoundFile(path, image, _link_refusal(path, inside))
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                else:
                    yield FoundFile(path, image)


def _link_refusal(path: Path, inside: str) -> str | None:
    """None for a link to a file inside the folder walked; else why the link is not followed."""
    target = os.path.realpath(path)
    if os.path.commonpath([inside, target]) != inside:
        return "symbolic link to a file outside the folder given: not followed"
    if os.path.isdir(target):
        return "symbolic link to a folder: not followed (films inside the folder given are scored where they are)"
    return None


def inspect_film(path: Path, image: str, max_pixels: int | None = None) -> FilmRecord:
    """A file's header facts and, if it must not be scored, why (module docstring); its pixels are not decoded."""
    facts: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
    record = FilmRecord(path=path, image=image, facts=facts)
    try:
        kind = film_format(path)
    except ImageReadError as err:
        record.refusal = err.reason
        return record
    except OSError as err:
        record.refusal = f"cannot be opened: {type(err).__name__}: {err.strerror or err}"
        return record
    facts["source_format"] = kind
    if kind is None:
        with open(path, "rb") as handle:  # a regular file: film_format has checked
            head = handle.read(8)
        record.refusal = f"not a PNG, JPEG or DICOM file ({describe_start(head)})"
    elif kind == "dicom":
        _inspect_dicom(record, max_pixels)
    else:
        _inspect_png_or_jpeg(record, max_pixels)
    return record


def _inspect_png_or_jpeg(record: FilmRecord, max_pixels: int | None) -> None:
    problem = quick_integrity_problem(record.path)
    try:
        width, height, mode = image_header(record.path)
    except ImageReadError as err:
        problem = problem or err.reason
    else:
        problem = too_many_pixels(width * height, f"{width:,} x {height:,} declared in the header",
                                  max_pixels) or problem
        bits = bits_of_mode(mode)
        intensity = _PIL_INTENSITY.get(mode, f"{bits}-bit values scaled from their bit depth")
        record.facts.update(width=width, height=height, bits_stored=bits, photometric=mode, intensity=intensity)
        if mode in ("RGB", "P", "CMYK", "YCbCr", "1"):
            record.notes.append(f"{mode} image: scored on its {intensity}")
    record.refusal = problem


def _inspect_dicom(record: FilmRecord, max_pixels: int | None) -> None:
    try:
        header = read_dicom_header(record.path)
    except ImageReadError as err:
        record.refusal = err.reason
        return
    record.facts.update(header.facts())
    record.notes.extend(header.notes)
    record.refusal = header.problem or header.size_problem(max_pixels) or not_a_frontal_chest_radiograph(header)
    if record.refusal is None and header.modality in UNSPECIFIC_MODALITIES:
        record.notes.append(f"Modality {header.modality or 'missing'} ({UNSPECIFIC_MODALITIES[header.modality]}) "
                            "does not say this is a radiograph: check that it is a chest film")


def not_a_frontal_chest_radiograph(header: DicomHeader) -> str | None:
    """Why the header says this is not what the model reads (frontal chest radiographs); None when it does not."""
    modality = header.modality
    if modality not in RADIOGRAPH_MODALITIES and modality not in UNSPECIFIC_MODALITIES:
        return (f"Modality {modality} is not a radiograph: the model reads frontal chest radiographs "
                f"({', '.join(RADIOGRAPH_MODALITIES)})")
    if header.view in ("lateral", "oblique"):
        return f"{header.view} view ({header.view_source}): the model reads frontal (PA or AP) chest films only"
    return None


def inspect_films(films: Sequence[FoundFile], show_progress: bool = True,
                  max_pixels: int | None = None) -> list[FilmRecord]:
    """``inspect_film`` for each file found (a file refused as it was found keeps that refusal), with a progress bar."""
    return [FilmRecord(path=found.path, image=found.image, facts=dict.fromkeys(FACT_COLUMNS), refusal=found.refusal)
            if found.refusal else inspect_film(found.path, found.image, max_pixels)
            for found in progress_bar(films, desc="reading headers", unit="film", disable=not show_progress)]


def decode_failure(path: Path, max_pixels: int | None = None) -> str:
    """Why a film that passed inspection could not be decoded (read again in this process, for its reason)."""
    try:
        read_image(path, max_pixels)
    except ImageReadError as err:
        return err.reason
    return "could not be decoded in a loader process, though it reads now: the file may have changed meanwhile"


class FilmDataset(Dataset):
    """Films decoded as the image cache decodes them: (uint8 (1, S, S), float32 (1,)) with 1 = decoded, 0 = failed.

    A film that fails to decode (damaged pixel data behind a sound header) comes as
    zeros with its flag 0, so one bad file never stops a batch; the caller refuses it
    (``decode_failure`` names the reason). ``__getitems__`` serves a whole batch.
    """

    def __init__(self, paths: Sequence[Path], size: int, max_pixels: int | None = None) -> None:
        self.paths = [str(path) for path in paths]
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, index: int) -> tuple[np.ndarray, float]:
        try:
            return prepare_film(self.paths[index], self.size, self.max_pixels), 1.0
        except ImageReadError:
            return np.zeros((self.size, self.size), dtype=np.uint8), 0.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, decoded = self._decode(index)
        return torch.from_numpy(pixels)[None], torch.tensor([decoded], dtype=torch.float32)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        decoded = [self._decode(index) for index in indices]
        pixels = np.stack([film for film, _ in decoded])[:, None]
        flags = np.array([[flag] for _, flag in decoded], dtype=np.float32)
        return torch.from_numpy(pixels), torch.from_numpy(flags)

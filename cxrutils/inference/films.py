"""The films handed to inference: found under the paths given, inspected, refused with a reason, or decoded.

``collect_films`` walks the paths (files and folders, PNG, JPEG and DICOM mixed, any
other file too: nothing found is left out); ``inspect_film`` reads each file's header
without decoding its pixels and says why it must not be scored, if it must not:

- a file that is not PNG, JPEG or DICOM, or does not exist, or is truncated;
- a DICOM that is not one grey film (no pixel data, several frames, colour);
- a DICOM whose header says it is not a frontal chest radiograph: a modality other
  than CR, DX, RG (or an unspecific OT / SC / none, which is scored with a note), or a
  lateral or oblique view.

``FilmDataset`` decodes the rest for the network the way the image cache does
(``read_image``, then ``cache.to_square`` at the run's ``cache_size``), so a film
scored here gets the pixels it would get as part of a dataset.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrutils.data.cache import to_square
from cxrutils.data.dicom import RADIOGRAPH_MODALITIES, UNSPECIFIC_MODALITIES, DicomHeader, read_dicom_header
from cxrutils.data.images import (
    ImageReadError,
    bits_of_mode,
    film_format,
    image_header,
    quick_integrity_problem,
    read_image,
)
from cxrutils.paths import resolve
from cxrutils.progress import progress_bar

# Every film gets these facts (empty where its format does not record them), in this order.
FACT_COLUMNS = (
    "source_format", "width", "height", "bits_stored", "photometric", "modality", "view", "view_source",
    "body_part", "pixel_spacing_row_mm", "pixel_spacing_column_mm", "pixel_spacing_source", "transfer_syntax",
    "intensity", "orientation",
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


def collect_films(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every file under ``paths`` as (path, image name), in order; and the files that were given twice.

    A folder is walked (sorted, hidden files included: nothing is left out silently)
    and its files are named by their path under it; a file is named by its file name.
    Two files with the same name from different arguments are named by their full
    path. A file reached twice (a folder and a file in it) is kept once and listed in
    the second list. A path that does not exist is kept: ``inspect_film`` refuses it.
    """
    found: list[tuple[Path, str]] = []
    for argument in paths:
        root = resolve(argument)
        if root.is_dir():
            found.extend((path, path.relative_to(root).as_posix())
                         for path in sorted(p for p in root.rglob("*") if p.is_file()))
        else:
            found.append((root, root.name))
    unique: dict[Path, str] = {}
    repeated: list[str] = []
    for path, image in found:
        if path in unique:
            repeated.append(str(path))
        else:
            unique[path] = image
    uses = Counter(unique.values())
    return [(path, str(path) if uses[image] > 1 else image) for path, image in unique.items()], repeated


def inspect_film(path: Path, image: str) -> FilmRecord:
    """A file's header facts and, if it must not be scored, why (module docstring); its pixels are not decoded."""
    facts: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
    record = FilmRecord(path=path, image=image, facts=facts)
    if not path.is_file():
        record.refusal = "file does not exist" if not path.exists() else "not a file"
        return record
    try:
        kind = film_format(path)
    except OSError as err:
        record.refusal = f"cannot be opened: {type(err).__name__}: {err}"
        return record
    facts["source_format"] = kind
    if kind is None:
        with open(path, "rb") as handle:
            head = handle.read(8)
        record.refusal = f"not a PNG, JPEG or DICOM file (starts with {head!r})"
    elif kind == "dicom":
        _inspect_dicom(record)
    else:
        _inspect_png_or_jpeg(record)
    return record


def _inspect_png_or_jpeg(record: FilmRecord) -> None:
    problem = quick_integrity_problem(record.path)
    try:
        width, height, mode = image_header(record.path)
    except ImageReadError as err:
        problem = problem or err.reason
    else:
        bits = bits_of_mode(mode)
        intensity = _PIL_INTENSITY.get(mode, f"{bits}-bit values scaled from their bit depth")
        record.facts.update(width=width, height=height, bits_stored=bits, photometric=mode, intensity=intensity)
        if mode in ("RGB", "P", "CMYK", "YCbCr", "1"):
            record.notes.append(f"{mode} image: scored on its {intensity}")
    record.refusal = problem


def _inspect_dicom(record: FilmRecord) -> None:
    try:
        header = read_dicom_header(record.path)
    except ImageReadError as err:
        record.refusal = err.reason
        return
    record.facts.update(header.facts())
    record.notes.extend(header.notes)
    record.refusal = header.problem or not_a_frontal_chest_radiograph(header)
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


def inspect_films(films: Sequence[tuple[Path, str]], show_progress: bool = True) -> list[FilmRecord]:
    """``inspect_film`` for each (path, image name), with a progress bar."""
    return [inspect_film(path, image)
            for path, image in progress_bar(films, desc="reading headers", unit="film", disable=not show_progress)]


def decode_failure(path: Path) -> str:
    """Why a film that passed inspection could not be decoded (read again in this process, for its reason)."""
    try:
        read_image(path)
    except ImageReadError as err:
        return err.reason
    return "could not be decoded in a loader process, though it reads now: the file may have changed meanwhile"


class FilmDataset(Dataset):
    """Films decoded as the image cache decodes them: (uint8 (1, S, S), float32 (1,)) with 1 = decoded, 0 = failed.

    A film that fails to decode (damaged pixel data behind a sound header) comes as
    zeros with its flag 0, so one bad file never stops a batch; the caller refuses it
    (``decode_failure`` names the reason). ``__getitems__`` serves a whole batch.
    """

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = [str(path) for path in paths]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, index: int) -> tuple[np.ndarray, float]:
        try:
            return to_square(read_image(self.paths[index]), self.size), 1.0
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

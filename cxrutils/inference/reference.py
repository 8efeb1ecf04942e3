"""How new films differ from the films a run was trained on: view, size, bit depth, format.

A model scores anything it is given; whether the score means something depends on
how far the film is from the training films. ``training_reference`` describes the
run's training split (views from its metadata; stored size, bit depth and format
from the headers of a seeded sample of its files), and ``compare_with_training``
puts each scored film beside it. Both need the run's data (``open_run``); inference
itself does not, and ``training_reference_if_here`` says why when that data is not on
this machine. ``sample_test_films`` picks films of the run's own test split, for
a demonstration or a check against ``predictions_test.csv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrutils.data.images import bits_of_mode, image_header
from cxrutils.data.metadata import MetadataError
from cxrutils.engine import run_folder
from cxrutils.engine.run_folder import DataChangedError
from cxrutils.inference.scoring import SCORED

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class TrainingReference:
    """The training split of a run, as ``compare_with_training`` measures new films against it."""

    films: int
    views: dict[str, float]  # share of training films per view (PA, AP)
    sampled: int  # files whose headers were read
    width: tuple[int, int, int]  # min, median, max of the sampled files' stored width
    height: tuple[int, int, int]
    bits: dict[int, float]  # share of sampled files per bit depth
    formats: dict[str, float]  # share of sampled files per format (by suffix)

    def table(self) -> pd.DataFrame:
        """One row per property, in words."""
        def shares(values: dict[Any, float]) -> str:
            return ", ".join(f"{key}: {share:.0%}" for key, share in values.items())

        return pd.DataFrame({"training films": {
            "films": f"{self.films:,}", "view": shares(self.views),
            "stored width (min, median, max)": ", ".join(map(str, self.width)),
            "stored height (min, median, max)": ", ".join(map(str, self.height)),
            "bit depth": shares({f"{bits}-bit": share for bits, share in self.bits.items()}),
            "format": shares(self.formats), "headers read": f"{self.sampled:,} (a seeded sample)",
        }})


def training_reference(run_dir: str | os.PathLike[str], sample: int = 200, seed: int = 0,
                       data_root: str | os.PathLike[str] | None = None) -> TrainingReference:
    """The run's training split: view shares from the metadata, size/bits/format from ``sample`` files' headers."""
    run = run_folder.open_run(run_dir, data_root=data_root)
    metadata = run.dataset.metadata
    train = metadata[metadata["split"] == TRAIN_SPLIT]
    if train.empty:
        raise ValueError(f"run {run.name} has no training films in its split.csv")
    views = train["view"].astype(object).fillna("not recorded").value_counts(normalize=True)
    chosen = train.sample(n=min(sample, len(train)), random_state=seed)["image"]
    headers = []
    for image in chosen:
        path = run.dataset.image_path(image)
        if path.is_file():
            width, height, mode = image_header(path)
            headers.append((width, height, bits_of_mode(mode), path.suffix.lower().lstrip(".")))
    if not headers:
        raise FileNotFoundError(f"none of {len(chosen)} sampled training films of run {run.name} is on disk under "
                                f"{run.data_root}")
    widths, heights, bits, formats = (np.array(column) for column in zip(*headers))

    def spread(values: np.ndarray) -> tuple[int, int, int]:
        return int(values.min()), int(np.median(values)), int(values.max())

    def shares(values: np.ndarray) -> dict[Any, float]:
        return {key.item() if hasattr(key, "item") else key: float(share)
                for key, share in pd.Series(values).value_counts(normalize=True).items()}

    return TrainingReference(films=len(train), views={str(k): float(v) for k, v in views.items()},
                             sampled=len(headers), width=spread(widths), height=spread(heights), bits=shares(bits),
                             formats=shares(formats))


def training_reference_if_here(run_dir: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
                               ) -> tuple[TrainingReference | None, str]:
    """``training_reference``, or None and why not when the run's training data is not on this machine.

    Inference needs only the run folder; the comparison with the training films needs
    their metadata and a sample of their files. A machine without them (a radiologist's
    workstation with a run folder and a PACS export) gets the reason, not an error.
    """
    try:
        return training_reference(run_dir, data_root=data_root), ""
    except (FileNotFoundError, DataChangedError, MetadataError) as err:
        return None, (f"the run's training films are not readable here ({err}); give data_root to compare "
                      "with them")


def compare_with_training(table: pd.DataFrame, reference: TrainingReference) -> pd.DataFrame:
    """Per scored film (an inference table's rows): view, size, bit depth and format beside the training films.

    ``differs`` lists, in words, each property outside what the training films have:
    a view no training film has (or one the file does not record), a stored size
    outside the training films' range, a bit depth or format they do not have.
    """
    rows = []
    for film in table[table["status"] == SCORED].itertuples(index=False):
        differs = []
        view = film.view or ""
        if not view:
            differs.append("view not recorded in the file")
        elif view not in reference.views:
            differs.append(f"view {view}: no training film has it")
        width, height = int(film.width), int(film.height)
        if not (reference.width[0] <= width <= reference.width[2] and reference.height[0] <= height <= reference.height[2]):
            differs.append(f"size {width} x {height}: training films are {reference.width[0]}-{reference.width[2]} "
                           f"x {reference.height[0]}-{reference.height[2]}")
        if int(film.bits_stored) not in reference.bits:
            differs.append(f"{int(film.bits_stored)}-bit: training films are "
                           f"{', '.join(f'{b}-bit' for b in reference.bits)}")
        film_format = "jpg" if film.source_format == "jpeg" else film.source_format
        if film_format not in reference.formats and not (film_format == "jpg" and "jpeg" in reference.formats):
            differs.append(f"{film.source_format}: training films are {', '.join(reference.formats)}")
        rows.append({
            "image": film.image, "view": view or "not recorded",
            "training films with this view": reference.views.get(view, 0.0) if view else np.nan,
            "size": f"{width} x {height}", "bits": int(film.bits_stored), "format": film.source_format,
            "differs": "; ".join(differs) or "within the training films' range",
        })
    return pd.DataFrame(rows, columns=["image", "view", "training films with this view", "size", "bits", "format",
                                       "differs"])


def sample_test_films(run_dir: str | os.PathLike[str], count: int = 4, seed: int = 0,
                     data_root: str | os.PathLike[str] | None = None) -> list[Path]:
    """``count`` films of the run's own test split (a seeded sample, in file order), as paths on disk."""
    run = run_folder.open_run(run_dir, data_root=data_root)
    if run.dataset.index is None:
        raise FileNotFoundError(f"run {run.name}'s data root {run.data_root} has no images")
    metadata = run.dataset.metadata
    test = metadata[(metadata["split"] == "test") & metadata["image"].isin(run.dataset.index.paths.index)]
    if test.empty:
        raise FileNotFoundError(f"run {run.name}'s test split has no film on disk under {run.data_root}")
    chosen = test.sample(n=min(count, len(test)), random_state=seed)["image"].sort_values()
    return [run.dataset.image_path(image) for image in chosen]

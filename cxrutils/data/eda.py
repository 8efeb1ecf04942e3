"""Tables for exploring the dataset; the EDA notebook shows these and their plots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrutils.data.dataset import IntegrityMode, NIHDataset, find_unreadable_images
from cxrutils.files import write_csv
from cxrutils.labels import FINDINGS, NO_FINDING
from cxrutils.paths import resolve

PROBLEMS_CSV_NAME = "file_problems.csv"
# File problems kept in the report summary (and so in the index): the CSV beside it has all of them.
PROBLEMS_IN_SUMMARY = 100
MISSING_PROBLEM = "listed in the metadata, no file found"


def dataset_summary(metadata: pd.DataFrame) -> pd.Series:
    """Headline counts: images, patients, views, sexes, ages."""
    views = metadata["view"].value_counts()
    sexes = metadata["sex"].value_counts()
    plausible_ages = metadata.loc[~metadata["age_implausible"], "age_years"]
    return pd.Series(
        {
            "images": len(metadata),
            "patients": metadata["patient_id"].nunique(),
            **{f"view {view}": int(count) for view, count in views.items()},
            **{f"sex {sex}": int(count) for sex, count in sexes.items()},
            "median age (years)": float(plausible_ages.median()),
            "ages > 120 (flagged)": int(metadata["age_implausible"].sum()),
            "images with no finding": int(metadata["no_finding"].sum()),
        },
        dtype=object,
    )


def age_outliers(metadata: pd.DataFrame) -> pd.DataFrame:
    """Rows whose age is impossible: flagged here, never changed."""
    return metadata.loc[metadata["age_implausible"], ["image", "patient_id", "age_years", "sex", "view"]]


def label_prevalence(metadata: pd.DataFrame) -> pd.DataFrame:
    """Images per finding (and No Finding), most common first."""
    counts = metadata[list(FINDINGS)].sum().astype(int)
    counts[NO_FINDING] = int(metadata["no_finding"].sum())
    table = counts.sort_values(ascending=False).to_frame("images")
    table["percent"] = 100 * table["images"] / len(metadata)
    patients_with = {f: metadata.loc[metadata[f] == 1, "patient_id"].nunique() for f in FINDINGS}
    patients_with[NO_FINDING] = metadata.loc[metadata["no_finding"] == 1, "patient_id"].nunique()
    table["patients"] = pd.Series(patients_with)
    return table


def cooccurrence(metadata: pd.DataFrame) -> pd.DataFrame:
    """Images that carry both findings (diagonal: images with the finding)."""
    labels = metadata[list(FINDINGS)].to_numpy(dtype=np.int64)
    return pd.DataFrame(labels.T @ labels, index=list(FINDINGS), columns=list(FINDINGS))


def conditional_cooccurrence(metadata: pd.DataFrame) -> pd.DataFrame:
    """P(column finding | row finding), in percent."""
    counts = cooccurrence(metadata)
    diagonal = np.diag(counts.to_numpy()).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return counts.div(np.where(diagonal == 0, np.nan, diagonal), axis=0) * 100


def labels_per_image(metadata: pd.DataFrame) -> pd.Series:
    """How many of the 14 findings each image carries."""
    per_image = metadata[list(FINDINGS)].sum(axis=1)
    return per_image.value_counts().sort_index().rename_axis("findings per image").rename("images")


def images_per_patient(metadata: pd.DataFrame) -> pd.Series:
    """Distribution of films per patient (follow-ups + 1)."""
    return metadata.groupby("patient_id").size().rename("images per patient")


def geometry_summary(metadata: pd.DataFrame) -> pd.DataFrame:
    """Original film size and pixel spacing (before NIH resized to 1024 px)."""
    columns = ["width", "height", "pixel_spacing_x", "pixel_spacing_y"]
    return metadata[columns].describe(percentiles=[0.05, 0.5, 0.95]).T


def bbox_summary(boxes: pd.DataFrame) -> pd.DataFrame:
    """Per finding: boxes, images, and box size as median (5th-95th percentile)."""
    if boxes.empty:
        return pd.DataFrame(columns=["boxes", "images", "median w", "median h", "median area"])
    grouped = boxes.assign(area=boxes["w"] * boxes["h"]).groupby("finding")
    table = pd.DataFrame(
        {
            "boxes": grouped.size(),
            "images": grouped["image"].nunique(),
            "median w": grouped["w"].median(),
            "median h": grouped["h"].median(),
            "median area": grouped["area"].median(),
        }
    )
    return table.sort_values("boxes", ascending=False)


def sample_gallery(
    metadata: pd.DataFrame, available: pd.Index, per_finding: int, boxes: pd.DataFrame, seed: int = 0
) -> dict[str, list[str]]:
    """Up to ``per_finding`` available images per finding, preferring ones with a box."""
    rng = np.random.default_rng(seed)
    boxed = set(zip(boxes["image"], boxes["finding"]))
    chosen: dict[str, list[str]] = {}
    present = metadata[metadata["image"].isin(available)]
    for finding in [*FINDINGS, NO_FINDING]:
        column = "no_finding" if finding == NO_FINDING else finding
        candidates = present.loc[present[column] == 1, "image"].to_numpy()
        candidates = rng.permutation(candidates)
        with_box = [c for c in candidates if (c, finding) in boxed]
        without_box = [c for c in candidates if (c, finding) not in boxed]
        chosen[finding] = (with_box + without_box)[:per_finding]
    return chosen


def integrity_problems(dataset: NIHDataset, mode: IntegrityMode = "quick") -> pd.DataFrame:
    """Every image that cannot be used, and why: missing, unreadable, unlisted, duplicated.

    Nothing is dropped silently: this table is what the report shows.
    """
    columns = ["image", "problem", "path"]
    if dataset.index is None:
        return pd.DataFrame(columns=columns)
    index = dataset.index
    rows = [(name, MISSING_PROBLEM, "") for name in index.missing]
    unreadable = find_unreadable_images(index.paths, mode)
    rows += [(r.image, f"unreadable: {r.problem}", r.path) for r in unreadable.itertuples()]
    rows += [(name, f"unreadable: {what}", path) for name, (path, what) in index.not_files.items()]
    rows += [(name, "file present, not in the metadata", "") for name in index.unlisted]
    rows += [
        (name, f"same file name in {len(paths)} folders", "; ".join(paths)) for name, paths in index.duplicates.items()
    ]
    return pd.DataFrame(rows, columns=columns)


def usable_images(dataset: NIHDataset, problems: pd.DataFrame) -> pd.Index:
    """Images on disk that passed the integrity check."""
    if dataset.index is None:
        return pd.Index([])
    return dataset.index.paths.index.difference(pd.Index(problems["image"]))


def problem_counts(problems: pd.DataFrame) -> dict[str, int]:
    """Images per kind of problem (unreadable files grouped under one kind, whatever the reason)."""
    kinds = problems["problem"].str.split(":", n=1).str[0]
    return {str(kind): int(count) for kind, count in kinds.value_counts().items()}


def problems_headline(problems: pd.DataFrame) -> str:
    """``no file problems`` or, e.g., ``112,120 listed images not on disk, 2 unreadable``."""
    if problems.empty:
        return "no file problems"
    missing = int((problems["problem"] == MISSING_PROBLEM).sum())
    others = len(problems) - missing
    parts = [f"{missing:,} listed images not on disk"] if missing else []
    parts += [f"{others:,} other file problem(s)"] if others else []
    return ", ".join(parts)


def write_problems(problems: pd.DataFrame, output_dir: str | os.PathLike[str]) -> Path:
    """Every file problem as ``file_problems.csv`` in ``output_dir`` (the report shows the first ones).

    File names and paths are written as text a spreadsheet does not run (``files.write_csv``).
    """
    return write_csv(resolve(output_dir) / PROBLEMS_CSV_NAME, problems)

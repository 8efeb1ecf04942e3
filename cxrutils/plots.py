"""Figures, one function each; notebooks call ``plots.<figure>(...)``.

Every function draws onto a new figure and returns it, so notebooks show it and
tests can check it without a display.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrutils.labels import NO_FINDING

sns.set_theme(context="notebook", style="whitegrid")


def age_histogram(metadata: pd.DataFrame) -> Figure:
    """Ages by sex; flagged (impossible) ages are counted in the title, not plotted."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    plausible = metadata[~metadata["age_implausible"]]
    sns.histplot(data=plausible, x="age_years", hue="sex", bins=np.arange(0, 101, 2), multiple="stack", ax=ax)
    flagged = int(metadata["age_implausible"].sum())
    ax.set(
        xlabel="age (years)", ylabel="images", title=f"Age at imaging ({flagged} impossible ages flagged, not shown)"
    )
    return fig


def counts_bar(counts: pd.Series, title: str, xlabel: str = "images") -> Figure:
    """Horizontal bars of a count per category (views, sexes, ...)."""
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(counts) + 1))
    ax.barh(counts.index.astype(str), counts.to_numpy(), color="#4c72b0")
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    for y, value in enumerate(counts.to_numpy()):
        ax.text(value, y, f" {value:,}", va="center", fontsize=9)
    return fig


def label_prevalence(prevalence: pd.DataFrame) -> Figure:
    """Images per finding, No Finding set apart in grey."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = ["#999999" if name == NO_FINDING else "#c44e52" for name in prevalence.index]
    ax.barh(prevalence.index, prevalence["images"], color=colors)
    ax.invert_yaxis()
    for y, (count, percent) in enumerate(zip(prevalence["images"], prevalence["percent"])):
        ax.text(count, y, f" {count:,} ({percent:.1f}%)", va="center", fontsize=8)
    ax.set(xlabel="images", title="Label prevalence")
    ax.set_xlim(0, prevalence["images"].max() * 1.25)
    return fig


def cooccurrence_heatmap(conditional: pd.DataFrame) -> Figure:
    """P(column | row) in percent; the diagonal is 100 by definition and masked."""
    fig, ax = plt.subplots(figsize=(9, 7.5))
    mask = np.eye(len(conditional), dtype=bool)
    sns.heatmap(
        conditional,
        mask=mask,
        annot=True,
        fmt=".0f",
        cmap="rocket_r",
        cbar_kws={"label": "% of row images"},
        annot_kws={"fontsize": 7},
        ax=ax,
    )
    ax.set(
        title="Co-occurrence: % of images with the row finding that also have the column finding", xlabel="", ylabel=""
    )
    return fig


def distribution_bar(distribution: pd.Series, title: str, xlabel: str, log: bool = False) -> Figure:
    """Bars of a value -> count distribution (findings per image, ...)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(distribution.index.astype(str), distribution.to_numpy(), color="#4c72b0")
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    if log:
        ax.set_yscale("log")
    return fig


def images_per_patient(per_patient: pd.Series) -> Figure:
    """How many films each patient contributes (log scale: a few have over 100)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    upper = int(per_patient.max())
    ax.hist(per_patient, bins=np.arange(0.5, upper + 1.5, 1 if upper <= 60 else max(1, upper // 60)), color="#4c72b0")
    ax.set_yscale("log")
    ax.set(
        title=f"Images per patient (mean {per_patient.mean():.2f}, max {upper})",
        xlabel="images per patient",
        ylabel="patients",
    )
    return fig


def split_prevalence(prevalence_by_split: pd.DataFrame) -> Figure:
    """Percent of images with each finding, per split, side by side."""
    fig, ax = plt.subplots(figsize=(9, 5))
    long = (
        prevalence_by_split.rename_axis("finding")
        .reset_index()
        .melt(id_vars="finding", var_name="split", value_name="percent")
    )
    sns.barplot(data=long, y="finding", x="percent", hue="split", ax=ax)
    ax.set(title="Prevalence per split", xlabel="% of images", ylabel="")
    return fig


def geometry(metadata: pd.DataFrame) -> Figure:
    """Original film size and pixel spacing."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(metadata["width"], metadata["height"], s=3, alpha=0.2)
    left.set(title="Original size (px)", xlabel="width", ylabel="height")
    right.hist(metadata["pixel_spacing_x"], bins=40, color="#4c72b0")
    right.set(title="Pixel spacing x (mm)", xlabel="mm per pixel", ylabel="images")
    fig.tight_layout()
    return fig


def bbox_sizes(boxes: pd.DataFrame) -> Figure:
    """Box width vs height per finding."""
    fig, ax = plt.subplots(figsize=(7, 5))
    sns.scatterplot(data=boxes, x="w", y="h", hue="finding", s=15, alpha=0.7, ax=ax)
    ax.set(
        title=f"Bounding boxes ({len(boxes)} on {boxes['image'].nunique()} images)",
        xlabel="width (px)",
        ylabel="height (px)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def gallery(
    samples: dict[str, list[str]],
    load: Callable[[str], np.ndarray],
    boxes: pd.DataFrame,
    synthetic: bool,
) -> Figure:
    """One row per finding; the finding's box drawn where the box file has one."""
    rows = [finding for finding, images in samples.items() if images]
    columns = max((len(samples[f]) for f in rows), default=1)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.3 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, finding in enumerate(rows):
        for c, image_name in enumerate(samples[finding]):
            ax = axes[r, c]
            pixels = load(image_name)
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
            ax.set_title(image_name, fontsize=7)
            image_boxes = boxes[(boxes["image"] == image_name) & (boxes["finding"] == finding)]
            for box in image_boxes.itertuples():
                ax.add_patch(Rectangle((box.x, box.y), box.w, box.h, fill=False, edgecolor="#ff3b30", lw=1.2))
        axes[r, 0].text(-0.08, 0.5, finding, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    suffix = " (SYNTHETIC phantoms)" if synthetic else ""
    fig.suptitle(f"Sample images per label{suffix}; red: bounding box", y=1.0)
    fig.tight_layout()
    return fig

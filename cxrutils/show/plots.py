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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrutils.data.bboxes import BBOX_FRAME_PX
from cxrutils.labels import NO_FINDING
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.text import figure_text

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
        xlabel="width (px of the 1024-px NIH frame)",
        ylabel="height (px of the 1024-px NIH frame)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def gallery(
    samples: dict[str, list[str]],
    load: Callable[[str], np.ndarray],
    boxes: pd.DataFrame,
    synthetic: bool,
) -> Figure:
    """One row per finding; the finding's box drawn where the box file has one.

    Boxes are in the 1024-px NIH frame and are scaled onto each film as loaded.
    """
    rows = [finding for finding, images in samples.items() if images]
    if not rows:
        raise ValueError("no images to draw in the gallery: every sample list is empty")
    columns = max((len(samples[f]) for f in rows), default=1)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.3 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, finding in enumerate(rows):
        for c, image_name in enumerate(samples[finding]):
            ax = axes[r, c]
            pixels = load(image_name)
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
            ax.set_title(figure_text(image_name), fontsize=7)
            image_boxes = boxes[(boxes["image"] == image_name) & (boxes["finding"] == finding)]
            scale_y, scale_x = pixels.shape[0] / BBOX_FRAME_PX, pixels.shape[1] / BBOX_FRAME_PX
            for box in image_boxes.itertuples():
                ax.add_patch(Rectangle((box.x * scale_x, box.y * scale_y), box.w * scale_x, box.h * scale_y,
                                       fill=False, edgecolor="#ff3b30", lw=1.2))
        axes[r, 0].text(-0.08, 0.5, finding, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    suffix = " (SYNTHETIC phantoms)" if synthetic else ""
    fig.suptitle(f"Sample images per label{suffix}; red: bounding box", y=1.0)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame) -> Figure:
    """Loss, mean validation AUROC and learning rate per epoch; the best epoch marked."""
    fig, (loss_ax, auroc_ax, lr_ax) = plt.subplots(1, 3, figsize=(14, 3.8))
    loss_ax.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    loss_ax.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
    loss_ax.set(title="BCE loss", xlabel="epoch")
    loss_ax.legend()
    best = history.loc[history["val_auroc_mean"].idxmax()]
    auroc_ax.plot(history["epoch"], history["val_auroc_mean"], marker="o", color="#c44e52")
    auroc_ax.axvline(best["epoch"], color="grey", ls="--", lw=1)
    auroc_ax.set(title=f"Mean validation AUROC (best {best['val_auroc_mean']:.3f} at epoch {int(best['epoch'])})",
                 xlabel="epoch")
    lr_ax.plot(history["epoch"], history["lr"], marker="o", color="#55a868")
    lr_ax.set(title="Learning rate", xlabel="epoch", yscale="log")
    fig.tight_layout()
    return fig


def per_class_auroc_curves(history: pd.DataFrame) -> Figure:
    """Validation AUROC of each finding per epoch."""
    columns = [c for c in history.columns if c.startswith("val_auroc_") and c != "val_auroc_mean"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    palette = sns.color_palette("tab20", len(columns))
    for color, column in zip(palette, columns):
        ax.plot(history["epoch"], history[column], marker=".", color=color, label=column.removeprefix("val_auroc_"))
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set(title="Validation AUROC per finding", xlabel="epoch", ylabel="AUROC")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, titles: list[str], columns: int = 4, title: str = "") -> Figure:
    """Images (N, 1, H, W) or (N, H, W) in [0, 1], in a grid."""
    pixels = np.asarray(images)
    pixels = pixels[:, 0] if pixels.ndim == 4 else pixels
    rows = int(np.ceil(len(pixels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, name in zip(axes.flat, pixels, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(figure_text(name), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- evaluation figures
# Drawing only: curves come from sklearn, intervals and tables from cxrutils.stats.metrics and
# cxrutils.evaluate.localization, so every number in a figure is also in a table.


def _evaluation_grid(count: int, columns: int, panel: float = 2.9) -> tuple[Figure, np.ndarray]:
    rows = max(1, int(np.ceil(count / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(panel * columns, panel * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, axes.flat[:count]


def _models_and_tables(
    scores: np.ndarray | dict[str, np.ndarray], tables: pd.DataFrame | dict[str, pd.DataFrame] | None
) -> tuple[dict[str, np.ndarray], dict[str, pd.DataFrame]]:
    """One model (an array) or several (name -> array), each with its table if given."""
    models = dict(scores) if isinstance(scores, dict) else {"": np.asarray(scores)}
    if tables is None:
        return models, {}
    if isinstance(tables, pd.DataFrame):
        if len(models) != 1:
            raise ValueError("several models: pass their tables as a dict name -> table")
        return models, {next(iter(models)): tables}
    unknown = sorted(set(tables) - set(models))
    if unknown:
        raise ValueError(f"tables for {unknown}, which are not among the models {sorted(models)}")
    return models, dict(tables)


def _evaluation_class_names(n_classes: int, class_names: list[str] | None) -> list[str]:
    from cxrutils.labels import FINDINGS

    if class_names is not None:
        return list(class_names)
    if n_classes == len(FINDINGS):
        return list(FINDINGS)
    raise ValueError(f"{n_classes} columns are not the 14 findings: pass class_names")


def _with_interval(table: pd.DataFrame | None, finding: str, value_column: str) -> str:
    if table is None or finding not in table.index or pd.isna(table.loc[finding, value_column]):
        return ""
    row = table.loc[finding]
    text = f"{row[value_column]:.3f}"
    if "ci_low" in row and pd.notna(row["ci_low"]):
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return text


def roc_curves(
    labels: np.ndarray,
    scores: np.ndarray | dict[str, np.ndarray],
    class_names: list[str] | None = None,
    auroc_table: pd.DataFrame | dict[str, pd.DataFrame] | None = None,
    columns: int = 4,
) -> Figure:
    """ROC curve per class; AUROC with its bootstrap CI (``metrics.bootstrap_auroc``) in the title.

    ``scores`` is one model's (n, k) array or a dict name -> array to overlay models
    on the same labels; then each legend entry carries that model's AUROC.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels)
    models, tables = _models_and_tables(scores, auroc_table)
    names = _evaluation_class_names(labels.shape[1], class_names)
    fig, axes = _evaluation_grid(len(names), columns)
    for k, (ax, finding) in enumerate(zip(axes, names)):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.tick_params(labelsize=7)
        if labels[:, k].min() == labels[:, k].max():
            ax.set_title(f"{finding}\nundefined: one label value only", fontsize=8)
            continue
        value = ""
        for name, model_scores in models.items():
            fpr, tpr, _ = roc_curve(labels[:, k], np.asarray(model_scores)[:, k])
            value = _with_interval(tables.get(name), finding, "auroc") or (
                f"{roc_auc_score(labels[:, k], np.asarray(model_scores)[:, k]):.3f}")
            ax.plot(fpr, tpr, lw=1.3, label=f"{name} {value}".strip())
        if len(models) == 1:
            ax.set_title(f"{finding}\nAUROC {value}", fontsize=8)
        else:
            ax.set_title(finding, fontsize=9)
            ax.legend(fontsize=6, loc="lower right", title="AUROC", title_fontsize=6)
    fig.supxlabel("1 - specificity (false positive rate)")
    fig.supylabel("sensitivity")
    fig.tight_layout()
    return fig


def pr_curves(
    labels: np.ndarray,
    scores: np.ndarray | dict[str, np.ndarray],
    class_names: list[str] | None = None,
    columns: int = 4,
) -> Figure:
    """Precision-recall curve per class with its average precision; the dotted line is prevalence.

    On rare findings PR curves show what ROC curves hide: how many flagged images
    are false alarms. ``scores`` as in ``roc_curves``.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels = np.asarray(labels)
    models, _ = _models_and_tables(scores, None)
    names = _evaluation_class_names(labels.shape[1], class_names)
    fig, axes = _evaluation_grid(len(names), columns)
    for k, (ax, finding) in enumerate(zip(axes, names)):
        prevalence = labels[:, k].mean()
        ax.axhline(prevalence, color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.tick_params(labelsize=7)
        if not labels[:, k].any():
            ax.set_title(f"{finding}\nundefined: no positives", fontsize=8)
            continue
        ap = np.nan
        for name, model_scores in models.items():
            precision, recall, _ = precision_recall_curve(labels[:, k], np.asarray(model_scores)[:, k])
            ap = average_precision_score(labels[:, k], np.asarray(model_scores)[:, k])
            ax.step(recall, precision, where="post", lw=1.3, label=f"{name} {ap:.3f}".strip())
        if len(models) == 1:
            ax.set_title(f"{finding}\nAP {ap:.3f} (prevalence {prevalence:.3f})", fontsize=8)
        else:
            ax.set_title(f"{finding} (prevalence {prevalence:.3f})", fontsize=8)
            ax.legend(fontsize=6, loc="upper right", title="AP", title_fontsize=6)
    fig.supxlabel("recall (sensitivity)")
    fig.supylabel("precision (PPV)")
    fig.tight_layout()
    return fig


def reliability_diagrams(curves: pd.DataFrame, table: pd.DataFrame | None = None, columns: int = 4) -> Figure:
    """Observed positive rate against mean predicted probability per bin, one panel per finding.

    ``curves`` from ``metrics.reliability_curves``; ``table`` from
    ``metrics.calibration_table`` adds ECE and Brier to the titles. Marker area
    grows with the images in the bin; the diagonal is perfect calibration.
    """
    findings = list(pd.unique(curves["finding"]))
    fig, axes = _evaluation_grid(len(findings), columns)
    largest = max(float(curves["images"].max()), 1.0)
    for ax, finding in zip(axes, findings):
        part = curves[curves["finding"] == finding]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.plot(part["mean_probability"], part["fraction_positive"], color="#4c72b0", lw=1)
        ax.scatter(part["mean_probability"], part["fraction_positive"], s=8 + 80 * part["images"] / largest,
                   color="#4c72b0", zorder=3)
        title = finding
        if table is not None and finding in table.index:
            title += f"\nECE {table.loc[finding, 'ece']:.3f}, Brier {table.loc[finding, 'brier']:.3f}"
        ax.set_title(title, fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.tick_params(labelsize=7)
    fig.supxlabel("mean predicted probability")
    fig.supylabel("observed positive rate")
    fig.tight_layout()
    return fig


def reliability_equal_mass(
    curves: pd.DataFrame, recalibrated: pd.DataFrame | None = None, summary: pd.DataFrame | None = None,
    recalibration_name: str = "recalibrated", synthetic: bool = False, columns: int = 4,
) -> Figure:
    """Equal-mass reliability diagrams: each bin's observed rate with its interval against its mean probability.

    ``curves`` (and ``recalibrated``, drawn beside in orange) from
    ``calibration.equal_mass_reliability``; ``summary`` from ``calibration.calibration_summary``
    adds O/E and the slope to the titles. Each panel spans the probabilities it holds
    (a rare finding's sit near 0), so the diagonal is shown where the films are.
    """
    findings = list(pd.unique(curves["finding"]))
    fig, axes = _evaluation_grid(len(findings), columns)
    models = [("raw", curves, "#4c72b0")] + ([(recalibration_name, recalibrated, "#dd8452")]
                                              if recalibrated is not None else [])
    for ax, finding in zip(axes, findings):
        top = 0.0
        for label, frame, colour in models:
            part = frame[frame["finding"] == finding]
            if part.empty:
                continue
            low = (part["fraction_positive"] - part["ci_low"]).clip(lower=0).fillna(0)
            high = (part["ci_high"] - part["fraction_positive"]).clip(lower=0).fillna(0)
            ax.errorbar(part["mean_probability"], part["fraction_positive"], yerr=[low, high], color=colour,
                        marker="o", ms=3, lw=1, capsize=2, label=label)
            highest = part["ci_high"].max(skipna=True)
            top = max(top, float(part["mean_probability"].max()), float(highest) if pd.notna(highest) else 0.0)
        top = min(1.0, max(top * 1.1, 0.05))
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, top), ylim=(0, top))
        title = figure_text(finding)
        if summary is not None and finding in summary.index:
            row = summary.loc[finding]
            figures = [f"{name} {row[column]:.2f}" for name, column in (("O/E", "observed_expected"), ("slope", "slope"))
                       if pd.notna(row[column])]
            title += "\n" + (", ".join(figures) or "no positives or no negatives")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    if len(models) > 1 and len(axes):
        axes[0].legend(fontsize=7, loc="upper left")
    fig.supxlabel("mean predicted probability (equal-mass bins)")
    fig.supylabel("observed positive rate")
    if synthetic:
        fig.suptitle("SYNTHETIC phantoms", color="#b00020")
    fig.tight_layout()
    return fig


def subgroup_forest(table: pd.DataFrame, findings: list[str] | None = None, columns: int = 3) -> Figure:
    """AUROC with its bootstrap CI per subgroup value, one panel per finding.

    ``table`` from ``metrics.subgroup_auroc`` (several concatenated, e.g. sex, age
    band and view, are drawn together). ``findings`` picks panels, e.g. ``["mean"]``.
    """
    findings = list(pd.unique(table["finding"])) if findings is None else list(findings)
    fig, axes = _evaluation_grid(len(findings), columns, panel=4.2)
    for ax, finding in zip(axes, findings):
        part = table[table["finding"] == finding].reset_index(drop=True)
        positions = np.arange(len(part))[::-1]
        defined = part["auroc"].notna().to_numpy()
        low = (part["auroc"] - part["ci_low"]).to_numpy(dtype=float)
        high = (part["ci_high"] - part["auroc"]).to_numpy(dtype=float)
        ax.errorbar(part["auroc"][defined], positions[defined], xerr=[low[defined], high[defined]], fmt="o",
                    color="#4c72b0", ecolor="#4c72b0", capsize=2, ms=4)
        labels = []
        for row in part.itertuples():
            positives = "" if pd.isna(row.positives) else f", {int(row.positives)}+"
            patients = getattr(row, "positive_patients", np.nan)  # the unit the subgroup minimum counts
            positives += "" if pd.isna(patients) else f" of {int(patients)} pt"
            labels.append(f"{row.subgroup}: {row.value} ({row.images} img{positives})")
        ax.set_yticks(positions, labels, fontsize=7)
        hidden = "too few positive patients" if "positive_patients" in part else "too few positives"
        for y in positions[~defined]:
            ax.text(0.5, y, hidden, fontsize=7, va="center", color="grey")
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(finding, fontsize=9)
        ax.set_xlabel("AUROC", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def localization_gallery(
    images: np.ndarray,
    heatmaps: np.ndarray,
    boxes: list[tuple[float, float, float, float] | None],
    titles: list[str],
    columns: int = 4,
) -> Figure:
    """Grad-CAM over each image with the radiologist's box (white) in the same pixel frame.

    ``images`` (N, H, W) or (N, 1, H, W), uint8 or [0, 1]; ``heatmaps`` (N, H, W) in
    [0, 1]; ``boxes`` (x, y, w, h) in heatmap pixels (``localization.boxes_to_heatmap``)
    or None.
    """
    pixels = np.asarray(images)
    pixels = pixels[:, 0] if pixels.ndim == 4 else pixels
    maps = np.asarray(heatmaps)
    if not (len(pixels) == len(maps) == len(boxes) == len(titles)):
        raise ValueError(f"{len(pixels)} images, {len(maps)} heatmaps, {len(boxes)} boxes, {len(titles)} titles")
    fig, axes = _evaluation_grid(len(pixels), columns, panel=2.6)
    upper = 255 if pixels.dtype == np.uint8 else 1
    for ax, image, heatmap, box, title in zip(axes, pixels, maps, boxes, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=upper)
        ax.imshow(heatmap, cmap="jet", alpha=0.35, vmin=0, vmax=1,
                  extent=(0, image.shape[1], image.shape[0], 0))
        if box is not None:
            ax.add_patch(Rectangle((box[0], box[1]), box[2], box[3], fill=False, edgecolor="white", lw=1.4))
        ax.set_title(figure_text(title), fontsize=7)  # titles hold film names: a $ is not mathtext
        ax.axis("off")
    fig.tight_layout()
    return fig


def localization_comparison(
    scores: pd.DataFrame,
    baseline: pd.DataFrame | None = None,
    reference: pd.Series | None = None,
    metric: str = "t_iobb_0.1",
) -> Figure:
    """One localization accuracy per finding: the model, the random-heatmap chance level, and a published value.

    ``scores`` and ``baseline`` from ``localization.localization_scores`` and
    ``localization.random_baseline_scores``; ``reference`` e.g.
    ``metrics.wang2017_localization()`` (T(IoBB) = 0.1 only).
    """
    findings = list(scores.index)
    series = {"this model": scores[metric]}
    if baseline is not None:
        series["random heatmaps"] = baseline[metric].reindex(findings)
    if reference is not None:
        series["Wang et al. 2017"] = reference.reindex(findings)
    frame = pd.DataFrame(series, index=findings)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    frame.plot.bar(ax=ax, width=0.8, color=["#4c72b0", "#999999", "#dd8452"][: frame.shape[1]])
    counts = scores["boxes"].astype(int)
    ax.set_xticklabels([f"{f}\n({counts[f]} boxes)" for f in findings], rotation=0, fontsize=7)
    ax.set(ylim=(0, 1), ylabel=metric.replace("_", " "), xlabel="", title=f"Localization: {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- TorchXRayVision comparison
# Inputs come from cxrutils.compare.comparison: a PairedPredictions and compare_auroc's result.


def comparison_roc_curves(paired, auroc_table: pd.DataFrame | None = None, columns: int = 4) -> Figure:
    """Our model's and TorchXRayVision's ROC curves overlaid, one panel per shared finding.

    ``paired`` is a ``comparison.PairedPredictions``; ``auroc_table``
    (``compare_auroc(...).table``) puts each model's AUROC with its patient-bootstrap
    CI in the legend. The title names both models in full, random-weights label
    included (then in red).
    """
    ours_name, txv_name = paired.names["ours"], paired.names["txv"]
    random_init = "RANDOMLY INITIALISED" in txv_name
    # Short legend entries keep the panels readable; the full names go in the title.
    short = {"ours": "ours", "txv": "TXV (random weights)" if random_init else "TXV"}
    tables = None
    if auroc_table is not None:
        tables = {
            short[key]: auroc_table.rename(columns={f"auroc_{key}": "auroc", f"{key}_ci_low": "ci_low",
                                                    f"{key}_ci_high": "ci_high"})[["auroc", "ci_low", "ci_high"]]
            for key in ("ours", "txv")
        }
    fig = roc_curves(paired.labels, {short["ours"]: paired.ours, short["txv"]: paired.txv},
                     class_names=list(paired.findings), auroc_table=tables, columns=columns)
    fig.suptitle(f"ROC on {len(paired)} images. ours: {ours_name}; TXV: {txv_name}", fontsize=9,
                 color="#c44e52" if random_init else "black", wrap=True)
    fig.tight_layout()
    return fig


def draw_differences(ax: Axes, rows: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    """Each row's ``difference`` with its ``diff_ci_low``-``diff_ci_high`` bar at ``positions``, the mean row in red,
    and the line at zero; returns which rows are the mean."""
    defined = rows["difference"].notna().to_numpy()
    is_mean = (rows["finding"] == MEAN_ROW).to_numpy()
    for subset, color, marker in ((defined & ~is_mean, "#4c72b0", "o"), (defined & is_mean, "#c44e52", "D")):
        if subset.any():
            part = rows[subset]
            error = [(part["difference"] - part["diff_ci_low"]).to_numpy(dtype=float),
                     (part["diff_ci_high"] - part["difference"]).to_numpy(dtype=float)]
            ax.errorbar(part["difference"], positions[subset], xerr=error, fmt=marker, color=color, ecolor=color,
                        capsize=3, ms=5)
    ax.axvline(0.0, color="grey", lw=0.9, ls="--")
    return is_mean


def auroc_difference_forest(table: pd.DataFrame, names: dict[str, str], confidence: float = 0.95) -> Figure:
    """AUROC difference (ours - TorchXRayVision) per finding with its paired CI, the mean last.

    ``table``, ``names`` and ``confidence`` come from ``compare_auroc(...)``; the table
    gives ``difference``, ``diff_ci_low``, ``diff_ci_high`` and the Holm-adjusted
    ``p_holm`` (printed beside each row). Findings that were not scored are listed
    with the reason.
    """
    import textwrap

    rows = table.reset_index()
    positions = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.6))
    is_mean = draw_differences(ax, rows, positions)
    if is_mean.any():
        ax.axhline(positions[is_mean][0] + 0.5, color="grey", lw=0.5)
    ax.set_yticks(positions, [f"{f} ({int(p)}+)" if pd.notna(p) else f
                              for f, p in zip(rows["finding"], rows["positives"])])
    transform = ax.get_yaxis_transform()
    for y, row in zip(positions, rows.itertuples()):
        if pd.notna(row.difference):
            text = "" if pd.isna(row.p_holm) else f"p(Holm) {row.p_holm:.2g}"
        else:
            text = row.note or "not scored"
        ax.text(1.02, y, text, transform=transform, fontsize=7, va="center")
    ax.set_xlabel("AUROC difference, ours minus TorchXRayVision (> 0: ours higher)", fontsize=8)
    title = (f"AUROC difference with {confidence:.0%} paired patient-bootstrap CI. "
             f"ours: {names['ours']}; TorchXRayVision: {names['txv']}")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=8,
                 color="#c44e52" if "RANDOMLY INITIALISED" in names["txv"] else "black")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- inference on new films


# --------------------------------------------------------------------------- localization against the threshold


def localization_threshold_curves(
    scores: pd.DataFrame,
    baseline: pd.DataFrame,
    reference: pd.Series | pd.DataFrame | None = None,
    rows: list[str] | None = None,
) -> Figure:
    """Accuracy against T for Grad-CAM and random heatmaps, T(IoBB) left and T(IoU) right, one row per finding.

    ``scores`` and ``baseline`` as ``localization.localization_intervals`` gives them (an
    accuracy column per ``t_iobb_<T>`` / ``t_iou_<T>``, with ``_ci_low`` and ``_ci_high``
    drawn as bands where present); ``reference`` e.g. ``metrics.wang2017_localization()``
    (its ``t_iobb_<T>`` values drawn as points); ``rows`` default: every row of ``scores``.
    """
    rows = list(scores.index) if rows is None else rows
    if isinstance(reference, pd.Series):
        reference = reference.to_frame()
    families = (("t_iobb_", "T(IoBB)"), ("t_iou_", "T(IoU)"))
    fig, axes = plt.subplots(len(rows), 2, figsize=(8.0, 1.9 * len(rows) + 0.8), squeeze=False, sharey=True)
    for r, row in enumerate(rows):
        for c, (prefix, name) in enumerate(families):
            ax = axes[r, c]
            keys = [k for k in scores.columns if k.startswith(prefix) and not k.endswith(("_ci_low", "_ci_high"))]
            thresholds = np.array([float(k[len(prefix):]) for k in keys])
            for frame, label, colour in ((scores, "Grad-CAM", "#4c72b0"), (baseline, "random heatmaps", "#999999")):
                if frame is None or row not in frame.index or not keys:
                    continue
                ax.plot(thresholds, frame.loc[row, keys].to_numpy(float), marker="o", ms=3, color=colour, label=label)
                bounds = [f"{k}_ci_low" for k in keys], [f"{k}_ci_high" for k in keys]
                if all(b in frame.columns for b in bounds[0] + bounds[1]):
                    ax.fill_between(thresholds, frame.loc[row, bounds[0]].to_numpy(float),
                                    frame.loc[row, bounds[1]].to_numpy(float), color=colour, alpha=0.2, lw=0)
            if reference is not None and row in reference.index:
                published = [k for k in reference.columns if str(k).startswith(prefix)]
                values = reference.loc[row, published].to_numpy(float) if published else np.array([])
                if np.isfinite(values).any():
                    ax.plot([float(str(k)[len(prefix):]) for k in published], values, "D", color="#dd8452", ms=5,
                            label="Wang et al. 2017")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{figure_text(str(row))}: {name}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel(f"T ({name} >= T counts as located)", fontsize=8)
            if c == 0:
                ax.set_ylabel("accuracy", fontsize=8)
    seen: dict[str, object] = {}
    for ax in axes.ravel():  # a reference marker may appear in a later row only
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), loc="upper center", ncol=len(seen), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


def subgroup_difference_forest(differences: pd.DataFrame, finding: str = MEAN_ROW) -> Figure:
    """Each group's AUROC minus its variable's reference group's for ``finding`` (default: the mean), with its
    interval: ``group_differences.between_group_differences`` rows, several variables stacked."""
    rows = differences[differences["finding"] == finding].reset_index(drop=True)
    rows = rows.rename(columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
    positions = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(rows), 1) + 1.6))
    draw_differences(ax, rows.assign(finding="group"), positions)  # every row one colour: they are all the same kind
    labels = [f"{row.subgroup}: {row.value} - {row.reference}" for row in rows.itertuples()]
    ax.set_yticks(positions, labels, fontsize=8)
    for y, row in zip(positions, rows.itertuples()):
        if pd.isna(row.difference):
            ax.text(0.0, y, "  too few positive patients in a group", fontsize=7, va="center", color="grey")
        elif pd.notna(row.p_holm):
            ax.text(1.01, y, f"Holm p {row.p_holm:.2g}", transform=ax.get_yaxis_transform(), fontsize=7,
                    va="center")
    ax.set_xlabel(f"AUROC difference, group - reference ({finding})", fontsize=9)
    ax.set_title("Between-group differences (exploratory)", fontsize=10)
    fig.tight_layout()
    return fig


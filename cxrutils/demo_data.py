"""Build the phantom demo dataset in the real NIH layout.

Rows are real NIH rows (sampled by patient from the v2020 metadata shipped in
torchxrayvision), so prevalence, co-occurrence, ages, sexes, views and follow-ups
are the dataset's own, apart from deliberate oversampling of rare findings. The
images are rendered phantoms (``cxrutils.phantoms``), not real radiographs. The
folder says so in a README and a manifest, and every report built from it shows
a synthetic-data banner.

Output (the NIH box layout, Kaggle CSV quirks included)::

    images/*.png  Data_Entry_2017.csv  train_val_list.txt  test_list.txt
    BBox_List_2017.csv  README.md  PHANTOM_DATASET.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrutils.bboxes import write_bbox_list
from cxrutils.dataset import SYNTHETIC_MANIFEST_NAME
from cxrutils.labels import FINDINGS, NO_FINDING
from cxrutils.metadata import read_metadata
from cxrutils.phantoms import render_phantom
from cxrutils.progress import progress_bar
from cxrutils.splits import write_split_list

# Bump when the rendering or sampling changes, so cached demo data is rebuilt.
GENERATOR_VERSION = 5
KAGGLE_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
# About 0.5% of real films are RGBA; the demo keeps a few so that path is exercised.
RGBA_FRACTION = 0.01


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines a demo dataset; equal specs give identical files."""

    n_patients: int = 500
    image_size: int = 256
    seed: int = 0
    difficulty: float = 0.5
    min_images_per_finding: int = 40
    max_images_per_patient: int = 12
    test_fraction: float = 0.2


def sample_rows(metadata: pd.DataFrame, spec: DemoSpec) -> pd.DataFrame:
    """Real rows, whole patients at a time, rare findings oversampled.

    Each patient keeps at most ``max_images_per_patient`` of their first follow-ups
    (a few patients have over 100 films). Patients with the rarest findings are
    drawn first until each finding has ``min_images_per_finding`` images, then
    patients are drawn at random up to ``n_patients``.
    """
    rng = np.random.default_rng(spec.seed)
    capped = (
        metadata.sort_values(["patient_id", "follow_up"])
        .groupby("patient_id", sort=False)
        .head(spec.max_images_per_patient)
    )
    per_patient = capped.groupby("patient_id")[list(FINDINGS)].sum()
    chosen: list[int] = []
    counts = pd.Series(0, index=list(FINDINGS))
    for finding in per_patient.sum().sort_values().index:
        candidates = per_patient.index[per_patient[finding] > 0].to_numpy()
        candidates = rng.permutation(np.setdiff1d(candidates, chosen, assume_unique=True))
        for patient in candidates:
            if counts[finding] >= spec.min_images_per_finding:
                break
            chosen.append(int(patient))
            counts += per_patient.loc[patient]
    rest = rng.permutation(np.setdiff1d(per_patient.index.to_numpy(), chosen, assume_unique=True))
    chosen.extend(int(p) for p in rest[: max(0, spec.n_patients - len(chosen))])
    rows = capped[capped["patient_id"].isin(chosen)]
    return rows.sort_values("image").reset_index(drop=True)


def _render_one(task: tuple[int, tuple[str, ...], str, float, DemoSpec, str]) -> list[tuple]:
    """Render and save one image; return its box rows. Runs in a worker process."""
    row_number, findings, sex, age_years, spec, out_path = task
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, row_number]))
    phantom = render_phantom(
        findings, rng=rng, size=spec.image_size, difficulty=spec.difficulty, sex=sex, age_years=age_years
    )
    pixels = phantom.pixels
    if rng.random() < RGBA_FRACTION:
        opaque = np.full_like(pixels, 255)
        Image.fromarray(np.stack([pixels, pixels, pixels, opaque], axis=-1), mode="RGBA").save(out_path)
    else:
        Image.fromarray(pixels, mode="L").save(out_path)
    image = os.path.basename(out_path)
    return [(image, finding, *box) for finding, box in phantom.boxes.items()]


def build_demo_dataset(
    out_dir: str | os.PathLike[str], spec: DemoSpec = DemoSpec(), workers: int | None = None
) -> Path:
    """Write a complete phantom dataset to ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(read_metadata(None), spec)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-building-", dir=out_dir.parent))
    try:
        (staging / "images").mkdir()
        tasks = [
            (
                i,
                tuple(f for f in FINDINGS if row[f]),
                str(row["sex"]),
                float(row["age_years"]),
                spec,
                str(staging / "images" / row["image"]),
            )
            for i, row in rows.iterrows()
        ]
        workers = workers or min(4, os.cpu_count() or 1)
        box_rows: list[tuple] = []
        progress = progress_bar(total=len(tasks), desc="rendering phantoms", unit="img")
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap(_render_one, tasks, chunksize=16):
                    box_rows.extend(result)
                    progress.update()
        else:
            for task in tasks:
                box_rows.extend(_render_one(task))
                progress.update()
        progress.close()
        _write_metadata_csv(rows, staging / "Data_Entry_2017.csv")
        _write_split_lists(rows, spec, staging)
        boxes = pd.DataFrame(box_rows, columns=["image", "finding", "x", "y", "w", "h"])
        write_bbox_list(boxes, staging / "BBox_List_2017.csv")
        _write_markers(staging, spec, rows)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_demo_dataset(out_dir: str | os.PathLike[str], spec: DemoSpec = DemoSpec()) -> Path:
    """Build the demo dataset unless one with the same spec is already there."""
    out_dir = Path(out_dir)
    manifest = out_dir / SYNTHETIC_MANIFEST_NAME
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if recorded.get("spec") == asdict(spec) and recorded.get("generator_version") == GENERATOR_VERSION:
            return out_dir
    return build_demo_dataset(out_dir, spec)


def _write_metadata_csv(rows: pd.DataFrame, path: Path) -> None:
    """The Kaggle Data_Entry_2017.csv shape, trailing comma included."""
    lines = [KAGGLE_HEADER]
    for _, row in rows.iterrows():
        labels = "|".join(f for f in FINDINGS if row[f]) or NO_FINDING
        fields = [
            row["image"],
            labels,
            row["follow_up"],
            row["patient_id"],
            int(round(row["age_years"])),
            row["sex"],
            row["view"],
            row["width"],
            row["height"],
            row["pixel_spacing_x"],
            row["pixel_spacing_y"],
        ]
        lines.append(",".join(str(v) for v in fields) + ",")
    path.write_text("\n".join(lines) + "\n")


def _write_split_lists(rows: pd.DataFrame, spec: DemoSpec, folder: Path) -> None:
    patients = np.sort(rows["patient_id"].unique())
    rng = np.random.default_rng(spec.seed + 1000)
    test_patients = rng.choice(patients, size=int(round(spec.test_fraction * patients.size)), replace=False)
    is_test = rows["patient_id"].isin(test_patients)
    write_split_list(rows.loc[~is_test, "image"].tolist(), folder / "train_val_list.txt")
    write_split_list(rows.loc[is_test, "image"].tolist(), folder / "test_list.txt")


def _write_markers(folder: Path, spec: DemoSpec, rows: pd.DataFrame) -> None:
    manifest = {
        "synthetic": True,
        "generator": "cxrutils.demo_data",
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "images": int(len(rows)),
        "patients": int(rows["patient_id"].nunique()),
    }
    (folder / SYNTHETIC_MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    (folder / "README.md").write_text(
        "# SYNTHETIC DATA: phantom chest radiographs, not real patients\n\n"
        "Built by `cxrutils.demo_data` for demos and tests. The metadata rows are real\n"
        "NIH ChestX-ray14 rows (v2020, sampled by patient, rare findings oversampled),\n"
        "but every image is a rendered phantom. Nothing computed on this folder says\n"
        "anything about real chest X-rays.\n\n"
        f"Spec: `{json.dumps(asdict(spec))}`\n"
    )

"""Build phantom datasets in the real NIH layout: the demo root and the full-size rehearsal root.

**Demo** (``build_demo_dataset``): about 2,000 films of 500 patients, each rendered
as its own phantom, small enough to train on a CPU. Rows are real NIH rows (sampled by patient from the v2020 metadata shipped in
torchxrayvision), so prevalence, co-occurrence, ages, sexes, views and follow-ups
are the dataset's own, apart from deliberate oversampling of rare findings. The
images are rendered phantoms (``cxrutils.demo.phantoms``), not real radiographs. The
folder says so in a README and a manifest, and every report built from it shows
a synthetic-data banner.

Output (the NIH box layout, Kaggle CSV quirks included)::

    images/*.png  Data_Entry_2017.csv  train_val_list.txt  test_list.txt
    BBox_List_2017.csv  README.md  PHANTOM_DATASET.json

**Rehearsal** (``build_rehearsal_dataset``): the real dataset's size and files, for
finding what breaks only at full size. All 112,120 rows of the v2020 metadata (or a
``fraction`` of its patients) as ``Data_Entry_2017_v2020.csv``, the real box list,
official-sized patient-disjoint split lists, and one tiny film per row: a bank of
phantoms (a few per finding) is rendered once, and every film is one of them with its
own noise, so the whole root builds in a couple of minutes. Optionally without images,
as a user has it before the 42 GB download.

Both folders carry a README and ``PHANTOM_DATASET.json`` that mark them synthetic.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxrutils.data.bboxes import to_bbox_frame, write_bbox_list
from cxrutils.data.dataset import METADATA_ONLY, SYNTHETIC_MANIFEST_NAME
from cxrutils.data.layout import BBOX_NAME, TEST_LIST_NAME, TRAIN_VAL_LIST_NAME
from cxrutils.data.metadata import (
    SHIPPED_BBOX_NAME,
    SHIPPED_GOOGLE_LABELS_NAME,
    SHIPPED_METADATA_NAME,
    read_metadata,
    shipped_data_file,
)
from cxrutils.data.splits import OFFICIAL_TEST_IMAGES, write_split_list
from cxrutils.demo.phantoms import render_phantom
from cxrutils.files import write_json
from cxrutils.labels import FINDINGS, NO_FINDING
from cxrutils.paths import CONFIGS_DIR, resolve
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar
from cxrutils.settings import SettingsError, declared_phantom_roots

# Bump when the rendering or sampling changes, so cached demo data is rebuilt.
# 6: boxes are written in the 1024-px NIH frame, as BBox_List_2017.csv has them.
GENERATOR_VERSION = 6
REHEARSAL_GENERATOR_VERSION = 1
REHEARSAL_METADATA_NAME = "Data_Entry_2017_v2020.csv"
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
    rows = sample_rows(read_metadata(None), spec)
    with _staged(out_dir) as staging:
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
        box_rows: list[tuple] = []
        for result in _map_in_workers(_render_one, tasks, workers, "rendering phantoms", chunksize=16):
            box_rows.extend(result)
        _write_metadata_csv(rows, staging / "Data_Entry_2017.csv")
        _write_split_lists(rows, spec, staging)
        boxes = pd.DataFrame(box_rows, columns=["image", "finding", "x", "y", "w", "h"])
        # The phantoms' boxes are in their own pixels; the real file's are in the 1024-px NIH frame.
        write_bbox_list(to_bbox_frame(boxes, spec.image_size), staging / BBOX_NAME)
        _write_markers(staging, "demo", GENERATOR_VERSION, asdict(spec), rows)
    return Path(out_dir)


@contextmanager
def _staged(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging folder beside ``out_dir`` that replaces it when the block succeeds, and vanishes otherwise."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-building-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _map_in_workers(
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int | None,
    desc: str,
    chunksize: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    units: Callable[[Any], int] = lambda result: 1,
    total: int | None = None,
) -> Iterator[Any]:
    """``function`` over ``tasks`` in order, in spawned worker processes when ``workers`` > 1, with a bar."""
    workers = workers or min(4, os.cpu_count() or 1)
    progress = progress_bar(total=len(tasks) if total is None else total, desc=desc, unit="img",
                            done=f"{desc}: {{n:,}} films")
    try:
        if workers > 1 and len(tasks) > 1:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(tasks)), initializer=initializer, initargs=initargs) as pool:
                for result in pool.imap(function, tasks, chunksize=chunksize):
                    progress.update(units(result))
                    yield result
        else:
            if initializer is not None:
                initializer(*initargs)
            for task in tasks:
                result = function(task)
                progress.update(units(result))
                yield result
    finally:
        progress.close()


def ensure_demo_dataset(out_dir: str | os.PathLike[str], spec: DemoSpec = DemoSpec()) -> Path:
    """Build the demo dataset unless one with the same spec is already there."""
    if _built_with(out_dir, GENERATOR_VERSION, asdict(spec)):
        return Path(out_dir)
    return build_demo_dataset(out_dir, spec)


def _built_with(out_dir: str | os.PathLike[str], version: int, spec: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a finished build of this generator version and spec."""
    manifest = Path(out_dir) / SYNTHETIC_MANIFEST_NAME
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("spec") == spec and recorded.get("generator_version") == version


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


def _write_markers(folder: Path, kind: str, version: int, spec: dict[str, Any], rows: pd.DataFrame) -> None:
    manifest = {
        "synthetic": True,
        "generator": "cxrutils.demo.roots",
        "kind": kind,
        "generator_version": version,
        "spec": spec,
        "images": int(len(rows)),
        "patients": int(rows["patient_id"].nunique()),
    }
    write_json(folder / SYNTHETIC_MANIFEST_NAME, manifest)
    what = {
        "demo": "every image is a rendered phantom",
        "rehearsal": "every image is a tiny phantom (one of a small bank, with its own noise), made to rehearse the "
        "pipeline at the real dataset's size",
        "rehearsal-no-images": "there are no images yet, as before the 42 GB download",
    }[kind]
    (folder / "README.md").write_text(
        "# SYNTHETIC DATA: phantom chest radiographs, not real patients\n\n"
        f"Built by `cxrutils.demo.roots` ({kind}) for demos, tests and rehearsals. The metadata rows are real\n"
        f"NIH ChestX-ray14 rows (v2020), but {what}.\n"
        "Nothing computed on this folder says anything about real chest X-rays.\n\n"
        f"Spec: `{json.dumps(spec)}`\n"
    )


# --------------------------------------------------------------------------- the full-size rehearsal root


@dataclass(frozen=True)
class RehearsalSpec:
    """Everything that determines a rehearsal root; equal specs give identical files."""

    fraction: float = 1.0  # share of the real patients kept (1.0: all 112,120 rows)
    image_size: int = 64  # stored film size in px (the real PNGs are 1024)
    seed: int = 0
    variants: int = 16  # phantoms in the bank per finding (and for No Finding)
    difficulty: float = 0.2
    with_images: bool = True  # False: metadata, box list and split lists only


def rehearsal_rows(metadata: pd.DataFrame, spec: RehearsalSpec) -> pd.DataFrame:
    """The metadata rows of a rehearsal root: all of them, or ``fraction`` of the patients (seeded)."""
    if not 0 < spec.fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {spec.fraction}")
    if spec.fraction == 1:
        return metadata.reset_index(drop=True)
    patients = np.sort(metadata["patient_id"].unique())
    kept = np.random.default_rng(spec.seed).choice(patients, size=round(spec.fraction * patients.size), replace=False)
    return metadata[metadata["patient_id"].isin(kept)].reset_index(drop=True)


def official_shaped_split(rows: pd.DataFrame, spec: RehearsalSpec) -> pd.Series:
    """A patient-disjoint train_val / test assignment the size and shape of the official lists.

    The real lists are not shipped, so this draws one with their properties: 25,596
    test images of about 2,797 patients (scaled by the share of rows kept), every
    boxed film and every film of the radiologist-labelled ``test`` set in test, and
    that set's ``val`` films in train_val, as in the real lists. Test patients are
    drawn so that the test patients average about 9 films, as the official ones do.
    """
    images_per_patient = rows.groupby("patient_id").size()
    scale = len(rows) / 112_120
    target_images = round(OFFICIAL_TEST_IMAGES * scale)
    patient_of = rows.set_index("image")["patient_id"]
    boxed = pd.Index(_shipped_box_images()).intersection(patient_of.index)
    google = _shipped_google_sets()
    google_test = google.index[google == "test"].intersection(patient_of.index)
    google_val = google.index[google == "val"].intersection(patient_of.index)
    forced_test = set(patient_of.loc[boxed.append(google_test)])
    forced_train_val = set(patient_of.loc[google_val]) - forced_test
    in_test = images_per_patient.index.isin(list(forced_test))
    taken = int(images_per_patient[in_test].sum())
    # Weighted draw without replacement (Efraimidis-Spirakis): key = u ** (1 / weight), largest first. The
    # forced patients are heavy (sick, many follow-ups), so the rest are drawn leaning to lighter ones
    # (weight n ** -0.3): the test list then has about the official number of patients (2,741 of 2,797).
    candidates = images_per_patient[~in_test & ~images_per_patient.index.isin(list(forced_train_val))]
    rng = np.random.default_rng(spec.seed + 2024)
    keys = rng.random(candidates.size) ** (1.0 / candidates.to_numpy(dtype=float) ** -0.3)
    order = candidates.index[np.argsort(-keys, kind="stable")]
    chosen = list(forced_test)
    remaining = target_images - taken
    for patient, films in candidates.reindex(order).items():
        if remaining <= 0:
            break
        if films <= remaining:  # whole patients only; the last slots are filled exactly by small ones
            chosen.append(patient)
            remaining -= int(films)
    side = np.where(rows["patient_id"].isin(chosen), "test", "train_val")
    return pd.Series(side, index=pd.Index(rows["image"], name="image"), name="official_list")


def build_rehearsal_dataset(
    out_dir: str | os.PathLike[str], spec: RehearsalSpec = RehearsalSpec(), workers: int | None = None
) -> Path:
    """Write a full-size (or ``fraction``-size) NIH-shaped root to ``out_dir`` (replaced atomically)."""
    rows = rehearsal_rows(read_metadata(None), spec)
    lists = official_shaped_split(rows, spec)
    kept = set(rows["image"])
    with _staged(out_dir) as staging:
        # The real files' own lines (v2020 header, their number formatting), filtered to the rows kept.
        _copy_shipped_lines(SHIPPED_METADATA_NAME, staging / REHEARSAL_METADATA_NAME, kept)
        _copy_shipped_lines(SHIPPED_BBOX_NAME, staging / BBOX_NAME, kept)
        # Sorted by name, as the real lists are.
        write_split_list(sorted(lists.index[lists == "train_val"]), staging / TRAIN_VAL_LIST_NAME)
        write_split_list(sorted(lists.index[lists == "test"]), staging / TEST_LIST_NAME)
        if spec.with_images:
            _write_rehearsal_images(rows, spec, staging / "images", workers)
        kind = "rehearsal" if spec.with_images else "rehearsal-no-images"
        _write_markers(staging, kind, REHEARSAL_GENERATOR_VERSION, asdict(spec), rows)
    return Path(out_dir)


def rehearsal_root_is_built(out_dir: str | os.PathLike[str], spec: RehearsalSpec) -> bool:
    """True when ``out_dir`` holds a finished rehearsal root of this spec (and generator version)."""
    return _built_with(out_dir, REHEARSAL_GENERATOR_VERSION, asdict(spec))


def ensure_rehearsal_dataset(out_dir: str | os.PathLike[str], spec: RehearsalSpec = RehearsalSpec()) -> Path:
    """Build the rehearsal root unless one with the same spec is already there."""
    if rehearsal_root_is_built(out_dir, spec):
        return Path(out_dir)
    return build_rehearsal_dataset(out_dir, spec)


def _copy_shipped_lines(shipped_name: str, destination: Path, images: set[str]) -> None:
    """The header and the lines of ``images`` of a CSV shipped in torchxrayvision, bytes as they are."""
    with gzip.open(shipped_data_file(shipped_name), "rt", newline="") as source:
        header, *lines = source.read().splitlines(keepends=True)
    kept = [line for line in lines if line.split(",", 1)[0] in images]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    destination.write_text(header + "".join(kept), newline="")


def _shipped_box_images() -> list[str]:
    with gzip.open(shipped_data_file(SHIPPED_BBOX_NAME), "rt") as source:
        return [line.split(",", 1)[0] for line in source.read().splitlines()[1:] if line.strip()]


def _shipped_google_sets() -> pd.Series:
    """Image -> "test" / "val" of the radiologist-labelled films (Majkowska et al. 2019)."""
    google = pd.read_csv(shipped_data_file(SHIPPED_GOOGLE_LABELS_NAME), usecols=["Image Index", "Set Id"], dtype=str)
    return google.set_index("Image Index")["Set Id"]


# Rehearsal films are written by worker processes from a shared bank, a chunk of rows per task.
_bank: np.ndarray | None = None
_images_folder: Path | None = None
_REHEARSAL_CHUNK = 2_000
_NOISE_SIGMA = 3.0


def _init_rehearsal_worker(bank: np.ndarray, folder: str) -> None:
    global _bank, _images_folder
    _bank, _images_folder = bank, Path(folder)


def _write_rehearsal_chunk(task: tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]) -> int:
    """Write one chunk of films: bank entry + the film's own noise and exposure, a few stored as RGBA."""
    names, labels, variants, rgba, seed = task
    assert _bank is not None and _images_folder is not None, "worker not initialised"
    rng = np.random.default_rng(seed)
    for name, label, variant, as_rgba in zip(names, labels, variants, rgba):
        film = _bank[label, variant].astype(np.float32)
        film = film * rng.uniform(0.9, 1.1) + rng.normal(0.0, _NOISE_SIGMA, film.shape)
        pixels = np.clip(np.round(film), 0, 255).astype(np.uint8)
        if as_rgba:
            opaque = np.full_like(pixels, 255)
            Image.fromarray(np.stack([pixels, pixels, pixels, opaque], axis=-1), mode="RGBA").save(_images_folder / name)
        else:
            Image.fromarray(pixels, mode="L").save(_images_folder / name)
    return len(names)


def _render_bank(spec: RehearsalSpec) -> np.ndarray:
    """(15, variants, S, S): ``variants`` phantoms with each finding alone, then with none."""
    bank = np.empty((len(FINDINGS) + 1, spec.variants, spec.image_size, spec.image_size), dtype=np.uint8)
    for label, finding in enumerate((*FINDINGS, None)):
        for variant in range(spec.variants):
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, label, variant]))
            findings = () if finding is None else (finding,)
            sex = "M" if variant % 2 == 0 else "F"
            bank[label, variant] = render_phantom(
                findings, rng=rng, size=spec.image_size, difficulty=spec.difficulty, sex=sex
            ).pixels
    return bank


def _write_rehearsal_images(rows: pd.DataFrame, spec: RehearsalSpec, folder: Path, workers: int | None) -> None:
    """One film per row, showing its rarest finding (or none), from the bank."""
    folder.mkdir()
    bank = _render_bank(spec)
    findings = rows[list(FINDINGS)].to_numpy(dtype=bool)
    rarity = np.argsort(np.argsort(findings.sum(axis=0)))  # 0 for the rarest finding in these rows
    ranked = np.where(findings, rarity[None, :], len(FINDINGS))
    labels = np.where(findings.any(axis=1), ranked.argmin(axis=1), len(FINDINGS))
    rng = np.random.default_rng(spec.seed + 7)
    variants = rng.integers(0, spec.variants, size=len(rows))
    rgba = rng.random(len(rows)) < RGBA_FRACTION
    names = rows["image"].tolist()
    tasks = [
        (names[start : start + _REHEARSAL_CHUNK], labels[start : start + _REHEARSAL_CHUNK],
         variants[start : start + _REHEARSAL_CHUNK], rgba[start : start + _REHEARSAL_CHUNK], spec.seed * 100_003 + start)
        for start in range(0, len(rows), _REHEARSAL_CHUNK)
    ]
    for _ in _map_in_workers(
        _write_rehearsal_chunk, tasks, workers, "writing rehearsal films", chunksize=1,
        initializer=_init_rehearsal_worker, initargs=(bank, str(folder)), units=lambda written: written,
        total=len(rows),
    ):
        pass


# --------------------------------------------------------------------------- the data a notebook or the runner reads


def phantom_roots(configs_dir: Path | None = None) -> dict[Path, DemoSpec | RehearsalSpec]:
    """The phantom roots the report profiles declare (``demo_data``, ``rehearsal_data``), by resolved folder."""
    spec_types: dict[str, type[DemoSpec] | type[RehearsalSpec]] = {"demo_data": DemoSpec,
                                                                    "rehearsal_data": RehearsalSpec}
    roots: dict[Path, DemoSpec | RehearsalSpec] = {}
    for root, declared in declared_phantom_roots(configs_dir or CONFIGS_DIR).items():
        spec_type = spec_types[declared.key]
        known = [item.name for item in fields(spec_type)]
        unknown = sorted(set(declared.spec) - set(known))
        if unknown:
            raise SettingsError(f"{declared.profile_path}: {declared.key} has unknown key(s) {unknown}; "
                                f"known: root, {', '.join(known)}")
        roots[root] = spec_type(**declared.spec)
    return roots


def prepare_data_root(data_root: str | os.PathLike[str] | None, configs_dir: Path | None = None) -> None:
    """Make the data root a notebook (or the reports runner) reads ready, or say what to set.

    A phantom root that a report profile declares (``data/demo``) is built if it is
    missing or was built from other settings; a real root that is not there stops here
    with the folder it looked for and the setting that points elsewhere.
    """
    how = ("set data_root to your NIH ChestX-ray14 folder (the one holding Data_Entry_2017*.csv and the images): "
           "in a notebook's parameters cell, settings = {'data_root': '/data/nih'}; with the reports runner, "
           "--set data_root=/data/nih. data_root='data/demo' uses the phantom demo dataset (built on first use) and "
           "'metadata-only' the metadata shipped in torchxrayvision, without images")
    if not data_root:
        raise ValueError(f"data_root is not set: {how}")
    if str(data_root) == METADATA_ONLY:
        return
    root = resolve(data_root)
    spec = phantom_roots(configs_dir).get(root)
    if isinstance(spec, DemoSpec) and not _built_with(root, GENERATOR_VERSION, asdict(spec)):
        print(f"building the phantom demo dataset in {root} (it is missing or was built from other settings)",
              flush=True)
        with stage("build root"):
            build_demo_dataset(root, spec)
    elif isinstance(spec, RehearsalSpec) and not rehearsal_root_is_built(root, spec):
        print(f"building the full-size rehearsal root in {root}", flush=True)
        with stage("build root"):
            build_rehearsal_dataset(root, spec)
    elif spec is None and not root.is_dir():
        raise FileNotFoundError(f"data_root {str(data_root)!r}: there is no folder {root}. To read another folder, {how}")

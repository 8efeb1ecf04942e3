"""Phantom roots of the five external collections, in their published layouts, from the metadata torchxrayvision ships.

``build_external_root(out_dir, ExternalRootSpec(collection, n_patients=...))`` writes:

- the collection's metadata file where and as the collection publishes it, its rows
  being real shipped rows (whole patients, every view) and its text the shipped file's
  own (same columns, quoting and number formatting: a byte-for-byte copy when all rows are
  kept, checked in the tests; a VinDr root with films scales its box coordinates, below): CheXpert ``CheXpert-v1.0-small/train.csv``, PadChest
  ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz``, VinDr ``train.csv``, RSNA
  ``stage_2_train_labels.csv``, SIIM ``train-rle.csv``;
- one phantom film per listed film in the collection's format and folder, at
  ``image_size`` pixels: CheXpert 8-bit JPEG ``train/patientN/studyN/viewN_*.jpg``, PadChest
  16-bit PNG (12 bits used, as its BitsStored) ``<ImageDir>/<ImageID>``, VinDr 12-bit DICOM
  ``train/<image_id>.dicom`` (MONOCHROME1 and MONOCHROME2 in turn, with a window, as its
  films come), RSNA 8-bit DICOM ``stage_2_train_images/<patientId>.dcm`` whose header holds
  the film's real ViewPosition, PatientSex and PatientAge (TorchXRayVision's header table),
  SIIM 8-bit DICOM ``dicom-images-train/<study>/<series>/<ImageId>.dcm`` (study and series
  UIDs made up from the ImageId: the CSV does not give them; no patient, sex or view in the
  header, since nothing shipped says them);
- ``README.md`` and ``PHANTOM_DATASET.json`` that mark the root synthetic.

**VinDr's boxes on phantom films.** VinDr-CXR draws its boxes in each real film's own pixels
(about 2,000-3,000 px; the CSV does not give the film's size), so on a phantom film of
``image_size`` px every shipped box would lie outside its film. A VinDr root written with
films therefore scales each film's box coordinates as if the real film had been shrunk to
``image_size`` (``scale_vindr_boxes``: the real side taken as the smallest multiple of
``VINDR_FRAME_STEP`` px reaching the film's largest coordinate), so that its boxes land inside
its phantom film and localization runs end to end; rows without a box, and rows whose
coordinates are not numbers, stay as shipped. A VinDr root without films keeps the shipped
file byte for byte, as a user has it before the download.

A film shows the phantom of its rarest mapped finding (or none), drawn from a small bank
of phantoms rendered once (``cxrutils.demo.phantoms``, which draws PA films only, so a
lateral film is a frontal phantom too), with its own noise. CheXpert's valid.csv is not
shipped, so a phantom CheXpert root has train.csv only.

**Samples and the full size.** ``n_patients`` draws that many whole patients (seeded),
first a few with each mapped finding (``positives_per_finding``) so that a small sample
still has positives, then at random. ``n_patients=None`` keeps every shipped row for the
full-size rehearsal (``cxrutils.publish.rehearsal``): the metadata is written in seconds, and
the films only with ``with_images=True``: one small file per listed row, written a chunk of
rows at a time by worker processes (``_CHUNK_FILMS``; each chunk draws its own seeded noise,
so the files do not depend on how many processes wrote them). Without images a root is what
a user has before the download: every film is reported missing by ``load_external``.
A root is built in a staging folder beside ``out_dir`` that replaces it only once complete,
manifest last, and ``ensure_external_root`` reuses a root only when its manifest records the
same spec and generator version: a killed build is never reused half-written.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrutils.data.dataset import SYNTHETIC_MANIFEST_NAME
from cxrutils.data.dicom import write_dicom
from cxrutils.data.external import chexpert, rsna, siim, vindr
from cxrutils.data.external.common import ExternalOptions, join_inside
from cxrutils.data.external.loading import collection_reader, shipped_raw
from cxrutils.demo.phantoms import render_phantom
from cxrutils.demo.roots import _built_with, _map_in_workers, _staged
from cxrutils.files import write_json
from cxrutils.labels import FINDINGS

# 2: films written a chunk at a time, each chunk with its own seeded noise (in worker processes at scale).
# 3: a VinDr root with films writes its boxes scaled onto the phantom films (scale_vindr_boxes), so they localize.
EXTERNAL_GENERATOR_VERSION = 3
_BANK_VARIANTS = 4
_NOISE_SIGMA = 3.0
_PADCHEST_MAX = 4095  # PadChest's films store 12 bits in 16-bit PNGs


@dataclass(frozen=True)
class ExternalRootSpec:
    """Everything that determines a phantom external root; equal specs give the same files."""

    collection: str
    n_patients: int | None = 40  # None: every shipped row (the full-size rehearsal)
    seed: int = 0
    image_size: int = 64
    with_images: bool = True
    positives_per_finding: int = 2


def sample_raw(collection: str, raw: pd.DataFrame, spec: ExternalRootSpec) -> pd.DataFrame:
    """Shipped rows of ``spec.n_patients`` whole patients (all their films, every view), in the file's order."""
    if spec.n_patients is None:
        return raw
    reader = collection_reader(collection)
    frame = reader.to_frame(raw, ExternalOptions(read_headers=False), "train")
    patients = frame.groupby("patient_id", sort=True)
    rng = np.random.default_rng(spec.seed)
    chosen: list[str] = []
    frontal = frame[frame["frontal"].astype(bool)]
    positives = frontal[list(reader.label_map.mapped)].fillna(0).gt(0)
    for finding in positives.sum().sort_values(kind="stable").index:
        taken = set(chosen)
        candidates = pd.unique(frontal.loc[positives[finding], "patient_id"])
        candidates = [p for p in rng.permutation(np.asarray(candidates, dtype=object)) if p not in taken]
        chosen.extend(candidates[: spec.positives_per_finding])
    taken = set(chosen)
    rest = [p for p in rng.permutation(np.asarray(list(patients.groups), dtype=object)) if p not in taken]
    chosen.extend(rest[: max(0, spec.n_patients - len(chosen))])
    films = set(frame.loc[frame["patient_id"].isin(chosen), "film"])
    return raw[raw[reader.film_column].isin(films)]


def shipped_patients(collection: str) -> int:
    """How many patients the shipped metadata lists (every view), the whole a ``n_patients`` sample is drawn from."""
    frame = collection_reader(collection).to_frame(shipped_raw(collection), ExternalOptions(read_headers=False), "train")
    return int(frame["patient_id"].nunique())


def write_published_csv(raw: pd.DataFrame, path: Path) -> None:
    """Rows as the collection's file has them (text fields written back as read; PadChest's blank first header)."""
    header = ["" if str(column).startswith("Unnamed: 0") else column for column in raw.columns]
    text = raw.to_csv(index=False, header=header, lineterminator="\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")


# Real VinDr films are a few thousand pixels a side in sizes that are not published per film; a frame rounded up to
# this step from the film's largest coordinate is a plain, stated stand-in that holds every box of the film.
VINDR_FRAME_STEP = 256


def scale_vindr_boxes(raw: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """VinDr rows with each film's box coordinates scaled from the real film's pixels onto an ``image_size`` phantom.

    A boxed row is one of a class other than 'No finding' whose four coordinates all read as
    finite numbers (as ``vindr.boxes`` reads them). A film's real side is taken as the smallest
    multiple of ``VINDR_FRAME_STEP`` at least the largest coordinate of its boxed rows, and each
    of their coordinates becomes ``value * image_size / side``: the film shrunk to
    ``image_size`` as a whole, so every box lies inside it and keeps its shape. The scaled
    numbers are written as pandas writes a float, the way the shipped file writes its own
    ('691.0', '21.59375'). Every other field, and every other row ('No finding', blank
    coordinates, coordinates that are not numbers: the reader still sets those apart), stays
    text as shipped. Vectorised (a groupby per film): the full 67,914 rows take about half a second.
    """
    fields = list(vindr.BOX_FIELDS)
    numbers = raw[fields].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    boxed = np.isfinite(numbers).all(axis=1) & (raw["class_name"].to_numpy(dtype=object) != vindr.NO_FINDING)
    if not boxed.any():
        return raw
    reach = pd.Series(numbers[boxed].max(axis=1)).groupby(
        raw["image_id"].to_numpy(dtype=object)[boxed]).transform("max").to_numpy()
    side = np.maximum(np.ceil(reach / VINDR_FRAME_STEP), 1.0) * VINDR_FRAME_STEP
    scaled = (numbers[boxed] * image_size / side[:, None]).astype(str)
    written = raw.copy()
    for k, column in enumerate(fields):
        written.loc[boxed, column] = scaled[:, k]
    return written


@functools.lru_cache(maxsize=4)
def _bank(image_size: int, seed: int) -> np.ndarray:
    """(15, variants, S, S) uint8: phantoms with each NIH finding alone, then with none."""
    bank = np.empty((len(FINDINGS) + 1, _BANK_VARIANTS, image_size, image_size), dtype=np.uint8)
    for label, finding in enumerate((*FINDINGS, None)):
        for variant in range(_BANK_VARIANTS):
            rng = np.random.default_rng(np.random.SeedSequence([seed, label, variant, 23]))
            bank[label, variant] = render_phantom(() if finding is None else (finding,), rng=rng, size=image_size,
                                                  sex="M" if variant % 2 == 0 else "F").pixels
    return bank


def _film_labels(frame: pd.DataFrame, mapped: tuple[str, ...]) -> np.ndarray:
    """Bank row of each film: its rarest positive mapped finding in this frame, else 'none' (the last row)."""
    positives = frame[list(FINDINGS)].fillna(0).to_numpy() > 0
    positives[:, [i for i, finding in enumerate(FINDINGS) if finding not in mapped]] = False
    rarity = np.argsort(np.argsort(positives.sum(axis=0), kind="stable"), kind="stable")
    ranked = np.where(positives, rarity[None, :], len(FINDINGS))
    rarest = np.argsort(rarity)[ranked.argmin(axis=1)]
    return np.where(positives.any(axis=1), rarest, len(FINDINGS))


def _siim_uids(image_id: str) -> tuple[str, str]:
    """Made-up study and series UIDs for a SIIM film: its ImageId with the instance's ``.4.`` as ``.2.`` and ``.3.``.

    (The real ones share the ImageId's stem in the same way; the CSV does not give them.)
    """
    at = image_id.find(".4.")
    if at < 0:
        return f"{image_id}.2", f"{image_id}.3"
    return f"{image_id[:at]}.2.{image_id[at + 3:]}", f"{image_id[:at]}.3.{image_id[at + 3:]}"


def _film_targets(collection: str, root: Path, frame: pd.DataFrame) -> list[str]:
    """Where the collection's layout puts each film under ``root`` ("" where its name could leave the root)."""
    films = frame["film"].astype(str).tolist()
    if collection == "chexpert":  # Path below the dataset folder, whose name its first component repeats
        folder = root / chexpert.FOLDER_NAMES[0]
        return [join_inside(folder, film.split("/", 1)[1]) if "/" in film else "" for film in films]
    if collection == "padchest":
        return [join_inside(root, folder, film) for folder, film in zip(frame["raw:ImageDir"].astype(str), films)]
    if collection == "vindr":
        return [join_inside(root, vindr.IMAGES_FOLDER, film + vindr.SUFFIX) for film in films]
    if collection == "rsna":
        return [join_inside(root, rsna.IMAGES_FOLDER, film + rsna.SUFFIX) for film in films]
    return [join_inside(root, siim.IMAGES_FOLDER, *_siim_uids(film), film + siim.SUFFIX) for film in films]


def _rsna_header_facts(frame: pd.DataFrame) -> list[tuple[str, str, str] | None]:
    """Each RSNA film's (PatientSex, PatientAge, ViewPosition) from TorchXRayVision's header table, None if absent."""
    headers = rsna.shipped_headers()
    known = frame["film"].astype(str).isin(headers.index).tolist()
    facts = headers.reindex(frame["film"].astype(str))[["PatientSex", "PatientAge", "ViewPosition"]]
    return [tuple(row) if present else None for row, present in zip(facts.itertuples(index=False), known)]


def _write_film(collection: str, path: str, film: str, pixels: np.ndarray, position: int,
                facts: tuple[str, str, str] | None) -> None:
    """One film in the collection's format at ``path`` (its folder exists)."""
    if collection == "chexpert":
        Image.fromarray(pixels, mode="L").save(path, format="JPEG", quality=90)
    elif collection == "padchest":
        stored = np.round(pixels.astype(np.float64) * (_PADCHEST_MAX / 255.0)).astype(np.uint16)
        # zlib's fastest level: half the time of the default, files 1% larger, the same pixels.
        Image.fromarray(stored).save(path, format="PNG", compress_level=1)
    elif collection == "vindr":
        values = np.round(pixels.astype(np.float64) * (4095 / 255.0)).astype(np.uint16)
        monochrome1 = position % 2 == 1
        write_dicom(path, 4095 - values if monochrome1 else values, bits_stored=12, view=None,
                    photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2", window=(2048.0, 4096.0, "LINEAR"))
    elif collection == "rsna":
        extra = {"PatientID": film, "BodyPartExamined": "CHEST"}
        if facts is not None:
            extra.update({"PatientSex": facts[0], "PatientAge": facts[1]})
        with warnings.catch_warnings():
            # The challenge's files write PatientAge as '51', not the standard '051Y'; kept as they have it.
            warnings.filterwarnings("ignore", message="Invalid value for VR AS")
            write_dicom(path, pixels, modality="CR", view=None if facts is None else facts[2] or None, extra=extra)
    elif collection == "siim":
        study, series = _siim_uids(film)
        write_dicom(path, pixels, modality="CR", view=None,
                    extra={"SOPInstanceUID": film, "StudyInstanceUID": study, "SeriesInstanceUID": series})


# Films are written a chunk at a time, each chunk with its own seeded noise: the files depend on the spec alone, not
# on how many processes wrote them. The bank reaches each worker process once, through the pool's initializer.
_CHUNK_FILMS = 2_000
_worker_bank: np.ndarray | None = None


def _init_film_writer(bank: np.ndarray) -> None:
    global _worker_bank
    _worker_bank = bank


def _write_film_chunk(task: tuple[str, int, list[tuple[int, str, str, int, tuple[str, str, str] | None]]]) -> int:
    """Write one chunk of films (position, film, path, bank row, header facts): the bank entry with its own noise."""
    collection, seed, films = task
    assert _worker_bank is not None, "film writer not initialised"
    rng = np.random.default_rng(seed)
    made: set[str] = set()
    for position, film, path, label, facts in films:
        variant = int(rng.integers(0, _BANK_VARIANTS))
        noisy = (_worker_bank[label, variant].astype(np.float64) * rng.uniform(0.9, 1.1)
                 + rng.normal(0.0, _NOISE_SIGMA, _worker_bank.shape[2:]))
        folder = os.path.dirname(path)
        if folder not in made:  # one mkdir per folder and chunk, not per film (CheXpert: a folder per study)
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        _write_film(collection, path, film, np.clip(np.round(noisy), 0, 255).astype(np.uint8), position, facts)
    return len(films)


def _write_films(spec: ExternalRootSpec, frame: pd.DataFrame, root: Path, workers: int | None) -> None:
    """One phantom film per row of ``frame`` where the layout puts it, a chunk of rows per task (module docstring)."""
    reader = collection_reader(spec.collection)
    targets = _film_targets(spec.collection, root, frame)
    labels = _film_labels(frame, reader.label_map.mapped).tolist()
    facts = _rsna_header_facts(frame) if spec.collection == "rsna" else [None] * len(frame)
    films = [(position, film, path, label, fact) for position, (film, path, label, fact)
             in enumerate(zip(frame["film"].astype(str).tolist(), targets, labels, facts)) if path]
    tasks = [(spec.collection, int(np.random.SeedSequence([spec.seed, 7, start]).generate_state(1)[0]),
              films[start:start + _CHUNK_FILMS]) for start in range(0, len(films), _CHUNK_FILMS)]
    for _ in _map_in_workers(_write_film_chunk, tasks, workers, f"writing {reader.title} phantom films", chunksize=1,
                             initializer=_init_film_writer, initargs=(_bank(spec.image_size, spec.seed),),
                             units=lambda written: written, total=len(films)):
        pass


def build_external_root(out_dir: str | os.PathLike[str], spec: ExternalRootSpec, workers: int | None = None) -> Path:
    """Write a phantom root of ``spec.collection`` in its published layout to ``out_dir`` (replaced atomically).

    ``workers``: processes writing films (default: up to 4, as the cores allow); a root of
    one chunk (``_CHUNK_FILMS``) is written in this process. The files do not depend on it.
    """
    reader = collection_reader(spec.collection)
    rows = sample_raw(spec.collection, shipped_raw(spec.collection), spec)
    with _staged(out_dir) as staging:
        metadata_path = staging / reader.metadata_name
        # Boxes on the phantom films' pixels where there are films (module docstring); the labels do not use them.
        scale_boxes = spec.collection == "vindr" and spec.with_images
        write_published_csv(scale_vindr_boxes(rows, spec.image_size) if scale_boxes else rows, metadata_path)
        frame = reader.to_frame(rows.reset_index(drop=True), ExternalOptions(read_headers=False), "train")
        if spec.with_images:
            _write_films(spec, frame, staging, workers)
        patients = int(frame["patient_id"].nunique())
        _write_markers(staging, spec, films=len(frame), patients=patients, metadata_name=reader.metadata_name)
    return Path(out_dir)


def external_root_is_built(out_dir: str | os.PathLike[str], spec: ExternalRootSpec) -> bool:
    """True when ``out_dir`` holds a finished root of this spec and generator version (its manifest is written last,
    inside the staging folder that replaces ``out_dir`` whole, so a killed build leaves none)."""
    return _built_with(out_dir, EXTERNAL_GENERATOR_VERSION, asdict(spec))


def ensure_external_root(out_dir: str | os.PathLike[str], spec: ExternalRootSpec, workers: int | None = None) -> Path:
    """Build the root unless one from the same spec and generator version is already there."""
    if external_root_is_built(out_dir, spec):
        return Path(out_dir)
    return build_external_root(out_dir, spec, workers)


def _write_markers(folder: Path, spec: ExternalRootSpec, films: int, patients: int, metadata_name: str) -> None:
    title = collection_reader(spec.collection).title
    write_json(folder / SYNTHETIC_MANIFEST_NAME, {
        "synthetic": True, "generator": "cxrutils.demo.external_roots", "kind": f"external-{spec.collection}",
        "generator_version": EXTERNAL_GENERATOR_VERSION, "spec": asdict(spec), "images": films if spec.with_images
        else 0, "films_listed": films, "patients": patients,
    })
    what = ("every film is a tiny phantom (one of a small bank, with its own noise)" if spec.with_images
            else "there are no films, as before the download")
    if spec.collection == "vindr" and spec.with_images:
        what += (f", and each box is scaled from the real film's pixels onto its {spec.image_size}-px phantom film "
                 f"(the real side taken as the smallest multiple of {VINDR_FRAME_STEP} px reaching the film's "
                 "largest coordinate)")
    (folder / "README.md").write_text(
        f"# SYNTHETIC DATA: a phantom {title} root, not real patients\n\n"
        f"Built by `cxrutils.demo.external_roots`. `{metadata_name}` holds real rows of the {title} metadata that\n"
        f"torchxrayvision ships, as the collection publishes them, but {what}.\n"
        "Nothing computed on this folder says anything about real chest X-rays.\n\n"
        f"Spec: `{json.dumps(asdict(spec))}`\n"
    )

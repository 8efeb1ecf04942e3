"""Phantom roots of the five external collections, in their published layouts, from the metadata torchxrayvision ships.

``build_external_root(out_dir, ExternalRootSpec(collection, n_patients=...))`` writes:

- the collection's metadata file where and as the collection publishes it, its rows
  being real shipped rows (whole patients, every view) and its text the shipped file's
  own (same columns, quoting and number formatting: a byte-for-byte copy when all rows are
  kept, checked in the tests): CheXpert ``CheXpert-v1.0-small/train.csv``, PadChest
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

A film shows the phantom of its rarest mapped finding (or none), drawn from a small bank
of phantoms rendered once (``cxrutils.demo.phantoms``, which draws PA films only, so a
lateral film is a frontal phantom too), with its own noise. CheXpert's valid.csv is not
shipped, so a phantom CheXpert root has train.csv only.

**Samples and the full size.** ``n_patients`` draws that many whole patients (seeded),
first a few with each mapped finding (``positives_per_finding``) so that a small sample
still has positives, then at random. ``n_patients=None`` keeps every shipped row for the
full-size rehearsal: the metadata is written in seconds, and the films only with
``with_images=True`` (one small file per row, single process: minutes for CheXpert's
223,414). Without images a root is what a user has before the download: every film is
reported missing by ``load_external``.
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
from cxrutils.demo.roots import _staged
from cxrutils.files import write_json
from cxrutils.labels import FINDINGS
from cxrutils.progress import progress_bar

EXTERNAL_GENERATOR_VERSION = 1
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


def _write_film(collection: str, root: Path, row: pd.Series, pixels: np.ndarray, position: int,
                headers: pd.DataFrame | None) -> None:
    film = str(row["film"])
    if collection == "chexpert":
        path = chexpert.film_paths(root / chexpert.FOLDER_NAMES[0], pd.DataFrame({"film": [film]})).iloc[0]
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(path, format="JPEG", quality=90)
    elif collection == "padchest":
        path = join_inside(root, str(row["raw:ImageDir"]), film)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            stored = np.round(pixels.astype(np.float64) * (_PADCHEST_MAX / 255.0)).astype(np.uint16)
            Image.fromarray(stored).save(path, format="PNG")
    elif collection == "vindr":
        path = join_inside(root, vindr.IMAGES_FOLDER, film + vindr.SUFFIX)
        if path:
            values = np.round(pixels.astype(np.float64) * (4095 / 255.0)).astype(np.uint16)
            monochrome1 = position % 2 == 1
            write_dicom(path, 4095 - values if monochrome1 else values, bits_stored=12, view=None,
                        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
                        window=(2048.0, 4096.0, "LINEAR"))
    elif collection == "rsna":
        path = join_inside(root, rsna.IMAGES_FOLDER, film + rsna.SUFFIX)
        if path:
            facts = headers.loc[film] if headers is not None and film in headers.index else None
            extra = {"PatientID": film, "BodyPartExamined": "CHEST"}
            if facts is not None:
                extra.update({"PatientSex": facts["PatientSex"], "PatientAge": facts["PatientAge"]})
            with warnings.catch_warnings():
                # The challenge's files write PatientAge as '51', not the standard '051Y'; kept as they have it.
                warnings.filterwarnings("ignore", message="Invalid value for VR AS")
                write_dicom(path, pixels, modality="CR",
                            view=None if facts is None else facts["ViewPosition"] or None, extra=extra)
    elif collection == "siim":
        study, series = _siim_uids(film)
        path = join_inside(root, siim.IMAGES_FOLDER, study, series, film + siim.SUFFIX)
        if path:
            write_dicom(path, pixels, modality="CR", view=None,
                        extra={"SOPInstanceUID": film, "StudyInstanceUID": study, "SeriesInstanceUID": series})


def build_external_root(out_dir: str | os.PathLike[str], spec: ExternalRootSpec) -> Path:
    """Write a phantom root of ``spec.collection`` in its published layout to ``out_dir`` (replaced atomically)."""
    reader = collection_reader(spec.collection)
    rows = sample_raw(spec.collection, shipped_raw(spec.collection), spec)
    with _staged(out_dir) as staging:
        metadata_path = staging / reader.metadata_name
        write_published_csv(rows, metadata_path)
        frame = reader.to_frame(rows.reset_index(drop=True), ExternalOptions(read_headers=False), "train")
        if spec.with_images:
            bank = _bank(spec.image_size, spec.seed)
            labels = _film_labels(frame, reader.label_map.mapped)
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 7]))
            variants = rng.integers(0, _BANK_VARIANTS, size=len(frame))
            gains = rng.uniform(0.9, 1.1, size=len(frame))
            headers = rsna.shipped_headers() if spec.collection == "rsna" else None
            for position in progress_bar(range(len(frame)), desc=f"writing {reader.title} phantom films",
                                         unit="film", done=False):
                noise = rng.normal(0.0, _NOISE_SIGMA, (spec.image_size, spec.image_size))
                film = bank[labels[position], variants[position]].astype(np.float64) * gains[position] + noise
                pixels = np.clip(np.round(film), 0, 255).astype(np.uint8)
                _write_film(spec.collection, staging, frame.iloc[position], pixels, position, headers)
        patients = int(frame["patient_id"].nunique())
        _write_markers(staging, spec, films=len(frame), patients=patients, metadata_name=reader.metadata_name)
    return Path(out_dir)


def ensure_external_root(out_dir: str | os.PathLike[str], spec: ExternalRootSpec) -> Path:
    """Build the root unless one from the same spec and generator version is already there."""
    manifest = Path(out_dir) / SYNTHETIC_MANIFEST_NAME
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if recorded.get("spec") == asdict(spec) and recorded.get("generator_version") == EXTERNAL_GENERATOR_VERSION:
            return Path(out_dir)
    return build_external_root(out_dir, spec)


def _write_markers(folder: Path, spec: ExternalRootSpec, films: int, patients: int, metadata_name: str) -> None:
    title = collection_reader(spec.collection).title
    write_json(folder / SYNTHETIC_MANIFEST_NAME, {
        "synthetic": True, "generator": "cxrutils.demo.external_roots", "kind": f"external-{spec.collection}",
        "generator_version": EXTERNAL_GENERATOR_VERSION, "spec": asdict(spec), "images": films if spec.with_images
        else 0, "films_listed": films, "patients": patients,
    })
    what = ("every film is a tiny phantom (one of a small bank, with its own noise)" if spec.with_images
            else "there are no films, as before the download")
    (folder / "README.md").write_text(
        f"# SYNTHETIC DATA: a phantom {title} root, not real patients\n\n"
        f"Built by `cxrutils.demo.external_roots`. `{metadata_name}` holds real rows of the {title} metadata that\n"
        f"torchxrayvision ships, as the collection publishes them, but {what}.\n"
        "Nothing computed on this folder says anything about real chest X-rays.\n\n"
        f"Spec: `{json.dumps(asdict(spec))}`\n"
    )

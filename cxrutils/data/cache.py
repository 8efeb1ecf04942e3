"""Decode every image once into one uint8 memory-mapped array that training reads.

Decoding a 1024² PNG costs far more than a training step needs, and without a cache
it is repeated every epoch. ``build_cache`` decodes each file once, pads it to a
square (zeros, centred: no anatomy is cropped away), resizes it to ``size``² and
writes it into one row of a raw uint8 file. ``CachedImageDataset`` then serves
whole batches from that file at memory speed.

A cache folder holds::

    manifest.json   format and code version, fingerprint, size, n_images, state
    index.csv       row,image: which image each row holds (rows follow ``paths``)
    pixels.u8       raw uint8 (n_images, size, size), C order
    progress.u8     raw uint8 (n_images,): 0 not done, 1 done, 2 unreadable
    bad_files.csv   image,path,reason for every unreadable file (``skip_bad=True``)

The fingerprint (image names with their byte sizes, the size, ``CACHE_CODE_VERSION``)
decides what happens to an existing folder: same and complete, reuse it; same and
interrupted, resume it; different, rebuild from scratch.

This module imports no torch: the decoder processes it spawns start in a fraction of
a second and hold tens of MB, not a torch runtime each. ``cxrutils.engine.loader`` serves the
cache to PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; processes there must not build one cache at once (_build_lock)
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pandas as pd

from cxrutils.data.dataset import NIHDataset, listed_image_paths
from cxrutils.data.film_files import ImageReadError
from cxrutils.data.preparation import prepare_film
from cxrutils.files import atomic_write_text, read_csv_text, write_csv, write_json
from cxrutils.paths import DATA_DIR, resolve
from cxrutils.profiling import stage
from cxrutils.progress import progress_bar

# Bump whenever decoding, padding or resizing changes: existing caches are then rebuilt.
CACHE_CODE_VERSION = 1
# Bump when the folder layout changes.
FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.csv"
PIXELS_NAME = "pixels.u8"
PROGRESS_NAME = "progress.u8"
BAD_FILES_NAME = "bad_files.csv"
LOCK_NAME = ".build.lock"
BAD_FILES_COLUMNS = ["image", "path", "reason"]
_CACHE_FILES = (MANIFEST_NAME, INDEX_NAME, PIXELS_NAME, PROGRESS_NAME, BAD_FILES_NAME)

NOT_DONE, DONE, BAD = 0, 1, 2
# How often the parent commits finished rows to progress.u8 (each commit fsyncs the pixels).
_CHECKPOINT_SECONDS = 5.0
_STAT_THREADS = 16  # network file systems answer stats slowly but in parallel
_STAT_CHUNK = 2_048
# Each spawned worker imports numpy, pandas and PIL before it decodes anything; with the
# default worker count, jobs smaller than this many bytes of files decode in-process.
_MIN_BYTES_FOR_POOL = 64 * 2**20


class CacheNotReadyError(FileNotFoundError):
    """The folder holds no complete image cache."""


# --------------------------------------------------------------------------- pixels


def _decode_into(pixels: np.ndarray, row: int, path: str, size: int) -> str | None:
    """Decode one file into ``pixels[row]``; return the reason when it is unreadable."""
    try:
        pixels[row] = prepare_film(path, size)
    except ImageReadError as err:
        return err.reason
    return None


# Worker processes open the memmap once (in the initializer) and write rows themselves,
# so only (row, reason) travels back through the pipe, never pixels.
_worker_pixels: np.memmap | None = None


def _init_worker(pixels_path: str, shape: tuple[int, int, int]) -> None:
    global _worker_pixels
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _worker_pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r+", shape=shape)


def _decode_task(task: tuple[int, str]) -> tuple[int, str | None]:
    row, path = task
    assert _worker_pixels is not None, "worker not initialised"
    return row, _decode_into(_worker_pixels, row, path, _worker_pixels.shape[1])


def _decode_rows(
    todo: np.ndarray, row_paths: np.ndarray, pixels_path: Path, shape: tuple[int, int, int], workers: int
) -> Iterator[tuple[int, str | None]]:
    """Yield (row, reason or None) as rows finish; closing it stops the workers."""
    tasks = ((int(row), str(row_paths[row])) for row in todo)
    if workers <= 1:
        pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r+", shape=shape)
        try:
            for row, path in tasks:
                yield row, _decode_into(pixels, row, path, shape[1])
        finally:
            pixels.flush()
            del pixels
        return
    # spawn: a forked child would inherit the parent's threads and locks (torch's, tqdm's).
    context = multiprocessing.get_context("spawn")
    chunksize = max(1, min(32, todo.size // (workers * 16)))
    with context.Pool(workers, initializer=_init_worker, initargs=(str(pixels_path), shape)) as pool:
        # Leaving the with-block (also on an exception) terminates the workers.
        yield from pool.imap_unordered(_decode_task, tasks, chunksize=chunksize)


# --------------------------------------------------------------------------- fingerprint


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # missing or unreadable: decoding reports why


def _file_sizes_of(paths: Sequence[str]) -> list[int]:
    return [_file_size(path) for path in paths]


def file_sizes(paths: Sequence[str]) -> np.ndarray:
    """Byte size of each file (-1 where it cannot be stat-ed): one stat per file, threaded.

    Threads take chunks of paths, not single ones: a future per file costs more than
    its stat on a local disk (112k futures took 7 s; the stats themselves a fraction of that).
    """
    chunks = [paths[start : start + _STAT_CHUNK] for start in range(0, len(paths), _STAT_CHUNK)]
    with ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        sizes = [size for chunk in pool.map(_file_sizes_of, chunks) for size in chunk]
    return np.asarray(sizes, dtype=np.int64).reshape(len(paths))


def fingerprint(names: Sequence[str], sizes: Sequence[int], size: int) -> str:
    """sha256 over the sorted (name, byte size) pairs, the cache size and the code version.

    Byte sizes rather than contents: hashing 42 GB would cost as much as decoding it,
    and a re-encoded or truncated file almost always changes size.
    """
    # The salt keeps its original module name: caches built before the package was split stay valid.
    digest = hashlib.sha256(f"cxrutils.cache code={CACHE_CODE_VERSION} size={size}\n".encode())
    for name, nbytes in sorted(zip(map(str, names), map(int, sizes))):
        digest.update(f"{name}\t{nbytes}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- folder helpers


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_json(folder / MANIFEST_NAME, manifest, durable=True)


def _read_index(folder: Path) -> pd.Index:
    index = pd.read_csv(folder / INDEX_NAME, dtype={"row": np.int64, "image": str}, keep_default_na=False)
    if not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise ValueError(f"{folder / INDEX_NAME} is corrupt (rows are not 0..n-1); delete {folder} and rebuild")
    return pd.Index(index["image"], name="image")


def _read_bad_files(folder: Path) -> pd.DataFrame:
    path = folder / BAD_FILES_NAME
    if not path.is_file():
        return pd.DataFrame(columns=BAD_FILES_COLUMNS)
    return read_csv_text(path)


def _write_bad_files(folder: Path, records: dict[int, tuple[str, str, str]]) -> None:
    frame = pd.DataFrame([records[row] for row in sorted(records)], columns=BAD_FILES_COLUMNS)
    write_csv(folder / BAD_FILES_NAME, frame, durable=True)  # names and paths as text a spreadsheet does not run


def _layout_intact(folder: Path, manifest: dict[str, Any]) -> bool:
    """Every file present with the byte size the manifest implies."""
    try:
        n, size = int(manifest["n_images"]), int(manifest["size"])
        return (
            manifest.get("format_version") == FORMAT_VERSION
            and (folder / PIXELS_NAME).stat().st_size == n * size * size
            and (folder / PROGRESS_NAME).stat().st_size == n
            and (folder / INDEX_NAME).is_file()
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _fsync_file(path: Path) -> None:
    # The workers' writes through their shared mappings live in this file's page
    # cache, so fsync on any descriptor of the file makes them durable.
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ProgressRecorder:
    """Commits finished rows: pixels fsynced first, then progress.u8, so "done" never lies."""

    def __init__(self, folder: Path, progress: np.memmap, bad_records: dict[int, tuple[str, str, str]]) -> None:
        self.folder = folder
        self.progress = progress
        self.bad_records = bad_records
        self.pending_rows: list[int] = []
        self.pending_status: list[int] = []
        self.bad_changed = False
        self.last_commit = time.monotonic()

    def record(self, row: int, status: int, bad: tuple[str, str, str] | None = None) -> None:
        self.pending_rows.append(row)
        self.pending_status.append(status)
        if bad is not None:
            self.bad_records[row] = bad
            self.bad_changed = True
        if time.monotonic() - self.last_commit >= _CHECKPOINT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self.last_commit = time.monotonic()
        if not self.pending_rows:
            return
        if self.bad_changed:  # reasons first: a row marked bad always has its reason on disk
            _write_bad_files(self.folder, self.bad_records)
            self.bad_changed = False
        _fsync_file(self.folder / PIXELS_NAME)
        self.progress[np.asarray(self.pending_rows)] = np.asarray(self.pending_status, dtype=np.uint8)
        self.progress.flush()
        self.pending_rows.clear()
        self.pending_status.clear()


def _start_fresh(folder: Path, names: pd.Index, size: int, manifest: dict[str, Any]) -> None:
    """Remove any old cache files and lay out empty ones for ``names``."""
    (folder / MANIFEST_NAME).unlink(missing_ok=True)  # first: no stale "complete" survives a crash below
    for name in _CACHE_FILES:
        (folder / name).unlink(missing_ok=True)
    nbytes = len(names) * size * size
    free = shutil.disk_usage(folder).free
    # A memmap write that finds the disk full kills the process with SIGBUS; fail clearly now.
    if free < nbytes:
        raise OSError(
            f"the image cache needs {nbytes / 1e9:.2f} GB in {folder} but only {free / 1e9:.2f} GB is free; "
            "free space or choose another cache folder (or a smaller size)"
        )
    with open(folder / PIXELS_NAME, "wb") as handle:
        handle.truncate(nbytes)  # sparse: rows take disk space as they are written
    (folder / PROGRESS_NAME).write_bytes(bytes(len(names)))
    index = pd.DataFrame({"row": np.arange(len(names)), "image": names})
    atomic_write_text(folder / INDEX_NAME, index.to_csv(index=False), durable=True)
    _write_manifest(folder, manifest)


# --------------------------------------------------------------------------- build


def build_cache(
    paths: pd.Series,
    folder: str | os.PathLike[str],
    *,
    size: int = 256,
    workers: int | None = None,
    skip_bad: bool = False,
) -> ImageCache:
    """Decode ``paths`` (image name -> file) once into a ``size``² uint8 cache in ``folder``.

    Reuses a complete cache with the same fingerprint without decoding anything and
    resumes an interrupted one; anything else is rebuilt from scratch. The first
    unreadable file raises ``ImageReadError`` (after saving progress), unless
    ``skip_bad``: then it is listed in ``bad_files.csv`` and marked unusable.

    ``workers`` processes decode in parallel (default: every core this process may
    use, or in-process for a job under 64 MB); ``workers=1`` always decodes
    in-process. Worker processes are spawned, so a script must call this under
    ``if __name__ == "__main__":``.

    Processes that build the same folder at once (every rank of a ``torchrun`` job
    starts here) take turns on a lock file: the first builds, the others wait and then
    reuse what it built. The lock is ``flock``, which holds on one machine; on several
    machines sharing a file system, build the cache once before starting them
    (``cxrutils cache build``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with stage("image cache", images=len(paths)) as facts, _build_lock(folder):
        cache = _build_cache(paths, folder, size, workers, skip_bad, facts)
    return cache


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's build lock for the block; say so when another process holds it.

    Without ``fcntl`` (Windows) there is no lock: build the cache with one process
    (``cxrutils cache build``) before starting several.
    """
    if fcntl is None:
        yield
        return
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is building the image cache in {folder}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _build_cache(
    paths: pd.Series, folder: Path, size: int, workers: int | None, skip_bad: bool, facts: dict[str, Any]
) -> ImageCache:
    if size < 1:
        raise ValueError(f"cache size must be positive, got {size}")
    if paths.empty:
        raise ValueError(f"no images to cache into {folder}: the paths series is empty")
    names = pd.Index(paths.index.astype(str), name="image")
    if names.has_duplicates:
        duplicated = names[names.duplicated()].unique().tolist()
        raise ValueError(f"image names must be unique to build a cache in {folder}; repeated: {duplicated[:5]}")
    path_strings = [os.fspath(p) for p in paths.to_numpy()]
    sizes = file_sizes(path_strings)
    if not skip_bad and (sizes < 0).any():
        missing = path_strings[int(np.flatnonzero(sizes < 0)[0])]
        raise ImageReadError(missing, "file does not exist or cannot be read; pass skip_bad=True to cache the rest")
    wanted = fingerprint(names, sizes, size)

    manifest = _read_manifest(folder)
    same = manifest is not None and manifest.get("fingerprint") == wanted and _layout_intact(folder, manifest)
    if same and manifest["state"] == "complete":
        facts["decoded"] = 0
        cache = ImageCache.open(folder)
        if not skip_bad and len(cache.bad_files):
            first = cache.bad_files.iloc[0]
            raise ImageReadError(
                first["path"],
                f"{first['reason']} (recorded when the cache in {folder} was built; "
                "pass skip_bad=True to use the cache without it)",
            )
        return cache

    if same and manifest["state"] == "building":
        row_names = _read_index(folder)  # resume in the order the build started with
    else:
        row_names = names
        manifest = {
            "format_version": FORMAT_VERSION,
            "code_version": CACHE_CODE_VERSION,
            "fingerprint": wanted,
            "size": size,
            "n_images": len(names),
            "dtype": "uint8",
            "shape": [len(names), size, size],
            "state": "building",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _start_fresh(folder, names, size, manifest)

    n = len(row_names)
    by_row = pd.DataFrame({"path": path_strings, "bytes": sizes}, index=names).reindex(row_names)
    row_paths, row_bytes = by_row["path"].to_numpy(), by_row["bytes"].to_numpy()
    progress = np.memmap(folder / PROGRESS_NAME, dtype=np.uint8, mode="r+", shape=(n,))
    bad_records: dict[int, tuple[str, str, str]] = {}
    if skip_bad:
        # Rows marked bad by an interrupted run keep their recorded reasons.
        row_of = pd.Series(np.arange(n), index=row_names)
        for image, path, reason in _read_bad_files(folder)[BAD_FILES_COLUMNS].itertuples(index=False):
            row = row_of.get(image)
            if row is not None and progress[row] == BAD:
                bad_records[int(row)] = (image, path, reason)
        lost = np.flatnonzero(progress == BAD)
        progress[[r for r in lost if r not in bad_records]] = NOT_DONE  # no reason on disk: retry
    else:
        progress[progress == BAD] = NOT_DONE  # retried, so the first unreadable file raises
    progress.flush()

    todo = np.flatnonzero(progress == NOT_DONE)
    facts["decoded"] = int(todo.size)
    if workers is None:
        todo_bytes = int(row_bytes[todo].clip(0).sum())
        workers = available_cores() if todo_bytes >= _MIN_BYTES_FOR_POOL else 1
    workers = max(1, min(workers, todo.size))
    recorder = _ProgressRecorder(folder, progress, bad_records)
    bar = progress_bar(total=n, initial=n - todo.size, desc=f"caching images at {size}px", unit="img",
                       done=f"cached {{n:,}} films at {size} px")
    results = _decode_rows(todo, row_paths, folder / PIXELS_NAME, (n, size, size), workers)
    try:
        for row, reason in results:
            if reason is None:
                recorder.record(row, DONE)
            elif skip_bad:
                recorder.record(row, BAD, (str(row_names[row]), str(row_paths[row]), reason))
            else:
                raise ImageReadError(row_paths[row], f"{reason}; pass skip_bad=True to cache the rest")
            bar.update()
    finally:
        results.close()  # stop the workers before committing what they finished
        recorder.commit()
        bar.close()

    if (progress == NOT_DONE).any():  # cannot happen unless a worker lost a row
        raise RuntimeError(f"the cache build in {folder} left rows undone; run build_cache again to finish them")
    _write_bad_files(folder, bad_records)
    manifest.update(
        state="complete",
        n_bad=len(bad_records),
        completed=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _write_manifest(folder, manifest)
    del progress
    return ImageCache.open(folder)


# --------------------------------------------------------------------------- read


class ImageCache:
    """A complete cache folder: read-only pixels, row names and which rows are usable."""

    def __init__(self, folder: Path, manifest: dict[str, Any], names: pd.Index, status: np.ndarray,
                 bad_files: pd.DataFrame) -> None:
        self.folder = folder
        self.manifest = manifest
        self.size = int(manifest["size"])
        self.fingerprint = str(manifest["fingerprint"])
        self.names = names
        self._status = status
        self._bad_files = bad_files
        self._usable_names: pd.Index | None = None
        self._pixels: np.memmap | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ImageCache:
        """Open the complete cache in ``folder``; ``CacheNotReadyError`` if there is none."""
        folder = Path(folder)
        manifest = _read_manifest(folder)
        hint = "build it with cxrutils.data.cache.build_cache(dataset.index.paths, folder, size=...)"
        if manifest is None:
            raise CacheNotReadyError(f"no image cache in {folder} (no {MANIFEST_NAME}); {hint}")
        if manifest.get("state") != "complete":
            raise CacheNotReadyError(
                f"the image cache in {folder} is incomplete (state {manifest.get('state')!r}); "
                f"{hint} again to finish it"
            )
        if not _layout_intact(folder, manifest):
            raise CacheNotReadyError(f"the image cache in {folder} is damaged or from another format; "
                                     f"delete it and {hint}")
        names = _read_index(folder)
        status = np.fromfile(folder / PROGRESS_NAME, dtype=np.uint8)
        if len(names) != int(manifest["n_images"]) or status.size != len(names):
            raise CacheNotReadyError(f"the image cache in {folder} is inconsistent; delete it and {hint}")
        return cls(folder, manifest, names, status, _read_bad_files(folder))

    @property
    def usable(self) -> np.ndarray:
        """Per row: True where the image was decoded (False: unreadable, listed in ``bad_files``)."""
        return self._status == DONE

    @property
    def usable_names(self) -> pd.Index:
        """The names of the decoded images, computed once (callers test membership against it per film)."""
        if self._usable_names is None:
            self._usable_names = self.names[self.usable]
        return self._usable_names

    @property
    def pixels(self) -> np.memmap:
        """Read-only (N, S, S) uint8, mapped on first use."""
        if self._pixels is None:
            shape = (len(self.names), self.size, self.size)
            self._pixels = np.memmap(self.folder / PIXELS_NAME, dtype=np.uint8, mode="r", shape=shape)
        return self._pixels

    @property
    def bad_files(self) -> pd.DataFrame:
        """image, path, reason for every file that could not be decoded."""
        return self._bad_files.copy()

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Row numbers (int64) of ``names``; KeyError naming any image absent or unreadable."""
        wanted = pd.Index([str(name) for name in names])
        rows = self.names.get_indexer(wanted)
        absent = wanted[rows < 0]
        if len(absent):
            raise KeyError(f"{absent[0]} is not in the image cache in {self.folder} "
                           f"({len(absent)} requested images are not)")
        unusable = wanted[~self.usable[rows]]
        if len(unusable):
            raise KeyError(f"{unusable[0]} could not be decoded when the cache in {self.folder} was built "
                           f"(see {BAD_FILES_NAME}; {len(unusable)} requested images are unreadable)")
        return rows.astype(np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap carries all its pixels; send the folder and map again instead.
        return {**self.__dict__, "_pixels": None}

    def __repr__(self) -> str:
        return (f"ImageCache({str(self.folder)!r}, n_images={len(self)}, size={self.size}, "
                f"unusable={int((~self.usable).sum())})")


# --------------------------------------------------------------------------- a dataset's cache


def image_cache_dir(data_root: str | os.PathLike[str], cache_size: int,
                    cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a dataset's image cache lives: ``cache_dir`` if given, else data/cache/<dataset folder>_<cache_size>."""
    if cache_dir:
        return resolve(cache_dir)
    return DATA_DIR / "cache" / f"{resolve(data_root).name}_{cache_size}"


def open_image_cache(dataset: NIHDataset, folder: str | os.PathLike[str], *, size: int,
                     skip_bad: bool = False) -> ImageCache:
    """The cache of every image ``dataset`` lists: reused when complete, otherwise built (or its build resumed).

    Training, prediction, evaluation and the comparison all come through here (by way of
    ``cxrutils.engine.data_adapters.open_training_cache``), so they share one fingerprint
    and never rebuild each other's cache.
    """
    return build_cache(listed_image_paths(dataset), folder, size=size, skip_bad=skip_bad)

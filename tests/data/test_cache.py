"""The uint8 image cache: pixels, reuse, resume, bad files, the dataset and the loader."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_png
from PIL import Image

import cxrutils.data.cache as cache_lib
import cxrutils.data.images as images_lib
from cxrutils.data.cache import CacheNotReadyError, ImageCache, build_cache, image_cache_dir, open_image_cache
from cxrutils.data.dataset import load_dataset
from cxrutils.data.film_files import ImageReadError
from cxrutils.data.images import read_image
from cxrutils.data.preparation import to_square
from cxrutils.engine.loader import CachedImageDataset, collate_batched, make_loader
from cxrutils.paths import DATA_DIR


def _noise_images(folder: Path, n: int, side: int = 24, seed: int = 0) -> pd.Series:
    """n random-noise PNGs (so any misplaced pixel shows), as image name -> path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in range(n):
        path = folder / f"{i:08d}_000.png"
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(path)
        paths[path.name] = str(path)
    return pd.Series(paths, name="path")


def _counting_decoder(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[str]:
    """Patch the cache's decoder to count calls (and to raise after ``fail_after`` of them)."""
    calls: list[str] = []

    def decode(path, max_pixels=None):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("simulated interruption")
        calls.append(str(path))
        return read_image(path, max_pixels)

    monkeypatch.setattr(images_lib, "read_image", decode)
    return calls


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def phantom_paths(tiny_phantom_root: Path) -> pd.Series:
    return load_dataset(tiny_phantom_root).index.paths


# --------------------------------------------------------------------------- pixels


def test_cached_pixels_equal_a_direct_decode_and_resize(phantom_paths, tmp_path):
    cache = build_cache(phantom_paths, tmp_path / "cache", size=16, workers=1)
    assert cache.pixels.shape == (len(phantom_paths), 16, 16) and cache.pixels.dtype == np.uint8
    assert list(cache.names) == list(phantom_paths.index)  # rows follow the order of paths
    assert cache.usable.all() and cache.bad_files.empty
    for name in phantom_paths.index[[0, 7, -1]]:
        decoded = read_image(phantom_paths[name])  # 64x64: square, so just the resize
        expected = np.asarray(Image.fromarray(decoded).resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=3.0))
        np.testing.assert_array_equal(cache.pixels[cache.rows([name])[0]], expected)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["n_images"] == len(phantom_paths) and manifest["size"] == 16
    index = pd.read_csv(tmp_path / "cache" / "index.csv")
    assert list(index.columns) == ["row", "image"] and index["image"].tolist() == list(phantom_paths.index)


def test_without_fcntl_as_on_windows_the_cache_builds_without_its_lock(phantom_paths, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_lib, "fcntl", None)
    cache = build_cache(phantom_paths, tmp_path / "cache", size=16, workers=1)
    assert cache.usable.all() and len(cache) == len(phantom_paths)
    assert not (tmp_path / "cache" / cache_lib.LOCK_NAME).exists()  # no lock file was made, none left behind


@pytest.mark.parametrize("wide", [True, False])
def test_non_square_film_is_padded_never_cropped(tmp_path, wide):
    film = np.full((20, 40), 100, dtype=np.uint8)  # 40 wide, 20 tall
    film[:, :2] = 255  # a bright stripe at the far left edge, lost to any centre crop
    if not wide:
        film = film.T.copy()  # 20 wide, 40 tall: the stripe is now along the top
    path = tmp_path / "img" / "00000001_000.png"
    path.parent.mkdir()
    Image.fromarray(film).save(path)
    cache = build_cache(pd.Series({path.name: str(path)}), tmp_path / "cache", size=20, workers=1)
    # Independent of to_square: pad by hand (10 zero rows or columns each side), then resize.
    padded = np.zeros((40, 40), np.uint8)
    if wide:
        padded[10:30, :] = film
    else:
        padded[:, 10:30] = film
    expected = np.asarray(Image.fromarray(padded).resize((20, 20), Image.Resampling.BILINEAR, reducing_gap=3.0))
    np.testing.assert_array_equal(cache.pixels[0], expected)
    out = cache.pixels[0] if wide else cache.pixels[0].T  # stripe on the left, padding above and below
    assert out[7:13, 0].min() > 150  # the stripe survived
    assert out[:3].max() < 10 and out[-3:].max() < 10  # zero padding, not stretched anatomy
    assert abs(int(out[10, 10]) - 100) <= 2


def test_to_square_rejects_colour_arrays():
    with pytest.raises(ValueError, match="2-D"):
        to_square(np.zeros((4, 4, 3), np.uint8), 2)


# --------------------------------------------------------------------------- reuse, fingerprint, resume


def test_second_build_reuses_without_decoding(tmp_path, monkeypatch):
    paths = _noise_images(tmp_path / "img", 6)
    first = build_cache(paths, tmp_path / "cache", size=8, workers=1)
    pixels_file = tmp_path / "cache" / "pixels.u8"
    stamp = pixels_file.stat().st_mtime_ns
    expected = np.array(first.pixels)

    def must_not_decode(path, max_pixels=None):
        raise AssertionError(f"decoded {path} although the cache was complete")

    monkeypatch.setattr(images_lib, "read_image", must_not_decode)
    again = build_cache(paths, tmp_path / "cache", size=8, workers=1)
    np.testing.assert_array_equal(again.pixels, expected)
    assert pixels_file.stat().st_mtime_ns == stamp
    # Another order of the same files is the same cache (rows are looked up by name).
    assert build_cache(paths.iloc[::-1], tmp_path / "cache", size=8, workers=1).fingerprint == first.fingerprint


def test_fingerprint_depends_on_names_sizes_and_cache_size_not_order():
    base = cache_lib.fingerprint(["a.png", "b.png"], [10, 20], 64)
    assert cache_lib.fingerprint(["b.png", "a.png"], [20, 10], 64) == base
    assert cache_lib.fingerprint(["a.png", "b.png"], [10, 21], 64) != base
    assert cache_lib.fingerprint(["a.png", "c.png"], [10, 20], 64) != base
    assert cache_lib.fingerprint(["a.png", "b.png"], [10, 20], 32) != base


def test_changed_file_or_size_rebuilds_from_scratch(tmp_path, monkeypatch):
    paths = _noise_images(tmp_path / "img", 5)
    first = build_cache(paths, tmp_path / "cache", size=8, workers=1)
    changed = Path(paths.iloc[2])
    write_png(changed, size=24, value=7)  # a flat image compresses to far fewer bytes
    calls = _counting_decoder(monkeypatch)
    rebuilt = build_cache(paths, tmp_path / "cache", size=8, workers=1)
    assert len(calls) == 5 and rebuilt.fingerprint != first.fingerprint
    assert (rebuilt.pixels[2] == 7).all()

    calls.clear()
    resized = build_cache(paths, tmp_path / "cache", size=12, workers=1)
    assert len(calls) == 5 and resized.pixels.shape == (5, 12, 12)
    assert (tmp_path / "cache" / "pixels.u8").stat().st_size == 5 * 12 * 12  # old rows removed


def test_interrupted_build_resumes_only_the_remaining_rows(tmp_path, monkeypatch):
    paths = _noise_images(tmp_path / "img", 9)
    clean = np.array(build_cache(paths, tmp_path / "clean", size=10, workers=1).pixels)

    _counting_decoder(monkeypatch, fail_after=4)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        build_cache(paths, tmp_path / "cache", size=10, workers=1)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["state"] == "building"
    assert np.fromfile(tmp_path / "cache" / "progress.u8", np.uint8).tolist() == [1] * 4 + [0] * 5
    with pytest.raises(CacheNotReadyError, match="build"):
        ImageCache.open(tmp_path / "cache")

    calls = _counting_decoder(monkeypatch)
    resumed = build_cache(paths, tmp_path / "cache", size=10, workers=1)
    assert calls == list(paths.iloc[4:])  # only the 5 rows not done
    np.testing.assert_array_equal(resumed.pixels, clean)


def test_a_build_with_two_workers_sigkilled_at_a_random_point_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """A real kill of the builder and its decoder processes: no exception, so no finally block commits anything.

    What was committed before the kill must hold its pixels, the resume must decode only the rest, and the
    result must be byte for byte an uninterrupted build.
    """
    import random
    import signal
    import subprocess
    import sys
    import time

    paths = _noise_images(tmp_path / "img", 240)
    clean = build_cache(paths, tmp_path / "clean", size=16, workers=1)
    (tmp_path / "paths.json").write_text(json.dumps(paths.to_dict()))
    folder = tmp_path / "killed"
    probe = Path(__file__).parents[1] / "helpers" / "cache_build_probe.py"
    log = tmp_path / "build.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, str(probe), str(tmp_path / "paths.json"), str(folder), "16"],
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    pixels_file, progress_file = folder / cache_lib.PIXELS_NAME, folder / cache_lib.PROGRESS_NAME
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:  # until the decoders have written a film
        if pixels_file.is_file() and np.fromfile(pixels_file, np.uint8).any():
            break
        time.sleep(0.01)
    assert process.poll() is None, log.read_text()[-2000:]
    delay = random.uniform(0.15, 0.6)  # the build has about 1.2 s to go, and commits every 50 ms
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the build finished before the kill {delay:.2f} s in"
    assert json.loads((folder / cache_lib.MANIFEST_NAME).read_text())["state"] == "building"
    committed = np.fromfile(progress_file, np.uint8) == cache_lib.DONE
    assert 0 < committed.sum() < len(paths), f"{committed.sum()} rows committed, killed {delay:.2f} s in"

    calls = _counting_decoder(monkeypatch)
    resumed = build_cache(paths, folder, size=16, workers=1)
    assert sorted(calls) == sorted(paths.to_numpy()[~committed])  # the committed rows were not decoded again
    for name in (cache_lib.PIXELS_NAME, cache_lib.PROGRESS_NAME, cache_lib.INDEX_NAME, cache_lib.BAD_FILES_NAME):
        assert (folder / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert resumed.fingerprint == clean.fingerprint and resumed.manifest["state"] == "complete"


def test_open_without_a_cache_says_to_build_it(tmp_path):
    with pytest.raises(CacheNotReadyError, match="build_cache") as err:
        ImageCache.open(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)


# --------------------------------------------------------------------------- bad files


def test_truncated_png_raises_by_default_and_is_listed_with_skip_bad(tmp_path, monkeypatch):
    paths = _noise_images(tmp_path / "img", 6)
    bad_name = paths.index[3]
    _truncate(Path(paths[bad_name]))

    with pytest.raises(ImageReadError) as err:
        build_cache(paths, tmp_path / "cache", size=8, workers=1)
    assert bad_name in str(err.value) and "skip_bad" in str(err.value)
    # Rows decoded before the bad file were saved, so the next run resumes after them.
    assert np.fromfile(tmp_path / "cache" / "progress.u8", np.uint8).tolist() == [1, 1, 1, 0, 0, 0]

    calls = _counting_decoder(monkeypatch)
    cache = build_cache(paths, tmp_path / "cache", size=8, workers=1, skip_bad=True)
    assert len(calls) == 3  # the bad file and the two after it
    assert cache.bad_files["image"].tolist() == [bad_name]
    assert cache.bad_files["path"].tolist() == [paths[bad_name]]
    assert cache.bad_files["reason"].iloc[0]
    assert cache.usable.tolist() == [True, True, True, False, True, True]
    with pytest.raises(KeyError, match=bad_name):
        cache.rows([paths.index[0], bad_name])
    assert cache.rows([paths.index[5], paths.index[0]]).tolist() == [5, 0]
    with pytest.raises(KeyError, match="00009999_000.png"):
        cache.rows(["00009999_000.png"])

    reopened = ImageCache.open(tmp_path / "cache")
    assert reopened.bad_files.equals(cache.bad_files) and not reopened.usable[3]
    assert pd.read_csv(tmp_path / "cache" / "bad_files.csv").columns.tolist() == ["image", "path", "reason"]
    # The complete cache is reused, but without skip_bad its bad file is still an error.
    with pytest.raises(ImageReadError, match=bad_name):
        build_cache(paths, tmp_path / "cache", size=8, workers=1)


def test_missing_file_raises_before_anything_is_built(tmp_path):
    paths = _noise_images(tmp_path / "img", 3)
    Path(paths.iloc[1]).unlink()
    with pytest.raises(ImageReadError, match=paths.index[1]):
        build_cache(paths, tmp_path / "cache", size=8, workers=1)
    assert not (tmp_path / "cache" / "pixels.u8").exists()
    cache = build_cache(paths, tmp_path / "cache", size=8, workers=1, skip_bad=True)
    assert cache.bad_files["image"].tolist() == [paths.index[1]]
    assert "does not exist" in cache.bad_files["reason"].iloc[0]


# --------------------------------------------------------------------------- dataset and loader


@pytest.fixture
def noise_dataset(tmp_path) -> CachedImageDataset:
    """10 images whose labels are the binary digits of their position, so order is readable."""
    paths = _noise_images(tmp_path / "img", 12)
    cache = build_cache(paths, tmp_path / "cache", size=8, workers=1)
    names = list(paths.index[[9, 2, 5, 0, 11, 3, 7, 1, 10, 4]])  # not in row order
    positions = np.arange(len(names))
    labels = ((positions[:, None] >> np.arange(14)) & 1).astype(np.float32)
    return CachedImageDataset(cache, names, labels)


def _positions(labels: torch.Tensor) -> list[int]:
    return (labels.numpy().astype(np.int64) << np.arange(14)).sum(axis=1).tolist()


def test_getitems_equals_stacked_getitem_in_the_requested_order(noise_dataset):
    indices = [7, 0, 3, 3, 9, 1]
    images, labels = noise_dataset.__getitems__(indices)
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 8, 8)
    assert labels.dtype == torch.float32 and labels.shape == (6, 14)
    singles = [noise_dataset[i] for i in indices]
    assert torch.equal(images, torch.stack([image for image, _ in singles]))
    assert torch.equal(labels, torch.stack([label for _, label in singles]))
    assert _positions(labels) == indices
    image, label = noise_dataset[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and label.shape == (14,)


def test_dataset_pickles_without_pixels_and_maps_again(noise_dataset):
    noise_dataset[0]  # map the cache in this process first
    blob = pickle.dumps(noise_dataset)
    assert len(blob) < 4096  # folder and row numbers, not the memmap's contents
    clone = pickle.loads(blob)
    assert torch.equal(clone.__getitems__([4, 2])[0], noise_dataset.__getitems__([4, 2])[0])
    assert pickle.loads(pickle.dumps(collate_batched)) is collate_batched


def test_dataset_refuses_bad_labels_and_unknown_names(noise_dataset):
    cache = ImageCache.open(noise_dataset.folder)
    with pytest.raises(ValueError, match="labels"):
        CachedImageDataset(cache, noise_dataset.names[:3], np.zeros((2, 14)))
    with pytest.raises(KeyError, match="nope.png"):
        CachedImageDataset(cache, ["nope.png"], np.zeros((1, 14)))


def test_make_loader_batches_shuffles_reproducibly_and_keeps_order_unshuffled(noise_dataset):
    def epoch(**kwargs) -> list[list[int]]:
        loader = make_loader(noise_dataset, batch_size=4, num_workers=0, **kwargs)
        batches = list(loader)
        for images, labels in batches:
            assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8) and labels.shape[1:] == (14,)
        return [_positions(labels) for _, labels in batches]

    assert epoch(shuffle=False, seed=0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = epoch(shuffle=True, seed=1, drop_last=True)
    assert [len(batch) for batch in dropped] == [4, 4]
    assert epoch(shuffle=True, seed=1, drop_last=True) == dropped
    shuffled = epoch(shuffle=True, seed=1)
    assert sorted(sum(shuffled, [])) == list(range(10)) and sum(shuffled, []) != list(range(10))
    assert epoch(shuffle=True, seed=2) != shuffled


def test_make_loader_distributed_uses_a_distributed_sampler(noise_dataset, monkeypatch):
    # No process group here: give the sampler its world explicitly, as torchrun would.
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 1)
    loader = make_loader(noise_dataset, batch_size=2, shuffle=True, seed=5, num_workers=0, distributed=True)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    loader.sampler.set_epoch(3)
    assert sum(len(labels) for _, labels in loader) == 5  # half of the 10 images


# --------------------------------------------------------------------------- parallel


def test_parallel_build_is_byte_identical_to_serial(phantom_paths, tmp_path):
    serial = build_cache(phantom_paths, tmp_path / "serial", size=24, workers=1)
    parallel = build_cache(phantom_paths, tmp_path / "parallel", size=24, workers=2)
    assert (tmp_path / "serial" / "pixels.u8").read_bytes() == (tmp_path / "parallel" / "pixels.u8").read_bytes()
    assert list(parallel.names) == list(serial.names) and parallel.fingerprint == serial.fingerprint


def test_the_cache_module_and_its_decoder_processes_do_not_import_torch():
    """Each spawned decoder imports cxrutils.cache; with torch that was ~1 GB and seconds per process."""
    import subprocess
    import sys

    code = "import sys, cxrutils.data.cache; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_file_sizes_stats_in_chunks_not_one_task_per_file(tmp_path, monkeypatch):
    """112,120 futures cost seconds before a cache could even be opened; chunks cost a handful."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(tmp_path / f"{i}.png") for i in range(5_000)]
    for path in paths[:3]:
        open(path, "wb").write(b"abc")
    submitted = []
    real_submit = ThreadPoolExecutor.submit

    def counting_submit(self, *args, **kwargs):
        submitted.append(1)
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", counting_submit)
    sizes = cache_lib.file_sizes(paths)
    assert sizes[:3].tolist() == [3, 3, 3] and (sizes[3:] == -1).all() and len(sizes) == 5_000
    assert len(submitted) <= 5


def test_the_cache_folder_is_named_by_the_dataset_folder_and_size_unless_given(tmp_path):
    assert image_cache_dir(tmp_path / "nih", 256) == DATA_DIR / "cache" / "nih_256"
    assert image_cache_dir(tmp_path / "nih", 128) == DATA_DIR / "cache" / "nih_128"
    assert image_cache_dir(tmp_path / "nih", 256, cache_dir=tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_a_datasets_cache_holds_every_listed_film_and_names_a_missing_one(phantom_copy, tmp_path):
    dataset = load_dataset(phantom_copy)
    cache = open_image_cache(dataset, tmp_path / "cache", size=16)
    assert cache.size == 16 and cache.folder == tmp_path / "cache"
    assert sorted(cache.usable_names) == sorted(dataset.metadata["image"])

    gone = dataset.metadata["image"].iloc[0]
    dataset.image_path(gone).unlink()
    dataset = load_dataset(phantom_copy)
    with pytest.raises(ImageReadError, match=gone):
        open_image_cache(dataset, tmp_path / "without", size=16)
    skipped = open_image_cache(dataset, tmp_path / "without", size=16, skip_bad=True)
    assert skipped.bad_files["image"].tolist() == [gone] and gone not in skipped.usable_names

"""The TorchXRayVision adapter: weights files, offline errors, label alignment, inputs, raw probabilities."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrutils.compare import txv
from cxrutils.data.cache import build_cache
from cxrutils.data.images import read_image
from cxrutils.labels import FINDINGS

with warnings.catch_warnings():
    import torchxrayvision as xrv

ALL_FOURTEEN = set(FINDINGS)
CHEXPERT_SEVEN = {"Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema"}
EXPECTED_FINDINGS = {
    "densenet121-res224-nih": ALL_FOURTEEN,
    "densenet121-res224-all": ALL_FOURTEEN,
    "densenet121-res224-chex": CHEXPERT_SEVEN,
    "densenet121-res224-pc": ALL_FOURTEEN,
    "densenet121-res224-mimic_nb": CHEXPERT_SEVEN,
    "densenet121-res224-mimic_ch": CHEXPERT_SEVEN,
    "densenet121-res224-rsna": {"Pneumonia"},
    "resnet50-res512-all": ALL_FOURTEEN,
}
NON_NIH_OUTPUTS = {"Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(xrv.utils.requests, "get", refuse)


@pytest.fixture(scope="module")
def nih_random() -> txv.TxvModel:
    return txv.load_txv_model("densenet121-res224-nih", random_init=True, seed=1)


def _film(size: tuple[int, int] = (1024, 1024), seed: int = 0) -> np.ndarray:
    """A smooth film-like 8-bit image with edges, blobs and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    pixels = 110 + 70 * np.sin(3 * xx) * np.cos(2 * yy) + 40 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.01)
    pixels[(xx - 0.7) ** 2 + (yy - 0.45) ** 2 < 0.02] += 50  # a sharp-edged opacity
    pixels += rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray, mode: str) -> Path:
    if mode == "RGBA":  # as the 519 RGBA NIH films: R = G = B, opaque alpha
        Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1), mode="RGBA").save(path)
    else:
        Image.fromarray(pixels, mode="L").save(path)
    return path


def _reference(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """torchxrayvision's own dataset preprocessing."""
    image = xrv.datasets.normalize(pixels, 255)[None]
    image = xrv.datasets.XRayCenterCrop()(image)
    return xrv.datasets.XRayResizer(resolution)(image)


# --------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("name", txv.TXV_MODEL_NAMES)
def test_weights_file_is_the_basename_of_the_release_url(name: str, tmp_path: Path) -> None:
    url = xrv.models.model_urls[name]["weights_url"]
    assert url.startswith("https://github.com/mlmed/torchxrayvision/releases/download/")
    assert txv.weights_path(name, tmp_path) == tmp_path / url.rsplit("/", 1)[1]


def test_weights_file_names_and_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert txv.weights_path("densenet121-res224-nih") == (
        tmp_path / ".torchxrayvision" / "models_data" / "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt")
    assert txv.txv_spec("resnet50-res512-all").weights_file == "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"
    assert txv.txv_spec("densenet121-res224-rsna").weights_file.startswith("kaggle-densenet121")


def test_missing_weights_raise_with_file_folder_and_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = txv.txv_spec("densenet121-res224-all")
    with pytest.raises(txv.TxvWeightsNotFoundError) as caught:
        txv.load_txv_model("densenet121-res224-all")
    message = str(caught.value)
    assert spec.weights_file in message and spec.weights_url in message
    assert str(tmp_path / ".torchxrayvision" / "models_data") in message
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(txv.TxvWeightsNotFoundError, match=str(tmp_path / "elsewhere")):
        txv.load_txv_model("resnet50-res512-all", weights_dir=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()  # nothing created, nothing fetched


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="densenet121-res224-mimic_ch"):
        txv.load_txv_model("densenet121-res224-nhi", random_init=True)


def test_weights_present_load_through_torchxrayvision(tmp_path: Path) -> None:
    # A release-format file: a pickled whole torchxrayvision DenseNet (what the real files are).
    torch.manual_seed(5)
    saved = xrv.models.DenseNet()
    torch.save(saved, tmp_path / txv.txv_spec("densenet121-res224-pc").weights_file)
    model = txv.load_txv_model("densenet121-res224-pc", weights_dir=tmp_path)
    assert not model.random_init and model.weights_path == tmp_path / model.spec.weights_file
    assert txv.RANDOM_INIT_LABEL not in model.display_name and txv.RANDOM_INIT_LABEL not in repr(model)
    for key, value in saved.state_dict().items():
        assert torch.equal(model.module.state_dict()[key], value), key
    assert model.module.pathologies == xrv.models.model_urls["densenet121-res224-pc"]["labels"]
    assert model.module.op_threshs is None  # forward returns logits; the thresholds live on the adapter
    expected = xrv.models.model_urls["densenet121-res224-pc"]["op_threshs"]
    assert model.op_thresholds["Hernia"] == pytest.approx(expected[xrv.datasets.default_pathologies.index("Hernia")])
    assert not model.module.training


def test_a_corrupt_weights_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / txv.txv_spec("densenet121-res224-nih").weights_file
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(txv.TxvWeightsLoadError, match=str(path)):
        txv.load_txv_model("densenet121-res224-nih", weights_dir=tmp_path)


# --------------------------------------------------------------------------- label alignment


@pytest.mark.parametrize("name", txv.TXV_MODEL_NAMES)
def test_outputs_align_to_our_findings_by_name(name: str) -> None:
    pathologies = xrv.models.model_urls[name]["labels"]  # the library's own per-model list
    assert len(pathologies) == 18
    spec = txv.txv_spec(name)
    mapping = spec.finding_outputs
    assert set(mapping) == EXPECTED_FINDINGS[name]
    assert list(mapping) == [f for f in FINDINGS if f in mapping]  # FINDINGS order
    for finding, index in mapping.items():
        assert pathologies[index] == finding == xrv.datasets.default_pathologies[index]
        assert np.isfinite(spec.op_threshs[index])
    trained = {p for p in pathologies if p}
    assert trained - set(mapping) <= NON_NIH_OUTPUTS  # only non-NIH outputs are left out
    untrained = {xrv.datasets.default_pathologies[k] for k, p in enumerate(pathologies) if not p}
    assert not untrained & set(mapping)  # never scored


@pytest.mark.parametrize("name", [n for n in txv.TXV_MODEL_NAMES if n.startswith("densenet")])
def test_random_densenets_carry_the_named_models_outputs(name: str) -> None:
    model = txv.load_txv_model(name, random_init=True)
    assert model.module.pathologies == xrv.models.model_urls[name]["labels"]
    assert set(model.findings) == EXPECTED_FINDINGS[name]
    assert model.module.classifier.out_features == 18 and model.resolution == 224


def test_random_init_is_labelled_and_seeded(nih_random: txv.TxvModel) -> None:
    assert nih_random.random_init and nih_random.weights_path is None
    assert txv.RANDOM_INIT_LABEL in nih_random.display_name and txv.RANDOM_INIT_LABEL in repr(nih_random)
    again = txv.load_txv_model("densenet121-res224-nih", random_init=True, seed=1)
    other = txv.load_txv_model("densenet121-res224-nih", random_init=True, seed=2)
    weight = "features.conv0.weight"
    assert torch.equal(again.module.state_dict()[weight], nih_random.module.state_dict()[weight])
    assert not torch.equal(other.module.state_dict()[weight], nih_random.module.state_dict()[weight])


def test_random_resnet_is_built_through_torchxrayvision() -> None:
    model = txv.load_txv_model("resnet50-res512-all", random_init=True)
    assert isinstance(model.module, xrv.models.ResNet)
    assert model.module.pathologies == xrv.models.model_urls["resnet50-res512-all"]["labels"]
    assert model.resolution == 512 and model.module.op_threshs is None  # its forward returns logits
    assert model.module.model.fc.out_features == 18 and model.module.model.conv1.in_channels == 1


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_input_matches_torchxrayvisions_reference_on_a_real_format_png(mode: str, tmp_path: Path) -> None:
    film = _film()
    pixels = read_image(_write_png(tmp_path / f"00000001_000_{mode}.png", film, mode))
    np.testing.assert_array_equal(pixels, film)  # RGBA: the first channel, alpha not mixed in
    ours = txv.txv_input(pixels, 224).numpy()
    reference = _reference(pixels, 224)
    assert ours.shape == reference.shape == (1, 224, 224) and ours.dtype == np.float32
    difference = np.abs(ours - reference)
    # One 8-bit grey level is 2048 / 255 ~ 8 units; skimage's zero padding only bites the outer rows.
    assert difference.mean() < 3.0
    assert difference[:, 2:-2, 2:-2].max() < 16.0
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.999
    assert -1024 <= ours.min() and ours.max() <= 1024


def test_normalisation_and_centre_crop_are_torchxrayvisions_exactly() -> None:
    film = _film((700, 900))  # landscape: the crop takes the central 700 columns
    expected = xrv.datasets.XRayCenterCrop()(xrv.datasets.normalize(film, 255)[None])
    np.testing.assert_array_equal(txv.txv_input(film, 700).numpy(), expected)
    tall = _film((900, 700), seed=2)
    expected = xrv.datasets.XRayCenterCrop()(xrv.datasets.normalize(tall, 255)[None])
    np.testing.assert_array_equal(txv.txv_input(tall, 700).numpy(), expected)


def test_batched_input_equals_one_image_at_a_time() -> None:
    films = np.stack([_film((300, 300), seed=s) for s in range(3)])
    batch = txv.txv_batch(torch.from_numpy(films), 224)
    assert batch.shape == (3, 1, 224, 224)
    for k in range(3):
        torch.testing.assert_close(batch[k], txv.txv_input(films[k], 224), rtol=0, atol=1e-4)
    torch.testing.assert_close(txv.txv_batch(torch.from_numpy(films)[:, None], 224), batch)
    with pytest.raises(ValueError, match="uint8"):
        txv.txv_batch(torch.from_numpy(films.astype(np.uint16)), 224)


def test_cache_images_are_square_so_the_crop_is_a_no_op(tmp_path: Path) -> None:
    paths = pd.Series({f"0000000{k}_000.png": str(_write_png(tmp_path / f"0000000{k}_000.png",
                                                              _film((512, 512), seed=k), "L")) for k in range(2)})
    cache = build_cache(paths, tmp_path / "cache", size=256, workers=1)
    cached = np.asarray(cache.pixels[cache.rows(["00000001_000.png"])[0]])
    np.testing.assert_array_equal(txv.txv_input(cached, 256).numpy()[0], xrv.datasets.normalize(cached, 255))


# --------------------------------------------------------------------------- predictions


@pytest.fixture(scope="module")
def nih_tiny(nih_random: txv.TxvModel) -> txv.TxvModel:
    """The random NIH DenseNet run at 32 px, so CPU forward passes are cheap (tests only).

    Tests feed it one image per batch: oneDNN compiles its kernels once per input shape.
    """
    module = copy.deepcopy(nih_random.module)
    module.input_resolution = 32
    return dataclasses.replace(nih_random, spec=dataclasses.replace(nih_random.spec, resolution=32), module=module)


def test_predictions_are_raw_sigmoid_probabilities_of_the_scored_outputs(nih_tiny: txv.TxvModel,
                                                                        tmp_path: Path) -> None:
    films = np.stack([_film((64, 64), seed=s) // 2 + 20 * s for s in range(3)]).astype(np.uint8)
    logits = txv.predict_txv(nih_tiny, films, batch_size=1, show_progress=False, return_logits=True)
    probabilities = txv.predict_txv(nih_tiny, films, batch_size=1, show_progress=False)
    assert probabilities.shape == logits.shape == (3, 14) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-12)
    module, columns = nih_tiny.module, list(nih_tiny.finding_outputs.values())
    with torch.inference_mode():  # the network's own logits, before any calibration
        expected = torch.cat([module.classifier(module.features2(txv.txv_batch(torch.from_numpy(films[k:k + 1]), 32)))
                              for k in range(3)])
    np.testing.assert_allclose(logits, expected[:, columns].double().numpy(), rtol=1e-5)
    # torchxrayvision's calibrated forward is a monotonic map of these, per class
    thresholds = torch.tensor(nih_tiny.spec.op_threshs, dtype=torch.float32)
    calibrated = xrv.models.op_norm(torch.sigmoid(expected), thresholds)[:, columns].numpy()
    for k in range(len(columns)):
        order = np.argsort(logits[:, k], kind="stable")
        assert (np.diff(calibrated[order, k]) >= 0).all()
    # the same images given as paths (one of them RGBA) and as a list of arrays
    paths = [_write_png(tmp_path / f"{s}.png", films[s], "RGBA" if s == 1 else "L") for s in range(3)]
    for source in (paths, list(films)):
        again = txv.predict_txv(nih_tiny, source, batch_size=1, show_progress=False, return_logits=True)
        np.testing.assert_allclose(again, logits, rtol=1e-4)


def test_predictions_from_the_cache_follow_the_requested_names(nih_tiny: txv.TxvModel, tmp_path: Path) -> None:
    films = {f"0000000{k}_000.png": _film((96, 96), seed=k) for k in range(3)}
    paths = pd.Series({name: str(_write_png(tmp_path / name, pixels, "L")) for name, pixels in films.items()})
    cache = build_cache(paths, tmp_path / "cache", size=64, workers=1)
    order = ["00000002_000.png", "00000000_000.png"]
    from_cache = txv.predict_txv(nih_tiny, cache, names=order, batch_size=1, show_progress=False,
                                 return_logits=True)
    expected = txv.predict_txv(nih_tiny, cache.pixels[cache.rows(order)], batch_size=1, show_progress=False,
                               return_logits=True)
    np.testing.assert_allclose(from_cache, expected, rtol=1e-5)
    assert not np.allclose(from_cache[0], from_cache[1])  # different images, in the order asked
    with pytest.raises(ValueError, match="names="):
        txv.predict_txv(nih_tiny, cache, show_progress=False)
    small = build_cache(paths, tmp_path / "small", size=16, workers=1)
    with pytest.warns(UserWarning, match="upsampled"):
        txv.predict_txv(nih_tiny, small, names=order[:1], batch_size=1, show_progress=False)


def test_prediction_frame_has_the_run_folder_layout(nih_random: txv.TxvModel) -> None:
    probabilities = np.full((2, 14), 0.25)
    labels = np.zeros((2, 14), dtype=int)
    labels[1, FINDINGS.index("Hernia")] = 1
    frame = txv.txv_predictions_frame(nih_random, probabilities, ["a.png", "b.png"], [7, 8], labels)
    assert list(frame.columns[:3]) == ["image", "patient_id", "prob_Atelectasis"]
    assert [c for c in frame.columns if c in FINDINGS] == list(FINDINGS)
    assert frame.loc[1, "Hernia"] == 1 and frame.attrs["random_init"] is True
    assert txv.RANDOM_INIT_LABEL in frame.attrs["model"]
    with pytest.raises(ValueError, match="must be"):
        txv.txv_predictions_frame(nih_random, probabilities[:, :7], ["a.png", "b.png"], [7, 8])


def test_weights_dir_accepts_user_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert txv.weights_path("densenet121-res224-nih", "~/weights").parent == tmp_path / "weights"
    from cxrutils.paths import PROJ_ROOT

    assert txv.weights_path("densenet121-res224-nih", "weights/txv").parent == PROJ_ROOT / "weights" / "txv"
    assert os.fspath(txv.default_weights_dir()).startswith(str(tmp_path))

"""TorchXRayVision's pretrained classifiers, offline, aligned to our 14 findings.

- **Weights are never downloaded.** Each model reads one release file (named in
  ``TXV_MODELS``) from ``~/.torchxrayvision/models_data/`` or a ``weights_dir``. If
  it is absent, ``load_txv_model`` raises ``TxvWeightsNotFoundError`` with the file
  name, the folder and the URL to fetch it from on a machine that has internet.
- **Loading runs torchxrayvision's own code** (``xrv.models.get_model`` with
  ``cache_dir``), so the model is exactly what the library builds. The DenseNet
  release files are pickled whole modules and torchxrayvision loads them with
  ``torch.load(weights_only=False)``, which can run code stored in the file: put
  only files you downloaded yourself from the URLs below into that folder.
- **Inputs** follow torchxrayvision: 8-bit pixels to [-1024, 1024]
  (``xrv.datasets.normalize(img, 255)``), one channel, centre crop to a square
  (``XRayCenterCrop``), resize to the model's resolution (224, or 512 for the
  ResNet50). See ``txv_batch`` for the resize.
- **Outputs.** Every model has 18 outputs in ``xrv.datasets.default_pathologies``
  order; ``model.pathologies`` leaves the ones it was not trained on empty. Only
  trained outputs whose name is one of our ``FINDINGS`` are scored (same
  spellings, ``Pleural_Thickening`` included); the others are never read.
- **Raw probabilities.** With its weights loaded, a torchxrayvision model's
  ``forward`` applies its ``op_threshs`` calibration (sigmoid, then a piecewise
  linear map that sends each class's operating point to 0.5, and a constant 0.5
  for untrained outputs). ``load_txv_model`` keeps the thresholds on the adapter
  and clears them on the module, so ``forward`` returns logits; ``predict_txv``
  applies the sigmoid in float64. The calibration is monotonic, so AUROC would
  not change, but in float32 it can merge close scores into ties; raw
  probabilities also keep ``op_threshs`` usable as thresholds on the same scale.
- ``random_init=True`` builds the same architecture with random weights for tests
  and demos. Everything it produces must be labelled ``RANDOM_INIT_LABEL``;
  ``TxvModel.random_init`` and ``TxvModel.display_name`` carry it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm import TqdmWarning

from cxrutils.compare.provenance import PROVENANCE
from cxrutils.data.cache import ImageCache
from cxrutils.data.images import read_image
from cxrutils.data.radiologist_labels import RADIOLOGIST_ONLY_OUTPUTS
from cxrutils.engine.model import WeightsNotFoundError
from cxrutils.labels import FINDINGS
from cxrutils.paths import resolve
from cxrutils.predictions import predictions_table
from cxrutils.progress import progress_bar

# Importing torchxrayvision runs warnings.filterwarnings("ignore") (models.py), which
# would silence every warning in the process; catch_warnings restores the filters.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)  # its tqdm.auto import warns in headless kernels
    import torchxrayvision as xrv

DEFAULT_TXV_MODEL = "densenet121-res224-nih"
RANDOM_INIT_LABEL = "RANDOMLY INITIALISED (test only)"
TXV_PATHOLOGIES: tuple[str, ...] = tuple(xrv.datasets.default_pathologies)
# What each model was trained on, and whether it has seen NIH films, lives in cxrutils.compare.provenance.
TXV_MODEL_NAMES: tuple[str, ...] = tuple(PROVENANCE)


class TxvWeightsNotFoundError(WeightsNotFoundError):
    """A torchxrayvision release file is not in the weights folder (we never download)."""


class TxvWeightsLoadError(ValueError):
    """A file with the right name is there but torchxrayvision cannot load it."""


# --------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class TxvModelSpec:
    """One torchxrayvision model as its source defines it (``xrv.models.model_urls``)."""

    name: str
    architecture: str  # densenet121 or resnet50
    weights_url: str
    resolution: int
    pathologies: tuple[str, ...]  # 18, in default_pathologies order; "" where untrained
    op_threshs: tuple[float, ...]  # 18, NaN where untrained
    trained_on: str
    includes_nih_images: bool

    @property
    def weights_file(self) -> str:
        """The file name torchxrayvision looks for: the basename of the release URL."""
        return os.path.basename(self.weights_url)

    @property
    def finding_outputs(self) -> dict[str, int]:
        return finding_outputs(self.pathologies)


def txv_spec(name: str) -> TxvModelSpec:
    """The spec of one of ``TXV_MODEL_NAMES``; ValueError listing them otherwise."""
    if name not in PROVENANCE:
        raise ValueError(f"unknown TorchXRayVision model {name!r}; choose one of {', '.join(TXV_MODEL_NAMES)}")
    entry = xrv.models.model_urls[name]
    pathologies = tuple(entry["labels"])
    if len(pathologies) != len(TXV_PATHOLOGIES) or any(p and p != d for p, d in zip(pathologies, TXV_PATHOLOGIES)):
        raise RuntimeError(f"torchxrayvision {xrv.__version__} lists outputs for {name} that are not in "
                           f"default_pathologies order: {pathologies}; this adapter needs updating")
    origin = PROVENANCE[name]
    return TxvModelSpec(
        name=name,
        architecture=name.split("-")[0],
        weights_url=entry["weights_url"],
        resolution=int(entry["input_resolution"]),
        pathologies=pathologies,
        op_threshs=tuple(float(t) for t in entry["op_threshs"]),
        trained_on=origin.trained_on,
        includes_nih_images=origin.nih_films,
    )


def finding_outputs(pathologies: Sequence[str]) -> dict[str, int]:
    """Our finding -> index of the model output with that name, in ``FINDINGS`` order.

    Outputs with an empty name (untrained) and names that are not NIH findings
    (Lung Lesion, Fracture, Lung Opacity, Enlarged Cardiomediastinum) are left out.
    Same name does not mean same definition: CheXpert's or MIMIC's labeller decides
    what "Consolidation" is for those models, NIH's text mining for ours.
    """
    index = {name: k for k, name in enumerate(pathologies) if name}
    return {finding: index[finding] for finding in FINDINGS if finding in index}


def radiologist_only_outputs(pathologies: Sequence[str]) -> dict[str, int]:
    """The model's outputs for radiologist findings NIH has no label for (Fracture) -> their index; none if untrained.

    Scored against Majkowska et al.'s radiologist labels only (``cxrutils.evaluate.radiologist``).
    """
    index = {name: k for k, name in enumerate(pathologies) if name}
    return {output: index[output] for output in RADIOLOGIST_ONLY_OUTPUTS.values() if output in index}


def default_weights_dir() -> Path:
    """torchxrayvision's own folder: ``~/.torchxrayvision/models_data``."""
    return Path(xrv.utils.get_cache_dir())


def weights_path(name: str, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``load_txv_model`` looks for ``name``'s release file.

    A relative ``weights_dir`` is taken from the project root (``cxrutils.paths.resolve``),
    as every user-given path in the project is.
    """
    folder = resolve(weights_dir) if weights_dir is not None else default_weights_dir()
    return folder / txv_spec(name).weights_file


@dataclass(eq=False)
class TxvModel:
    """A loaded torchxrayvision model with what the comparison needs beside it.

    ``module`` is torchxrayvision's own ``DenseNet``/``ResNet`` with its
    ``op_threshs`` cleared (its forward returns logits); the thresholds are kept
    here. ``random_init`` is True for the test-only random weights.
    """

    spec: TxvModelSpec
    module: nn.Module
    random_init: bool
    weights_path: Path | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    @property
    def display_name(self) -> str:
        """How every table and figure must name this model."""
        base = f"TorchXRayVision {self.name}"
        return f"{base} [{RANDOM_INIT_LABEL}]" if self.random_init else base

    @property
    def finding_outputs(self) -> dict[str, int]:
        """Our finding -> output index, from the module's own ``pathologies``."""
        return finding_outputs(self.module.pathologies)

    @property
    def findings(self) -> tuple[str, ...]:
        """The scored findings, in ``FINDINGS`` order (the columns ``predict_txv`` returns)."""
        return tuple(self.finding_outputs)

    @property
    def op_thresholds(self) -> pd.Series:
        """torchxrayvision's operating points for the scored findings, on the raw probability scale.

        ``forward`` with calibration maps a probability p to >= 0.5 exactly when
        p >= op_thresh, so "p >= op_thresh" is the library's own decision rule.
        """
        return pd.Series({f: self.spec.op_threshs[k] for f, k in self.finding_outputs.items()},
                         name="op_thresh", dtype=np.float64).rename_axis("finding")

    def to(self, device: str | torch.device) -> TxvModel:
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        origin = RANDOM_INIT_LABEL if self.random_init else str(self.weights_path)
        return f"TxvModel({self.name!r}, {len(self.findings)} findings, {origin})"


@contextlib.contextmanager
def _downloads_forbidden(path: Path, spec: TxvModelSpec) -> Iterator[None]:
    """Make torchxrayvision's downloader raise instead of fetching anything."""

    def refuse(url: str, filename: str) -> None:
        raise TxvWeightsNotFoundError(_missing_message(path, spec))

    original = xrv.utils.download
    xrv.utils.download = refuse
    try:
        yield
    finally:
        xrv.utils.download = original


def _missing_message(path: Path, spec: TxvModelSpec) -> str:
    return (
        f"TorchXRayVision weights for {spec.name} not found: {spec.weights_file} is not in {path.parent}. "
        f"This machine cannot download them. On a machine with internet, download {spec.weights_url} and copy "
        f"{spec.weights_file} into {path.parent}/ (or pass weights_dir= the folder you put it in)."
    )


def load_txv_model(
    name: str = DEFAULT_TXV_MODEL,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    random_init: bool = False,
    seed: int = 0,
) -> TxvModel:
    """Load a torchxrayvision model from its release file, in eval mode on the CPU.

    ``weights_dir`` defaults to ``~/.torchxrayvision/models_data``. The file is
    loaded by torchxrayvision (``weights_only=False`` for the pickled DenseNet
    modules: only load files you put there knowingly). Raises
    ``TxvWeightsNotFoundError`` if it is absent (nothing is downloaded) and
    ``TxvWeightsLoadError`` if it does not load.

    ``random_init=True`` (tests and demos only) ignores ``weights_dir`` and builds
    the same architecture with random weights (seeded by ``seed``), with the
    named model's ``pathologies`` and ``op_threshs``.
    """
    spec = txv_spec(name)
    if random_init:
        module = _random_module(spec, seed)
        path = None
    else:
        path = weights_path(name, weights_dir)
        if not path.is_file():
            raise TxvWeightsNotFoundError(_missing_message(path, spec))
        with _downloads_forbidden(path, spec):
            try:
                module = xrv.models.get_model(name, cache_dir=str(path.parent))
            except TxvWeightsNotFoundError:
                raise
            except Exception as err:  # unpickling or state_dict errors: say which file and what to do
                raise TxvWeightsLoadError(
                    f"{path} exists but torchxrayvision could not load it as {name} ({type(err).__name__}: {err}). "
                    f"It may be truncated or another file; download {spec.weights_url} again."
                ) from err
    module.op_threshs = None  # forward returns logits; the thresholds live in spec
    module.eval()
    return TxvModel(spec=spec, module=module, random_init=random_init, weights_path=path)


def _random_module(spec: TxvModelSpec, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.architecture == "densenet121":
            module = xrv.models.DenseNet(weights=None)
            module.targets = list(spec.pathologies)
            module.pathologies = module.targets
            module.input_resolution = spec.resolution
            return module
        # xrv's ResNet cannot be built without a file: give it a random state_dict to load.
        resnet = torchvision.models.resnet50(num_classes=len(spec.pathologies), weights=None)
        resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with tempfile.TemporaryDirectory(prefix="cxrutils-txv-random-") as folder:
            path = Path(folder) / spec.weights_file
            torch.save(resnet.state_dict(), path)
            with _downloads_forbidden(path, spec):
                return xrv.models.get_model(spec.name, cache_dir=folder)


# --------------------------------------------------------------------------- inputs


def txv_batch(images: torch.Tensor | np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (B, H, W) or (B, 1, H, W) -> float32 (B, 1, resolution, resolution), on the input's device.

    Step for step torchxrayvision's preprocessing: ``normalize(img, 255)`` (the same
    float32 arithmetic), ``XRayCenterCrop`` (the same offsets), then a resize by
    ``torch.nn.functional.interpolate(bilinear, antialias=True)``, which is what
    torchxrayvision's models apply themselves to off-size inputs
    (``xrv.utils.fix_resolution``). Its ``XRayResizer`` (skimage) differs by a few
    units of the [-1024, 1024] range inside the image (one 8-bit grey level is 8
    units) and more on the outermost pixel rows, where skimage's anti-aliasing pads
    with zeros. Runs on the GPU when the input is there.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"TorchXRayVision input must be 8-bit (uint8) pixels, got {x.dtype}; "
                         "scale 16-bit images with cxrutils.data.images.scale_high_bit_depth first")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected a (B, H, W) or (B, 1, H, W) batch, got shape {tuple(x.shape)}")
    x = (2 * (x.to(torch.float32) / 255) - 1.0) * 1024
    height, width = x.shape[1:]
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    x = x[:, None, top : top + side, left : left + side]
    if side != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def txv_input(pixels: np.ndarray, resolution: int) -> torch.Tensor:
    """One uint8 (H, W) image -> float32 (1, resolution, resolution); see ``txv_batch``.

    An image from our cache (``cxrutils.data.cache``: zero-padded to a square, then
    resized) is already square, so the centre crop keeps all of it; only the
    resize from the cache size to ``resolution`` remains.
    """
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) image, got shape {array.shape}")
    return txv_batch(torch.from_numpy(np.array(array, order="C"))[None], resolution)[0]  # a copy: memmaps are read-only


# --------------------------------------------------------------------------- predictions


ImageSource = ImageCache | np.ndarray | Sequence[np.ndarray] | Sequence[str | os.PathLike[str]] | pd.Series


def _input_batches(
    images: ImageSource, names: Sequence[str] | None, batch_size: int, resolution: int, device: torch.device,
    read_workers: int,
) -> Iterator[torch.Tensor]:
    """Preprocessed (B, 1, r, r) batches on ``device``, in input order."""
    if isinstance(images, ImageCache):
        assert names is not None  # checked by predict_txv
        if images.size < resolution:
            warnings.warn(f"the image cache in {images.folder} holds {images.size}px images but the model expects "
                          f"{resolution}px; they are upsampled, which loses detail the model was trained with. "
                          f"Build a cache of at least {resolution}px for a fair comparison.", stacklevel=3)
        rows = images.rows(names)
        for start in range(0, rows.size, batch_size):
            block = np.asarray(images.pixels[rows[start : start + batch_size]])
            yield txv_batch(torch.from_numpy(block).to(device), resolution)
        return
    if isinstance(images, np.ndarray) and images.ndim == 3:
        for start in range(0, len(images), batch_size):
            yield txv_batch(torch.from_numpy(np.array(images[start : start + batch_size], order="C")).to(device),
                            resolution)
        return
    items = list(images.to_numpy() if isinstance(images, pd.Series) else images)
    with ThreadPoolExecutor(max_workers=max(1, read_workers)) as pool:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays = pool.map(lambda item: item if isinstance(item, np.ndarray) else read_image(item), chunk)
            yield torch.cat([txv_batch(torch.from_numpy(np.array(a, order="C"))[None].to(device), resolution)
                             for a in arrays])


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))  # no overflow for large negative logits


def predict_txv(
    model: TxvModel,
    images: ImageSource,
    *,
    names: Sequence[str] | None = None,
    batch_size: int = 32,
    read_workers: int = 4,
    show_progress: bool = True,
    return_logits: bool = False,
    outputs: Sequence[int] | None = None,
) -> np.ndarray:
    """Raw sigmoid probabilities (n_images, len(model.findings)), float64, columns in ``model.findings`` order.

    ``outputs`` picks other output indices instead (e.g. the findings' then
    ``radiologist_only_outputs``'), in that order.

    ``images`` is an ``ImageCache`` (with ``names``), a uint8 (N, H, W) array, or a
    sequence of 2-D uint8 arrays or image paths (read with
    ``cxrutils.data.images.read_image``, so RGBA films use their first channel). Runs on
    the device the model is on. These are the probabilities before
    torchxrayvision's ``op_threshs`` calibration (use them for AUROC);
    ``model.op_thresholds`` are the matching operating points. ``return_logits``
    gives the logits instead (same ranking, never saturated).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(images, ImageCache) and names is None:
        raise ValueError("reading from an ImageCache needs names= (which images, in which order)")
    columns = list(model.finding_outputs.values()) if outputs is None else list(outputs)
    device = next(model.module.parameters()).device
    total = len(names) if isinstance(images, ImageCache) and names is not None else len(images)
    batches = _input_batches(images, names, batch_size, model.resolution, device, read_workers)
    outputs = []
    bar = progress_bar(total=total, desc=f"{model.name} predictions", unit="img", disable=not show_progress,
                       done=f"{model.name}: scored {{n:,}} films")
    model.module.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                logits = model.module(batch)[:, columns]
                outputs.append(logits.double().cpu().numpy())
                bar.update(len(batch))
    finally:
        bar.close()
    if not outputs:
        return np.empty((0, len(columns)))
    logits = np.concatenate(outputs)
    return logits if return_logits else _sigmoid(logits)


def txv_predictions_frame(
    model: TxvModel,
    probabilities: np.ndarray,
    images: Sequence[str],
    patient_ids: Sequence[Any],
    labels: pd.DataFrame | np.ndarray | None = None,
) -> pd.DataFrame:
    """The predictions table (``cxrutils.predictions``) for the findings the model scores.

    Restricted to those findings, so ``cxrutils.compare.comparison`` can pair it with
    ours. ``labels`` is (n, 14) in ``FINDINGS`` order or a frame with those columns.
    ``frame.attrs`` names the model and says whether it is randomly initialised.
    """
    frame = predictions_table(images, patient_ids, probabilities, labels, findings=model.findings)
    frame.attrs.update(model=model.display_name, random_init=model.random_init)
    return frame

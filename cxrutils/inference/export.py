"""A run's best checkpoint as ONNX, for engineers who deploy it without cxrutils; verified before it is kept.

``export_onnx(run_dir)`` writes ``<run>/model.onnx``: input ``image`` (batch, 1, S, S)
float32, the film already preprocessed (below), with a dynamic batch axis; outputs
``logits`` and ``probabilities`` (the sigmoid), (batch, 14) in ``label_order``. The
file's metadata (``metadata_props``, strings; JSON where structured) carries what a
deployer needs to feed it: input size, cache size, mean and std, the preprocessing in
words, the label order, the validation thresholds of both methods, the run, its
checkpoint and its architecture (any of ``settings.ARCHITECTURES``).

Before the file is put in place, onnxruntime runs it against the torch model on real
films read through inference's own loading path (the run's test films, or the films
given), one at a time and all in one batch; a largest difference of probabilities
above ``TOLERANCE`` is an ``ExportVerificationError`` and no file is left behind.
``model_onnx.json`` beside it records the file's sha256 and the verification, and
the model card reports them.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrutils import files
from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.engine import run_folder
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.runtime import code_version
from cxrutils.inference.films import FilmDataset, collect_films, inspect_films
from cxrutils.inference.reference import sample_test_films
from cxrutils.labels import FINDINGS

TOLERANCE = 1e-4  # largest |probability difference| onnxruntime may show against torch
OPSET = 17
INPUT_NAME, OUTPUT_NAMES = "image", ("logits", "probabilities")
PREPROCESSING = (
    "decode to 8-bit grey (DICOM: rescale, VOI LUT or window, MONOCHROME1 inverted; PNG/JPEG: grey, first channel "
    "of RGBA, luminance of RGB, 16-bit scaled by its bit depth); pad with zeros to a centred square; resize to "
    "cache_size x cache_size (bilinear with antialiasing, PIL); divide by 255; resize to input_size x input_size "
    "(bilinear with antialiasing); subtract mean and divide by std; shape (batch, 1, input_size, input_size) float32"
)


class ExportVerificationError(RuntimeError):
    """onnxruntime's probabilities differ from torch's by more than the tolerance."""


class _WithProbabilities(nn.Module):
    """The network with its sigmoid, so a deployment gets probabilities without knowing it needs one."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.sigmoid(logits)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    metadata: dict[str, str]
    verification: dict[str, Any]
    record_path: Path

    @property
    def headline(self) -> str:
        check = self.verification
        return (f"{self.path}: verified with onnxruntime {check['onnxruntime']} against torch on {check['films']} "
                f"films (batch sizes {', '.join(map(str, check['batch_sizes']))}): largest |probability difference| "
                f"{check['max_abs_difference']:.2e} <= {check['tolerance']:g}")


def export_onnx(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    films: Sequence[str | os.PathLike[str]] | None = None,
    max_films: int = 8,
    data_root: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export, verify and write the run's best checkpoint as ONNX (module docstring); default ``<run>/model.onnx``.

    ``films``: PNG/JPEG/DICOM files or folders to verify on; default ``max_films``
    films of the run's test split (which needs the run's data, or ``data_root``).
    """
    run_dir = run_folder.finished_run_dir(run_dir)
    config = run_folder.read_run_config(run_dir)
    model, _, details = run_folder.load_run_model(run_dir)
    inputs, film_names = _verification_inputs(run_dir, config.cache_size, config.input_size, films, max_films,
                                              data_root)
    path = Path(out) if out is not None else run_folder.onnx_path(run_dir)
    metadata = _metadata(run_dir, config.arch, config.input_size, config.cache_size, details)
    wrapped = _WithProbabilities(model).eval()
    verification: dict[str, Any] = {}

    def write(temporary: str) -> None:
        _export(wrapped, inputs[:1], temporary)
        _add_metadata(temporary, metadata)
        verification.update(verify(temporary, wrapped, inputs))
        verification["film_names"] = film_names

    files.atomic_write(path, write)
    digest = files.sha256_of(path)
    record = {"file": path, "sha256": digest, "opset": OPSET, "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "metadata": metadata, "verification": verification}
    record_path = (run_folder.write_onnx_record(run_dir, record) if out is None
                   else files.write_json(path.with_suffix(".json"), record))
    return ExportResult(path, digest, metadata, verification, record_path)


def _verification_inputs(run_dir: Path, cache_size: int, input_size: int,
                         films: Sequence[str | os.PathLike[str]] | None, max_films: int,
                         data_root: str | os.PathLike[str] | None) -> tuple[torch.Tensor, list[str]]:
    """The network inputs of real films, prepared exactly as inference prepares them."""
    paths = list(films) if films else sample_test_films(run_dir, max_films, data_root=data_root)
    records = [record for record in inspect_films(collect_films(paths)[0], show_progress=False) if not record.refused]
    if not records:
        raise ValueError(f"none of {[str(p) for p in paths]} is a film that can be scored; give films to verify on")
    records = records[:max_films]
    pixels, decoded = FilmDataset([record.path for record in records], cache_size).__getitems__(
        list(range(len(records))))
    keep = decoded[:, 0] == 1
    if not keep.any():
        raise ValueError(f"none of the {len(records)} verification films could be decoded")
    images = prepare_batch(pixels[keep], torch.device("cpu"), input_size, channels_last=False)
    return images.contiguous(), [record.image for record, kept in zip(records, keep.tolist()) if kept]


def _export(model: nn.Module, example: torch.Tensor, path: str) -> None:
    # The TorchScript exporter (dynamo=False): this fixed-graph CNN needs nothing the torch.export-based one
    # adds, and on 2 CPU cores it exports DenseNet121 in about 8 s against about 50 s; the result is verified
    # with onnxruntime either way.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 calls this exporter deprecated
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)})


def _metadata(run_dir: Path, arch: str, input_size: int, cache_size: int, details: dict[str, Any]) -> dict[str, str]:
    record = run_folder.read_config(run_dir)
    code = code_version()
    return {
        "producer": "cxrutils",
        "code_commit": str(code["commit"]) + (" (with uncommitted changes)" if code["uncommitted_changes"] else ""),
        "run": run_dir.name,
        "checkpoint": run_folder.BEST_CHECKPOINT,
        "checkpoint_sha256": files.sha256_of(run_dir / run_folder.BEST_CHECKPOINT),
        "best_epoch": str(details.get("best_epoch", details.get("epoch", ""))),
        "architecture": f"{arch} (torchvision), 1-channel stem, 14 outputs",
        "synthetic_training_data": json.dumps(bool(record.get("synthetic"))),
        "input_name": INPUT_NAME,
        "input_shape": json.dumps(["batch", 1, input_size, input_size]),
        "input_size": str(input_size),
        "cache_size": str(cache_size),
        "mean": repr(GRAY_MEAN),
        "std": repr(GRAY_STD),
        "preprocessing": PREPROCESSING,
        "outputs": json.dumps(list(OUTPUT_NAMES)),
        "label_order": json.dumps(list(FINDINGS)),
        "thresholds": json.dumps(run_folder.read_thresholds(run_dir)),
        "thresholds_chosen_on": "the validation split, at training time; call a finding positive when its "
                                "probability >= its threshold (null: validation could not choose one)",
    }


def _add_metadata(path: str, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(path)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def verify(path: str | os.PathLike[str], model: nn.Module, inputs: torch.Tensor,
           tolerance: float | None = None) -> dict[str, Any]:
    """onnxruntime against ``model`` on ``inputs``, one film at a time and all at once; raise above ``tolerance``.

    ``tolerance`` defaults to ``TOLERANCE``.
    """
    import onnxruntime

    tolerance = TOLERANCE if tolerance is None else tolerance
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(inputs)[1].numpy()
    singles = np.concatenate([session.run([OUTPUT_NAMES[1]], {INPUT_NAME: image[None].numpy()})[0]
                              for image in inputs])
    batched = session.run([OUTPUT_NAMES[1]], {INPUT_NAME: inputs.numpy()})[0]
    difference = float(max(np.abs(singles - expected).max(), np.abs(batched - expected).max()))
    check = {"films": len(inputs), "batch_sizes": sorted({1, len(inputs)}), "max_abs_difference": difference,
             "tolerance": tolerance, "passed": difference <= tolerance, "onnxruntime": onnxruntime.__version__}
    if not check["passed"]:
        raise ExportVerificationError(
            f"{path}: onnxruntime's probabilities differ from torch's by up to {difference:.2e} on {len(inputs)} "
            f"films (tolerance {tolerance:g}); the export is not kept"
        )
    return check

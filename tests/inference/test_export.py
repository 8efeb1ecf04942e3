"""The ONNX export: a dynamic batch, the preprocessing in its metadata, verified against torch, hashed on the card."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from cxrutils.cli import main as cli_main
from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.engine import run_folder
from cxrutils.inference.export import TOLERANCE, ExportVerificationError, verify
from cxrutils.labels import FINDINGS
from cxrutils.publish.model_card import build_card


def test_the_export_verifies_itself_and_the_model_card_records_its_hash(tiny_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / tiny_run.name))
    assert "onnx_export" not in build_card(run_dir)["model"]
    assert cli_main(["export", "--run", str(run_dir), "--format", "onnx", "--max-films", "4"]) == 0
    printed = capsys.readouterr().out
    assert "verified with onnxruntime" in printed and f"<= {TOLERANCE:g}" in printed

    onnx_path = run_dir / run_folder.ONNX_NAME
    record = json.loads((run_dir / run_folder.ONNX_RECORD_NAME).read_text())
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert record["sha256"] == digest
    check = record["verification"]
    assert check["passed"] and check["max_abs_difference"] <= TOLERANCE and check["films"] == 4
    assert check["batch_sizes"] == [1, 4]

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    config = run_folder.read_config(run_dir)
    assert json.loads(metadata["label_order"]) == list(FINDINGS)
    assert json.loads(metadata["thresholds"]) == run_folder.read_thresholds(run_dir)
    assert (int(metadata["input_size"]), int(metadata["cache_size"])) == (config["input_size"], config["cache_size"])
    assert (float(metadata["mean"]), float(metadata["std"])) == (GRAY_MEAN, GRAY_STD)
    assert json.loads(metadata["synthetic_training_data"]) is True

    # Any batch size: 3 random inputs against the checkpoint's own network, independently of the verification.
    model, _, _ = run_folder.load_run_model(run_dir)
    inputs = torch.randn(3, 1, config["input_size"], config["input_size"], generator=torch.Generator().manual_seed(0))
    logits, probabilities = session.run(None, {"image": inputs.numpy()})
    with torch.no_grad():
        expected = model(inputs)
    assert probabilities.shape == (3, len(FINDINGS))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(probabilities, torch.sigmoid(expected).numpy(), atol=1e-5)

    # A verification held to an impossible tolerance fails loudly.
    with pytest.raises(ExportVerificationError, match="differ from torch's"):
        verify(onnx_path, _LogitsAndProbabilities(model), inputs, tolerance=-1.0)

    card = build_card(run_dir)["model"]["onnx_export"]
    assert card["sha256"] == digest and card["verified_against_torch"]["passed"] is True
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # the file changed after its verification
    card = build_card(run_dir)["model"]["onnx_export"]
    assert card["sha256"] != digest and "no verification record" in card["verified_against_torch"]


class _LogitsAndProbabilities(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        logits = self.model(image)
        return logits, torch.sigmoid(logits)


def test_an_export_that_fails_its_verification_leaves_no_file(tiny_run, tiny_phantom_root, tmp_path, monkeypatch):
    from cxrutils.inference import export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes
    films = sorted((tiny_phantom_root / "images").iterdir())[:2]
    with pytest.raises(ExportVerificationError, match="the export is not kept"):
        export.export_onnx(tiny_run, out=tmp_path / "model.onnx", films=films)
    assert list(tmp_path.iterdir()) == []

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrutils.data.cache import ImageCache
from cxrutils.data.dataset import load_dataset
from cxrutils.engine import run_folder
from cxrutils.engine.model import ChestXrayDenseNet
from cxrutils.engine.network_input import prepare_batch
from cxrutils.engine.predict import predict_split
from cxrutils.labels import FINDINGS
from cxrutils.predictions import prediction_arrays

PROBABILITY_COLUMNS = [f"prob_{f}" for f in FINDINGS]


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run: predict_split writes into the run folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / tiny_run.name))


def direct_probabilities(run_dir: Path, images: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's sigmoid outputs on the cached pixels, plain and mirrored, without predict.py."""
    checkpoint = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    config = checkpoint["config"]
    model = ChestXrayDenseNet(head=config["head"], lse_r=config["lse_r"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    cache = ImageCache.open(config["cache_dir"])
    pixels = torch.from_numpy(np.asarray(cache.pixels[cache.rows(images)]))[:, None]
    inputs = prepare_batch(pixels, torch.device("cpu"), config["input_size"], channels_last=False)
    with torch.no_grad():
        return torch.sigmoid(model(inputs)).numpy(), torch.sigmoid(model(inputs.flip(-1))).numpy()


def test_predict_split_writes_every_test_image_with_the_checkpoints_probabilities(run_copy, tiny_phantom_root):
    frame = predict_split(run_folder.open_run(run_copy), "test", device="cpu")
    written = pd.read_csv(run_copy / "predictions_test.csv")
    assert list(written.columns) == ["image", "patient_id", *PROBABILITY_COLUMNS, *FINDINGS]
    dataset = load_dataset(tiny_phantom_root)
    test_images = dataset.images_in("test").tolist()
    assert written["image"].tolist() == test_images == frame["image"].tolist()
    expected_labels = dataset.metadata.set_index("image").loc[test_images, list(FINDINGS)].to_numpy()
    np.testing.assert_array_equal(written[list(FINDINGS)].to_numpy(), expected_labels)
    direct, _ = direct_probabilities(run_copy, test_images)
    np.testing.assert_allclose(frame[PROBABILITY_COLUMNS].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written[PROBABILITY_COLUMNS].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    assert frame.attrs["not_scored"] == [] and frame.attrs["synthetic"]
    labels, probabilities, patient_ids = prediction_arrays(written)
    assert labels.shape == probabilities.shape == (len(test_images), 14)
    assert patient_ids.tolist() == written["patient_id"].tolist()


def test_hflip_tta_averages_the_mirror_and_keeps_the_plain_predictions(run_copy):
    plain_before = run_folder.read_predictions(run_copy, "val")  # written by training
    tta = predict_split(run_folder.open_run(run_copy), "val", tta_hflip=True, device="cpu", batch_size=3)
    assert (run_copy / "predictions_val_hflip_tta.csv").is_file()
    pd.testing.assert_frame_equal(run_folder.read_predictions(run_copy, "val"), plain_before)
    assert tta["image"].tolist() == plain_before["image"].tolist()
    plain, mirrored = direct_probabilities(run_copy, plain_before["image"].tolist())
    np.testing.assert_allclose(tta[PROBABILITY_COLUMNS].to_numpy(), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta[PROBABILITY_COLUMNS].to_numpy(), plain)


def test_predict_split_rejects_an_unknown_split_and_a_folder_that_is_not_a_run(run_copy, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        predict_split(run_folder.open_run(run_copy), "validation")
    with pytest.raises(run_folder.NotATrainedRunError, match="checkpoint_best.pt"):
        run_folder.open_run(tmp_path)

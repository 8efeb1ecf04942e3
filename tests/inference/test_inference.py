"""Inference on new films: every file of a folder scored or refused with its reason, the same scores as evaluation."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from dicom_files import pydicom_test_file, windowed_copy
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrutils.cli import main as cli_main
from cxrutils.data.dicom import write_dicom
from cxrutils.engine import run_folder
from cxrutils.engine.predict import predict_split
from cxrutils.inference import infer_films
from cxrutils.inference.films import collect_films
from cxrutils.inference.reference import TrainingReference, compare_with_training, training_reference
from cxrutils.inference.scoring import CSV_NAME, JSON_NAME, REFUSED, SCORED, call_column
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.publish.inference_page import PAGE_NAME

PROBABILITIES = [probability_column(f) for f in FINDINGS]


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    """A writable copy of the tiny run, with predictions_test.csv written by the evaluation's own path."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("run") / tiny_run.name))
    reference = predict_split(run_folder.open_run(run_dir), "test")
    return run_dir, reference


def test_the_command_scores_every_film_of_the_root_as_evaluation_scores_them(run_copy, tiny_phantom_root, tmp_path):
    run_dir, test_predictions = run_copy
    images = tiny_phantom_root / "images"
    out = tmp_path / "out"
    assert cli_main(["infer", "--run", str(run_dir), str(images), "--out", str(out), "--batch-size", "128"]) == 0

    table = pd.read_csv(out / CSV_NAME)
    on_disk = sorted(p.name for p in images.iterdir())
    assert table["image"].tolist() == on_disk and set(table["status"]) == {SCORED}
    document = json.loads((out / JSON_NAME).read_text())
    assert document["summary"]["scored"] == len(on_disk) and document["summary"]["refused"] == 0
    assert document["thresholds"] == run_folder.read_thresholds(run_dir)["youden"]

    # The same probabilities as predict_split (in memory, full precision) on the test films, and as the
    # best epoch's predictions_val.csv written at training time (6 significant digits) on the validation films.
    scored = table.set_index("image")
    np.testing.assert_allclose(scored.loc[test_predictions["image"], PROBABILITIES].to_numpy(),
                               test_predictions[PROBABILITIES].to_numpy(), atol=2e-6)
    validation = run_folder.read_predictions(run_dir, "val")
    np.testing.assert_allclose(scored.loc[validation["image"], PROBABILITIES].to_numpy(),
                               validation[PROBABILITIES].to_numpy(), rtol=1e-5, atol=1e-6)

    # Calls are probability >= the validation threshold; no threshold, no call. (Youden's threshold is a
    # validation film's probability: that film ties with it, and the CSV's 6 digits cannot tell the tie.)
    thresholds = run_folder.read_thresholds(run_dir)["youden"]
    for finding in FINDINGS:
        calls, probabilities = table[call_column(finding)], table[probability_column(finding)]
        if thresholds[finding] is None:
            assert calls.isna().all()
        else:
            clear = (probabilities - thresholds[finding]).abs() > 1e-5
            assert (calls[clear] == (probabilities[clear] >= thresholds[finding]).astype(int)).all()

    # One overlay per positive call, each a picture of the film's size; one page naming every film.
    positives = int((table[[call_column(f) for f in FINDINGS]] == 1).to_numpy().sum())
    overlays = [path for cell in table["overlays"].dropna() for path in cell.split("|")]
    assert positives > 0 and len(overlays) == positives and all((out / path).is_file() for path in overlays)
    first = table.iloc[0]
    assert Image.open(out / first["film_picture"]).size == (256, 256)
    page = (out / PAGE_NAME).read_text()
    assert all(name in page for name in on_disk) and "SYNTHETIC" in page


def test_the_command_needs_the_run_folder_alone_when_its_data_root_is_gone(run_copy, tiny_phantom_root, tmp_path):
    """A radiologist's workstation: the run folder copied there, the data root and cache it recorded left on the
    training machine. `cxrutils infer --run` scores the films as it does beside the data, and reads nothing there."""
    run_dir = Path(shutil.copytree(run_copy[0], tmp_path / "workstation" / "tiny"))
    record = run_folder.read_config(run_dir)
    training_machine = tmp_path / "training_machine"
    record.update(data_root=str(training_machine / "nih"), cache_dir=str(training_machine / "cache"))
    (run_dir / run_folder.CONFIG_NAME).write_text(json.dumps(record))
    films = tmp_path / "films"
    films.mkdir()
    for film in sorted((tiny_phantom_root / "images").glob("*.png"))[:3]:
        shutil.copy(film, films / film.name)
    out = tmp_path / "out"

    assert cli_main(["infer", "--run", str(run_dir), str(films), "--out", str(out), "--no-overlays"]) == 0

    table = pd.read_csv(out / CSV_NAME).set_index("image")
    assert sorted(table.index) == sorted(p.name for p in films.iterdir()) and set(table["status"]) == {SCORED}
    beside_the_data = infer_films(run_copy[0], [films], with_gradcam=False, show_progress=False).table.set_index("image")
    np.testing.assert_allclose(table.loc[beside_the_data.index, PROBABILITIES].to_numpy(),
                               beside_the_data[PROBABILITIES].to_numpy(), atol=2e-6)
    assert json.loads((out / JSON_NAME).read_text())["summary"]["scored"] == 3
    assert not training_machine.exists()


@pytest.fixture(scope="module")
def mixed_folder(tiny_phantom_root, tmp_path_factory):
    """Two phantom PNGs, DICOM copies of the first in several variants, and files that must be refused."""
    folder = tmp_path_factory.mktemp("films")
    pngs = sorted((tiny_phantom_root / "images").iterdir())[:2]
    for png in pngs:
        shutil.copy(png, folder / png.name)
    film = np.asarray(Image.open(pngs[0]).convert("L"))
    variants = folder / "dicom"
    write_dicom(variants / "mono2_8bit.dcm", film, pixel_spacing=(0.139, 0.139))
    write_dicom(variants / "mono1_12bit_j2k.dcm", **{**windowed_copy(255 - film, 12), "photometric": "MONOCHROME1",
                                                     "transfer_syntax": JPEG2000Lossless},
                imager_pixel_spacing=(0.2, 0.2))
    write_dicom(variants / "signed_16bit_rle.dcm", **windowed_copy(film, 16, signed=True), transfer_syntax=RLELossless)
    write_dicom(variants / "mirrored", np.ascontiguousarray(film[:, ::-1]), orientation=("R", "F"), view=None)
    write_dicom(variants / "other_modality.dcm", film, modality="OT", view="AP")
    refused = folder / "refused"
    whole = write_dicom(refused / "cut_pixels.dcm", windowed_copy(film, 12)["stored"], bits_stored=12)
    whole.write_bytes(whole.read_bytes()[: -film.size])  # a sound header, half the pixel data
    (refused / "notes.txt").write_text("not a film")
    write_dicom(refused / "lateral.dcm", film, view="LL")
    write_dicom(refused / "lateral_by_orientation.dcm", film, view=None, orientation=("P", "F"))
    write_dicom(refused / "no_pixels.dcm", None)
    write_dicom(refused / "two_frames.dcm", np.stack([film, film]))
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_test_file(name), refused / name)
    return folder, pngs[0].name


def test_a_folder_of_mixed_files_is_scored_with_every_refusal_and_its_reason(run_copy, mixed_folder):
    run_dir, _ = run_copy
    folder, png_name = mixed_folder
    result = infer_films(run_dir, [folder], num_workers=2, with_gradcam=False, show_progress=False)
    table = result.table.set_index("image")
    expected_reasons = {
        "refused/cut_pixels.dcm": "cannot decode the pixel data",  # found by a loader process, named here
        "refused/notes.txt": "not a PNG, JPEG or DICOM file",
        "refused/lateral.dcm": "lateral view (ViewPosition LL)",
        "refused/lateral_by_orientation.dcm": "lateral view (PatientOrientation P\\F)",
        "refused/no_pixels.dcm": "DICOM without pixel data",
        "refused/two_frames.dcm": "multi-frame DICOM (2 frames)",
        "refused/CT_small.dcm": "Modality CT is not a radiograph",
        "refused/MR_small.dcm": "Modality MR is not a radiograph",
    }
    refused = table[table["status"] == REFUSED]
    assert set(refused.index) == set(expected_reasons)
    for image, reason in expected_reasons.items():
        assert reason in refused.loc[image, "reason"], (image, refused.loc[image, "reason"])
    assert refused[PROBABILITIES].isna().all().all()
    summary = result.summary()
    assert (summary["files"], summary["scored"], summary["refused"]) == (len(table), 7, 8)
    assert sum(summary["refused_by_reason"].values()) == 8

    # Every DICOM made from the PNG scores as the PNG does.
    png = table.loc[png_name, PROBABILITIES].to_numpy(dtype=float)
    for image in ("dicom/mono2_8bit.dcm", "dicom/mono1_12bit_j2k.dcm", "dicom/signed_16bit_rle.dcm",
                  "dicom/mirrored", "dicom/other_modality.dcm"):
        np.testing.assert_allclose(table.loc[image, PROBABILITIES].to_numpy(dtype=float), png, atol=1e-6,
                                   err_msg=image)
    assert table.loc["dicom/mono2_8bit.dcm", ["pixel_spacing_row_mm", "pixel_spacing_source"]].tolist() == [
        0.139, "PixelSpacing"]
    assert table.loc["dicom/mono1_12bit_j2k.dcm", "pixel_spacing_source"] == "ImagerPixelSpacing"
    assert table.loc["dicom/mono1_12bit_j2k.dcm", "transfer_syntax"] == JPEG2000Lossless.name
    assert "mirrored left-right" in table.loc["dicom/mirrored", "notes"]
    assert "Modality OT (other) does not say this is a radiograph" in table.loc["dicom/other_modality.dcm", "notes"]
    assert (table.loc[png_name, "source_format"], table.loc[png_name, "view"]) == ("png", "")


def test_paths_are_walked_named_under_their_folder_and_never_scored_twice(tmp_path):
    for relative in ("a/x.png", "a/sub/y.png", "b/x.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    films, twice = collect_films([tmp_path / "a", tmp_path / "a" / "sub" / "y.png", tmp_path / "b",
                                  tmp_path / "missing.png"])
    names = [film.image for film in films]
    assert names == ["sub/y.png", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "missing.png"]
    assert twice == [str(tmp_path / "a" / "sub" / "y.png")]


def test_films_are_set_beside_the_training_films(run_copy):
    run_dir, _ = run_copy
    reference = training_reference(run_dir, sample=20)
    split = run_folder.read_split(run_dir)
    metadata = run_folder.open_run(run_dir).dataset.metadata
    train_views = metadata.loc[metadata["image"].isin(split.loc[split["split"] == "train", "image"]), "view"]
    assert reference.views == pytest.approx(train_views.astype(str).value_counts(normalize=True).to_dict())
    assert reference.films == len(train_views) and reference.bits == {8: 1.0} and reference.width == (64, 64, 64)

    table = pd.DataFrame({"image": ["same.png", "deep.dcm", "gone.png"], "status": [SCORED, SCORED, REFUSED],
                          "view": ["PA", "LLD", ""], "width": [64, 2500, 64], "height": [64, 2048, 64],
                          "bits_stored": [8, 12, 8], "source_format": ["png", "dicom", "png"]})
    known = TrainingReference(films=10, views={"PA": 0.6, "AP": 0.4}, sampled=10, width=(64, 64, 64),
                              height=(64, 64, 64), bits={8: 1.0}, formats={"png": 1.0})
    differences = compare_with_training(table, known).set_index("image")
    assert list(differences.index) == ["same.png", "deep.dcm"]
    assert differences.loc["same.png", "differs"] == "within the training films' range"
    assert differences.loc["same.png", "training films with this view"] == 0.6
    deep = differences.loc["deep.dcm", "differs"]
    assert "view LLD: no training film has it" in deep and "size 2500 x 2048" in deep and "12-bit" in deep
    assert "dicom: training films are png" in deep


def test_every_row_of_a_dicom_carries_its_pacs_identifiers_as_text(run_copy, tmp_path):
    """StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and AccessionNumber link each result back to the PACS.

    A refused DICOM keeps them too (a lateral still has to be found in the PACS), a PNG
    has none, and an accession number that looks like a formula stays text in the CSV.
    The page shows them beside a scored film's facts and in the table of refused files,
    as text: an accession number written as markup is shown, never run.
    """
    from cxrutils.files import read_csv_text
    from cxrutils.inference.scoring import write_results
    from cxrutils.publish.inference_page import write_page

    run_dir, _ = run_copy
    film = (np.add.outer(np.arange(128), np.arange(128)) % 251).astype(np.uint8)
    study = "1.2.826.0.1.3680043.8.498.1"
    identities = {
        "frontal.dcm": {"StudyInstanceUID": study, "SeriesInstanceUID": study + ".2", "AccessionNumber": "=1+2"},
        "lateral.dcm": {"StudyInstanceUID": study, "SeriesInstanceUID": study + ".3", "AccessionNumber": "<script>"},
    }
    folder = tmp_path / "pacs"
    for name, extra in identities.items():
        write_dicom(folder / name, film, view="LL" if "lateral" in name else "PA", extra=extra)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "plain.png")
    result = infer_films(run_dir, [folder], with_gradcam=False, show_progress=False)
    csv_path, _ = write_results(result, tmp_path / "out")
    table = read_csv_text(csv_path).set_index("image")
    assert table.loc["lateral.dcm", "status"] == REFUSED
    for name, extra in identities.items():
        written = pydicom.dcmread(folder / name, stop_before_pixels=True)
        assert table.loc[name, "SOPInstanceUID"] == str(written.SOPInstanceUID) != ""
        for keyword, value in extra.items():
            assert table.loc[name, keyword] == value, (name, keyword)
    assert table.loc["plain.png", ["StudyInstanceUID", "SOPInstanceUID", "AccessionNumber"]].tolist() == ["", "", ""]
    assert "'=1+2" in csv_path.read_text(encoding="utf-8")  # a spreadsheet shows the text, never computes it
    document = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert json.dumps(document).count(study + ".2") >= 1

    page = write_page(result, tmp_path / "out", {}).read_text(encoding="utf-8")
    cards = {card.split("</h3>")[0]: card for card in page.split("<section class='card'><h3>")[1:]}
    assert set(cards) == {"frontal.dcm", "plain.png"}
    frontal_sop = str(pydicom.dcmread(folder / "frontal.dcm", stop_before_pixels=True).SOPInstanceUID)
    for shown in (f"StudyInstanceUID {study}", f"SeriesInstanceUID {study}.2", f"SOPInstanceUID {frontal_sop}",
                  "AccessionNumber =1+2"):
        assert shown in cards["frontal.dcm"], shown
    assert "InstanceUID" not in cards["plain.png"] and "AccessionNumber" not in cards["plain.png"]
    refused = page.split("<h2>Refused files</h2>")[1].split("<h2>")[0]
    lateral_sop = str(pydicom.dcmread(folder / "lateral.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert "<th>PACS identifiers</th>" in refused
    for shown in (f"StudyInstanceUID {study}", f"SeriesInstanceUID {study}.3", f"SOPInstanceUID {lateral_sop}",
                  "AccessionNumber &lt;script&gt;"):
        assert shown in refused, shown
    assert "<script>" not in page  # the accession number is text on the page, never markup


def test_the_same_probabilities_calls_and_maps_whatever_the_number_of_decoding_processes(run_copy, tiny_phantom_root):
    run_dir, _ = run_copy
    films = sorted((tiny_phantom_root / "images").glob("*.png"))[:24]
    results = {workers: infer_films(run_dir, films, batch_size=8, num_workers=workers, show_progress=False)
               for workers in (0, 2, None)}  # None: the default, from the cores and the films
    reference = results[0]
    for workers, result in results.items():
        pd.testing.assert_frame_equal(result.table, reference.table, obj=f"{workers} workers")
        assert [film.record.image for film in result.films] == [film.record.image for film in reference.films]
        for film, expected in zip(result.films, reference.films):
            assert film.heatmaps.keys() == expected.heatmaps.keys()
            for finding, heatmap in film.heatmaps.items():
                np.testing.assert_array_equal(heatmap, expected.heatmaps[finding], err_msg=f"{workers}: {finding}")
    assert sum(len(film.heatmaps) for film in reference.films) > 0  # the maps compared are not all absent


def test_the_default_decoding_processes_follow_the_cores_and_the_batches():
    from cxrutils.inference.scoring import default_workers

    assert default_workers(films=1_899, batch_size=64, cpus=2) == 1  # this project's 2-core machine
    assert default_workers(films=100_000, batch_size=64, cpus=16) == 8  # a GPU box: at most 8
    assert default_workers(films=3, batch_size=64, cpus=16) == 0  # one batch: a worker would only cost its start
    assert default_workers(films=129, batch_size=64, cpus=16) == 2  # three batches: two decoded while one scores
    assert default_workers(films=10, batch_size=64, cpus=1) == 0


def test_scores_and_maps_from_one_forward_equal_scoring_then_gradcam(run_copy, tiny_phantom_root):
    """On the CPU inference takes Grad-CAM from the scoring forward; the probabilities are predict_logits' and each
    map is gradcam_per_film's for the film's positive calls."""
    from cxrutils.engine.gradcam import gradcam_per_film
    from cxrutils.engine.network_input import prepare_batch
    from cxrutils.engine.predict import predict_logits, probabilities_of
    from cxrutils.inference.scoring import load_inference_model

    run_dir, _ = run_copy
    model = load_inference_model(run_dir)
    films = sorted((tiny_phantom_root / "images").glob("*.png"))[:16]
    result = infer_films(model, films, batch_size=16, num_workers=0, show_progress=False)
    pixels = torch.from_numpy(np.stack([film.pixels for film in result.films]))[:, None]
    config = model.config
    logits, _ = predict_logits(model.model, [(pixels, torch.ones(len(pixels), 1))], model.device, config.input_size,
                               config.amp, config.channels_last, show_progress=False)
    np.testing.assert_allclose(np.stack([film.probabilities for film in result.films]), probabilities_of(logits),
                               atol=1e-6)
    images = prepare_batch(pixels, model.device, config.input_size, channels_last=False)
    wanted = [film.positive_findings for film in result.films]
    reference = iter(gradcam_per_film(model.model, images, wanted, layer=model.model.dense_block(model.gradcam_layer)))
    compared = 0
    for film in result.films:
        assert list(film.heatmaps) == film.positive_findings
        for finding in film.positive_findings:
            np.testing.assert_allclose(film.heatmaps[finding], next(reference).numpy(), atol=1e-5, err_msg=finding)
            compared += 1
    assert compared > 0

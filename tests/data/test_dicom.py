"""DICOM radiographs: every variant real chest DICOMs come in reads as the film an 8-bit PNG of it would give."""

import shutil

import numpy as np
import pytest
from dicom_files import pydicom_test_file, windowed_copy
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrutils.data.dicom import PERCENTILE_WINDOW, read_dicom_header, window_to_unit, write_dicom
from cxrutils.data.film_files import ImageReadError
from cxrutils.data.images import film_format, read_image


@pytest.fixture(scope="module")
def film() -> np.ndarray:
    """8-bit grey levels over the whole range, not square (rows and columns must not be swapped)."""
    pixels = np.random.default_rng(7).integers(0, 256, size=(40, 56)).astype(np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    return pixels


def test_an_8bit_monochrome2_dicom_reads_as_the_png_of_the_same_pixels(film, tmp_path):
    Image.fromarray(film, mode="L").save(tmp_path / "film.png")
    write_dicom(tmp_path / "film.dcm", film)
    np.testing.assert_array_equal(read_image(tmp_path / "film.dcm"), read_image(tmp_path / "film.png"))
    header = read_dicom_header(tmp_path / "film.dcm")
    assert header.intensity.startswith("as stored") and header.problem is None


VARIANTS = {
    "MONOCHROME1, 8 bits": lambda p: {"stored": 255 - p.astype(np.int64), "photometric": "MONOCHROME1"},
    "10 bits, LINEAR_EXACT window": lambda p: windowed_copy(p, 10),
    "12 bits, LINEAR window": lambda p: windowed_copy(p, 12, function="LINEAR"),
    "14 bits": lambda p: windowed_copy(p, 14),
    "16 bits": lambda p: windowed_copy(p, 16),
    "12 bits signed, rescale intercept": lambda p: windowed_copy(p, 12, signed=True, function="LINEAR"),
    "16 bits signed, rescale intercept": lambda p: windowed_copy(p, 16, signed=True),
    "MONOCHROME1, 12 bits windowed": lambda p: {**windowed_copy(255 - p, 12), "photometric": "MONOCHROME1"},
    "JPEG 2000 lossless, 12 bits": lambda p: {**windowed_copy(p, 12), "transfer_syntax": JPEG2000Lossless},
    "JPEG 2000 lossless, 16 bits signed": lambda p: {**windowed_copy(p, 16, signed=True),
                                                     "transfer_syntax": JPEG2000Lossless},
    "RLE lossless, 12 bits": lambda p: {**windowed_copy(p, 12), "transfer_syntax": RLELossless},
    # A VOI LUT whose entries are value // 16 * 16 maps 16 * p onto p / 255 of the LUT's range; the window beside
    # it (which would give another film) must lose: the LUT comes first.
    "VOI LUT, 12 bits": lambda p: {"stored": p.astype(np.int64) * 16, "bits_stored": 12,
                                   "voi_lut": ([4096, 0, 16], np.arange(4096) // 16 * 16),
                                   "window": (1000.0, 500.0, "LINEAR")},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_dicom_variant_of_a_film_reads_back_as_the_film(film, tmp_path, variant):
    path = write_dicom(tmp_path / "film.dcm", **VARIANTS[variant](film))
    np.testing.assert_array_equal(read_image(path), film)


def test_the_compressed_files_are_really_compressed(film, tmp_path):
    for syntax in (JPEG2000Lossless, RLELossless):
        path = write_dicom(tmp_path / f"{syntax.name}.dcm", **{**windowed_copy(film, 12), "transfer_syntax": syntax})
        header = read_dicom_header(path)
        assert header.compressed and header.transfer_syntax == syntax.name


def test_without_a_window_deep_values_get_the_percentile_window(tmp_path):
    values = np.random.default_rng(1).normal(2000, 400, size=(30, 30)).clip(0, 4095).astype(np.int64)
    path = write_dicom(tmp_path / "nowindow.dcm", values, bits_stored=12)
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    expected = np.rint(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path), expected)
    assert read_dicom_header(path).intensity.startswith("percentile window 0.5-99.5%")


def test_a_sigmoid_window_follows_the_standard(tmp_path):
    values = np.arange(0, 4096, 4, dtype=np.int64).reshape(32, 32)
    path = write_dicom(tmp_path / "sigmoid.dcm", values, bits_stored=12, window=(2048.0, 1000.0, "SIGMOID"))
    expected = np.rint(255 / (1 + np.exp(-4 * (values - 2048.0) / 1000.0))).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path), expected)


def test_window_formulas_at_their_edges():
    # LINEAR (PS3.3 C.11.2.1.2.1): x <= c - 0.5 - (w - 1) / 2 is black, x > c - 0.5 + (w - 1) / 2 is white.
    linear = window_to_unit(np.array([99.0, 100.0, 149.5, 201.0]), 150.0, 102.0, "LINEAR")
    np.testing.assert_allclose(linear, [0, 1 / 101, 0.5, 1])
    assert window_to_unit(np.array([99.0, 150.0, 201.0]), 150.0, 100.0, "LINEAR_EXACT").tolist() == [0, 0.5, 1]
    with pytest.raises(ValueError, match="VOILUTFunction"):
        window_to_unit(np.zeros(2), 0.0, 1.0, "CUBIC")


@pytest.mark.parametrize(("orientation", "store"), [
    (("R", "F"), lambda p: p[:, ::-1]),  # stored mirrored: the patient's right on the image's right
    (("L", "H"), lambda p: p[::-1, :]),  # stored upside down
    (("F", "L"), lambda p: p.T),  # stored rotated: rows run toward the feet
    (("L", "F"), lambda p: p),  # the convention itself: untouched
])
def test_patient_orientation_brings_the_film_to_the_radiological_convention(film, tmp_path, orientation, store):
    path = write_dicom(tmp_path / "oriented.dcm", np.ascontiguousarray(store(film)), orientation=orientation)
    np.testing.assert_array_equal(read_image(path), film)
    header = read_dicom_header(path)
    assert header.orientation_source.startswith(f"PatientOrientation {orientation[0]}\\{orientation[1]}")
    assert header.view == "PA"


def test_the_view_comes_from_view_position_then_the_view_code_then_patient_orientation(film, tmp_path):
    assert read_dicom_header(write_dicom(tmp_path / "ll.dcm", film, view="LL")).view == "lateral"
    assert read_dicom_header(write_dicom(tmp_path / "ap.dcm", film, view="AP")).view == "AP"
    by_orientation = read_dicom_header(write_dicom(tmp_path / "o.dcm", film, view=None, orientation=("A", "F")))
    assert (by_orientation.view, by_orientation.view_source) == ("lateral", "PatientOrientation A\\F")
    code = Dataset()
    code.CodeMeaning = "left lateral"
    by_code = read_dicom_header(write_dicom(tmp_path / "c.dcm", film, view=None,
                                            extra={"ViewCodeSequence": Sequence([code])}))
    assert (by_code.view, by_code.view_source) == ("lateral", "ViewCodeSequence left lateral")
    unknown = read_dicom_header(write_dicom(tmp_path / "u.dcm", film, view=None))
    assert unknown.view == "" and any("does not say the view" in note for note in unknown.notes)


def test_pixel_spacing_is_read_from_pixel_spacing_else_imager_pixel_spacing(film, tmp_path):
    both = read_dicom_header(write_dicom(tmp_path / "both.dcm", film, pixel_spacing=(0.139, 0.143),
                                         imager_pixel_spacing=(0.15, 0.15)))
    assert (both.pixel_spacing_mm, both.pixel_spacing_source) == ((0.139, 0.143), "PixelSpacing")
    imager = read_dicom_header(write_dicom(tmp_path / "imager.dcm", film, imager_pixel_spacing=(0.2, 0.1)))
    assert (imager.pixel_spacing_mm, imager.pixel_spacing_source) == ((0.2, 0.1), "ImagerPixelSpacing")
    facts = imager.facts()
    assert (facts["pixel_spacing_row_mm"], facts["pixel_spacing_column_mm"], facts["width"]) == (0.2, 0.1, 56)
    assert read_dicom_header(write_dicom(tmp_path / "none.dcm", film)).pixel_spacing_mm is None


def test_files_that_are_not_one_grey_film_say_why(film, tmp_path):
    no_pixels = write_dicom(tmp_path / "nopixels.dcm", None)
    frames = write_dicom(tmp_path / "frames.dcm", np.stack([film, film]))
    cases = {no_pixels: "without pixel data", frames: "multi-frame DICOM (2 frames)",
             pydicom_test_file("rtdose.dcm"): "multi-frame DICOM (15 frames)",
             pydicom_test_file("SC_rgb_rle.dcm"): "colour DICOM (PhotometricInterpretation RGB"}
    for path, reason in cases.items():
        assert reason in read_dicom_header(path).problem
        with pytest.raises(ImageReadError, match="cannot read image") as raised:
            read_image(path)
        assert reason in raised.value.reason and raised.value.path == path


def test_damaged_and_foreign_files_raise_an_error_naming_the_file(film, tmp_path):
    whole = write_dicom(tmp_path / "whole.dcm", windowed_copy(film, 12)["stored"], bits_stored=12)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[: -film.size])  # half the pixel data is gone
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("patient list, not an image\n")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    for path, reason in ((cut, "cannot decode the pixel data"), (pydicom_test_file("MR_truncated.dcm"),
                         "cannot decode the pixel data"), (not_dicom, "not a DICOM file"),
                         (garbage, "a damaged or truncated DICOM file")):
        with pytest.raises(ImageReadError) as raised:
            read_image(path)
        assert reason in raised.value.reason and str(path) in str(raised.value)


def test_pydicoms_own_lossless_copies_of_one_image_decode_to_one_film(tmp_path):
    """MR_small as stored, RLE, JPEG 2000 and JPEG-LS lossless: the decoders through pylibjpeg's plugins agree."""
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    films = [read_image(pydicom_test_file(name)) for name in names]
    assert films[0].shape == (64, 64) and films[0].std() > 10
    for name, other in zip(names[1:], films[1:]):
        np.testing.assert_array_equal(other, films[0], err_msg=name)
    header = read_dicom_header(pydicom_test_file("MR_small_jpeg_ls_lossless.dcm"))
    assert header.modality == "MR" and header.compressed and header.signed
    assert read_dicom_header(pydicom_test_file("CT_small.dcm")).modality == "CT"


def test_a_dicom_without_a_suffix_is_recognised_by_its_content(film, tmp_path):
    named = write_dicom(tmp_path / "film.dcm", film)
    bare = tmp_path / "IM000001"
    shutil.copy(named, bare)
    assert film_format(bare) == "dicom" and film_format(named) == "dicom"
    np.testing.assert_array_equal(read_image(bare), film)
    Image.fromarray(film).save(tmp_path / "film.png")
    (tmp_path / "readme.txt").write_text("not a film")
    assert film_format(tmp_path / "film.png") == "png" and film_format(tmp_path / "readme.txt") is None

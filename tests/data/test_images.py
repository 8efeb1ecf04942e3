import numpy as np
import pytest
from PIL import Image

from cxrutils.data.film_files import ImageReadError
from cxrutils.data.images import full_integrity_problem, quick_integrity_problem, read_image


def _gradient(size=16):
    return (np.arange(size * size, dtype=np.uint32).reshape(size, size) % 256).astype(np.uint8)


def test_8bit_grayscale_round_trips(tmp_path):
    pixels = _gradient()
    Image.fromarray(pixels, mode="L").save(tmp_path / "l.png")
    out = read_image(tmp_path / "l.png")
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    np.testing.assert_array_equal(out, pixels)


def test_rgba_takes_the_first_channel_and_never_the_alpha(tmp_path):
    pixels = _gradient()
    alpha = np.zeros_like(pixels)  # averaging alpha in would darken every pixel
    Image.fromarray(np.stack([pixels, pixels, pixels, alpha], -1), mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), pixels)


def test_rgb_becomes_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 200  # pure green: luminance 0.587 * 200
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.ndim == 2 and abs(int(out[0, 0]) - round(0.587 * 200)) <= 1


@pytest.mark.parametrize("bits", [12, 16])
def test_16bit_png_is_scaled_by_its_bit_depth(tmp_path, bits):
    peak = 2**bits - 1
    pixels = np.array([[0, peak // 2], [peak, peak // 4]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8
    assert out[0, 0] == 0 and out[1, 0] == 255 and abs(int(out[0, 1]) - 127) <= 1


def test_jpeg_reads_as_2d_uint8(tmp_path):
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8), mode="L").save(tmp_path / "a.jpg")
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (8, 8) and out.dtype == np.uint8 and abs(int(out.mean()) - 90) <= 2


def test_truncated_png_raises_an_error_naming_the_path(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(tmp_path / "t.png")
    assert "truncated" in quick_integrity_problem(tmp_path / "t.png")
    assert full_integrity_problem(tmp_path / "t.png") is not None


def test_corrupt_and_missing_files_raise_errors_naming_the_path(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    assert "not a PNG" in quick_integrity_problem(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match="absent.png.*does not exist"):
        read_image(tmp_path / "absent.png")


def test_whole_files_pass_the_quick_check(tmp_path):
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "ok.png")
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "ok.jpg")
    assert quick_integrity_problem(tmp_path / "ok.png") is None
    assert quick_integrity_problem(tmp_path / "ok.jpg") is None


def test_the_full_check_passes_whole_files_of_every_mode_and_flags_damage_the_quick_check_cannot_see(tmp_path):
    """The demo profile runs the full check: it must pass every whole file (8-bit, RGBA, RGB, 16-bit, JPEG) and
    flag a file whose compressed data is damaged although its signature and end marker are intact."""
    import pandas as pd

    from cxrutils.data.dataset import find_unreadable_images

    pixels = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([pixels] * 3, -1), mode="RGB").save(tmp_path / "rgb.png")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(pixels, mode="L").save(tmp_path / "film.jpg")
    Image.fromarray(pixels, mode="L").save(tmp_path / "damaged.png")
    data = bytearray((tmp_path / "damaged.png").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # inside the compressed image data
    (tmp_path / "damaged.png").write_bytes(bytes(data))
    paths = pd.Series({p.name: str(p) for p in sorted(tmp_path.iterdir())})

    assert quick_integrity_problem(tmp_path / "damaged.png") is None  # the quick check cannot see it
    assert find_unreadable_images(paths, "quick").empty
    full = find_unreadable_images(paths, "full", workers=2)
    assert full["image"].tolist() == ["damaged.png"] and full["problem"].iloc[0]

import numpy as np
import pytest

from cxrutils.demo import phantoms
from cxrutils.demo.phantoms import Phantom, render_phantom
from cxrutils.labels import BOX_FINDINGS, FINDINGS

NON_BOX_FINDINGS = tuple(f for f in FINDINGS if f not in BOX_FINDINGS)


def _film(findings, seed, **kwargs) -> Phantom:
    return render_phantom(findings, rng=np.random.default_rng(seed), **kwargs)


def _difference(finding, seed, **kwargs) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """with - without the finding, same patient; and the finding's box."""
    with_it = _film([finding], seed, **kwargs)
    without = _film([], seed, **kwargs)
    diff = with_it.pixels.astype(np.float64) - without.pixels.astype(np.float64)
    return diff, with_it.boxes.get(finding)


def _inside(box, shape) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(shape, bool)
    mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
    return mask


def test_same_seed_gives_identical_film_and_boxes():
    first = _film(["Nodule", "Effusion", "Fibrosis"], seed=11)
    again = _film(["Nodule", "Effusion", "Fibrosis"], seed=11)
    assert np.array_equal(first.pixels, again.pixels)
    assert first.boxes == again.boxes
    other = _film(["Nodule", "Effusion", "Fibrosis"], seed=12)
    assert np.abs(first.pixels.astype(int) - other.pixels.astype(int)).mean() > 2


def test_findings_order_does_not_matter():
    a = _film(["Mass", "Atelectasis", "Edema"], seed=3)
    b = _film(("Edema", "Mass", "Atelectasis"), seed=3)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.boxes == b.boxes


def test_generator_advances_by_the_same_amount_whatever_the_findings():
    # demo_data keeps drawing from the generator after rendering.
    plain, sick = np.random.default_rng(5), np.random.default_rng(5)
    render_phantom([], rng=plain, size=64)
    render_phantom(FINDINGS, rng=sick, size=64)
    assert plain.random() == sick.random()


def test_two_normals_differ():
    a, b = _film([], seed=1), _film([], seed=2)
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).mean() > 3


@pytest.mark.parametrize("size", [64, 97, 256, 1024])
def test_film_is_square_uint8(size):
    film = _film(["Cardiomegaly", "Nodule", "Pneumothorax"], seed=0, size=size)
    assert film.pixels.dtype == np.uint8
    assert film.pixels.shape == (size, size)
    # A radiograph, not a blank: dark lungs and air, bright mediastinum and abdomen.
    assert film.pixels.min() < 60 and film.pixels.max() > 170
    for x, y, w, h in film.boxes.values():
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size and y + h <= size


def test_lungs_are_dark_and_mediastinum_bright():
    film = _film([], seed=4).pixels.astype(float)
    # Upper-mid lung zones (either side, above the heart) versus the heart over the spine.
    lungs = np.concatenate([film[60:100, 50:90], film[60:100, 166:206]])
    mediastinum = film[130:160, 120:136]
    assert lungs.mean() + 50 < mediastinum.mean()


@pytest.mark.parametrize("finding", FINDINGS)
def test_only_box_findings_get_one_box_inside_the_image(finding):
    for seed in range(4):
        film = _film([finding], seed=seed, size=128)
        if finding in BOX_FINDINGS:
            assert set(film.boxes) == {finding}
            x, y, w, h = film.boxes[finding]
            assert all(isinstance(value, float) for value in (x, y, w, h))
            assert 0 <= x and 0 <= y and 1 <= w and 1 <= h and x + w <= 128 and y + h <= 128
        else:
            assert film.boxes == {}


def test_normal_film_has_no_boxes():
    assert _film([], seed=0).boxes == {}


@pytest.mark.parametrize("finding", BOX_FINDINGS)
def test_finding_changes_the_film_mostly_inside_its_box(finding):
    for seed in range(3):
        diff, box = _difference(finding, seed, difficulty=0.3)
        inside = _inside(box, diff.shape)
        assert np.abs(diff[inside]).mean() > 4 * np.abs(diff[~inside]).mean() + 0.5


@pytest.mark.parametrize("finding", NON_BOX_FINDINGS)
def test_findings_without_boxes_are_still_drawn(finding):
    for seed in range(3):
        diff, _ = _difference(finding, seed, difficulty=0.3)
        changed = np.abs(diff) > 8
        assert changed.mean() > 0.002, f"{finding} barely changed the film (seed {seed})"


def test_every_finding_is_drawn_when_all_are_present():
    everything = _film(FINDINGS, seed=9, size=128)
    assert set(everything.boxes) == set(BOX_FINDINGS)
    for finding in FINDINGS:
        rest = [f for f in FINDINGS if f != finding]
        without = _film(rest, seed=9, size=128)
        assert not np.array_equal(everything.pixels, without.pixels), finding


def test_cardiomegaly_makes_the_heart_wider_than_half_the_chest():
    for seed in range(5):
        _, normal = phantoms._render([], rng=np.random.default_rng(seed))
        big_film, big = phantoms._render(["Cardiomegaly"], rng=np.random.default_rng(seed))
        assert 0.40 <= normal.heart.ctr <= 0.48
        assert big.heart.ctr > 0.5
        # Measured from what was drawn: the box is the cardiac silhouette.
        w = big_film.boxes["Cardiomegaly"][2]
        thorax_px = big.thoracic_width * 256
        assert w / thorax_px > 0.5
        assert abs(w / thorax_px - big.heart.ctr) < 0.03
        assert w > normal.heart_width * 256 + 5


def test_emphysema_does_not_undo_cardiomegaly():
    for seed in range(5):
        film, anatomy = phantoms._render(["Cardiomegaly", "Emphysema"], rng=np.random.default_rng(seed))
        assert anatomy.heart.ctr > 0.5
        assert film.boxes["Cardiomegaly"][2] / (anatomy.thoracic_width * 256) > 0.5


def test_higher_difficulty_gives_borderline_cardiomegaly():
    for seed in range(3):
        _, easy = phantoms._render(["Cardiomegaly"], rng=np.random.default_rng(seed), difficulty=0.1)
        _, hard = phantoms._render(["Cardiomegaly"], rng=np.random.default_rng(seed), difficulty=0.9)
        assert 0.5 < hard.heart.ctr < easy.heart.ctr


def test_pneumothorax_darkens_its_region():
    for seed in range(4):
        diff, box = _difference("Pneumothorax", seed, difficulty=0.3)
        region = diff[_inside(box, diff.shape)]
        # A dark rim of pleural air; only the thin visceral pleural line is brighter.
        assert region.mean() < -0.3
        assert -region[region < 0].sum() > 2 * region[region > 0].sum()


@pytest.mark.parametrize("finding", ["Nodule", "Mass", "Effusion", "Pneumonia", "Atelectasis", "Infiltration"])
def test_opacities_brighten_their_region(finding):
    for seed in range(4):
        diff, box = _difference(finding, seed, difficulty=0.3)
        assert diff[_inside(box, diff.shape)].mean() > 2


def test_mass_boxes_are_larger_than_nodule_boxes():
    def area(finding, seed):
        _, _, w, h = _film([finding], seed=seed).boxes[finding]
        return w * h

    nodules = [area("Nodule", seed) for seed in range(8)]
    masses = [area("Mass", seed) for seed in range(8)]
    assert np.mean(masses) > 3 * np.mean(nodules)
    assert min(masses) > np.median(nodules)


def test_effusion_sits_at_a_lung_base():
    for seed in range(4):
        _, y, _, h = _film(["Effusion"], seed=seed).boxes["Effusion"]
        assert y + h / 2 > 0.55 * 256


def test_emphysema_darkens_and_enlarges_the_lungs():
    for seed in range(3):
        normal = _film([], seed=seed).pixels.astype(float)
        emphysema = _film(["Emphysema"], seed=seed, difficulty=0.3).pixels.astype(float)
        assert emphysema.mean() < normal.mean() - 2
        # Lower, flatter domes: the band above the normal domes is now lung (dark).
        assert emphysema[165:190].mean() < normal[165:190].mean() - 3


@pytest.mark.parametrize("finding", [f for f in FINDINGS if f != "Cardiomegaly"])
def test_higher_difficulty_lowers_contrast(finding):
    def contrast(difficulty: float, seed: int) -> float:
        diff, box = _difference(finding, seed, difficulty=difficulty)
        region = diff[_inside(box, diff.shape)] if box else diff
        return np.abs(region).mean()

    for seed in range(3):
        assert contrast(0.9, seed) < 0.75 * contrast(0.1, seed)


def test_sex_changes_the_film():
    male, female = _film([], seed=6, sex="M"), _film([], seed=6, sex="F")
    assert not np.array_equal(male.pixels, female.pixels)


@pytest.mark.parametrize("age", [0.0, 9.0, 45.0, 95.0, 414.0, float("nan")])
def test_any_recorded_age_renders(age):
    # NIH ages include implausible values (over 400 years); they must not break rendering.
    assert _film([], seed=0, size=64, age_years=age).pixels.shape == (64, 64)


def test_unknown_finding_is_rejected_by_name():
    with pytest.raises(ValueError, match="Pneumonitis"):
        _film(["Nodule", "Pneumonitis"], seed=0)
    with pytest.raises(ValueError, match="No Finding"):
        _film(["No Finding"], seed=0)


@pytest.mark.parametrize("difficulty", [-0.01, 1.01, float("nan")])
def test_difficulty_outside_unit_interval_is_rejected(difficulty):
    with pytest.raises(ValueError, match="difficulty"):
        _film([], seed=0, difficulty=difficulty)


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_difficulty_bounds_are_accepted(difficulty):
    assert _film(["Nodule"], seed=0, size=64, difficulty=difficulty).pixels.shape == (64, 64)


def test_a_single_label_string_is_not_a_collection_of_labels():
    with pytest.raises(TypeError, match="collection"):
        _film("Nodule", seed=0)


def test_bad_size_and_sex_are_rejected():
    with pytest.raises(ValueError, match="size"):
        _film([], seed=0, size=32)
    with pytest.raises(ValueError, match="size"):
        _film([], seed=0, size=2048)
    with pytest.raises(ValueError, match="sex"):
        _film([], seed=0, sex="X")

"""Synthetic ("phantom") frontal chest radiographs with NIH findings drawn in.

The film is built in density space (bright = dense): soft tissue, bone and the
mediastinum add density, aerated lung takes it away. Airspace findings replace a
fraction of the lung air (``fill``), so an opacity can at most reach soft-tissue
density, as fluid or tissue in a real lung does, and never a saturated blob.

Coordinates are fractions of the image side: ``u`` runs left to right, ``v`` top
to bottom. The film is PA: the patient's right is the image's left. Per lung,
``a`` is the distance from the midline towards that lung's chest wall.

Randomness is split before anything is drawn: the anatomy, the detector noise and
each finding get their own generator, so rendering the same seed with and without
a finding gives the same patient, and only the finding differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from cxrutils.labels import BOX_FINDINGS, FINDINGS

MIN_SIZE = 64
MAX_SIZE = 1024
SEXES = ("M", "F")

# Patient's right lung is drawn on the image's left.
RIGHT, LEFT = -1, 1

# Exponent of the superellipse that outlines each lung.
_LUNG_POWER = 2.4
# Finding contrast falls from 1.0 at difficulty 0 to this at difficulty 1.
_MIN_CONTRAST = 0.25
# Findings shrink by up to this fraction at difficulty 1.
_MAX_SHRINK = 0.25
# A footprint pixel belongs to the box when it is above this fraction of the peak.
_BOX_THRESHOLD = 0.2


@dataclass(frozen=True)
class Phantom:
    """A rendered film and one box per drawn finding that NIH gives boxes for."""

    pixels: np.ndarray
    boxes: dict[str, tuple[float, float, float, float]]


# ---------------------------------------------------------------------------
# Anatomy parameters


@dataclass(frozen=True)
class _Lung:
    """One lung: a superellipse widening downwards, cut by the mediastinum and a diaphragm dome."""

    side: int
    centre_a: float
    centre_v: float
    half_width: float
    half_height: float
    flare: float  # the lung widens towards its base by this fraction
    dome_top: float
    dome_peak_a: float
    dome_curvature: float
    medial_a: float
    aortic_knob: float  # bulge of the left mediastinal border at the arch

    @property
    def apex_v(self) -> float:
        return self.centre_v - self.half_height

    def half_width_at(self, v: np.ndarray | float) -> np.ndarray | float:
        return self.half_width * (1.0 + self.flare * (v - self.centre_v) / self.half_height)

    def rho(self, a: np.ndarray | float, v: np.ndarray | float) -> np.ndarray | float:
        """Normalised elliptic radius: 1 on the lung's outer border."""
        # A superellipse: rounder apices and fuller bases than an ellipse.
        x = np.abs((a - self.centre_a) / self.half_width_at(v))
        y = np.abs((v - self.centre_v) / self.half_height)
        return (x**_LUNG_POWER + y**_LUNG_POWER) ** (1.0 / _LUNG_POWER)

    def dome(self, a: np.ndarray | float) -> np.ndarray | float:
        return self.dome_top + self.dome_curvature * (a - self.dome_peak_a) ** 2

    def medial_border(self, v: np.ndarray | float) -> np.ndarray | float:
        return self.medial_a + self.aortic_knob * np.exp(-(((v - (self.apex_v + 0.2)) / 0.035) ** 2))

    def lateral_border(self, v: np.ndarray | float) -> np.ndarray | float:
        t = np.abs(np.clip((v - self.centre_v) / self.half_height, -1.0, 1.0))
        return self.centre_a + self.half_width_at(v) * (1.0 - t**_LUNG_POWER) ** (1.0 / _LUNG_POWER)

    def lateral_extent(self) -> float:
        """Widest lateral reach above the diaphragm (for the thoracic width)."""
        v = np.linspace(self.apex_v, self.centre_v + self.half_height, 400)
        a = self.lateral_border(v)
        above = v < self.dome(a)
        return float(a[above].max())

    def base_v(self) -> float:
        """Lowest point of the lung: the lateral costophrenic angle."""
        v = np.linspace(self.centre_v, self.centre_v + self.half_height, 400)
        above = v < self.dome(self.lateral_border(v))
        return float(v[above].max())


@dataclass(frozen=True)
class _Heart:
    """The cardiac silhouette as a tilted ellipse sitting on the left dome."""

    ctr: float  # cardiothoracic ratio: heart width / thoracic width
    height: float  # full vertical extent, in image fractions
    tilt: float  # radians; the apex points down and to the patient's left
    right_fraction: float  # share of the heart width to the right of the midline


@dataclass(frozen=True)
class _Anatomy:
    """Everything random about one patient and exposure, drawn before any finding."""

    midline: float
    scale: float
    lungs: tuple[_Lung, _Lung]
    heart: _Heart
    body_half_width: float
    shoulder_v: float
    tissue: float
    bone: float
    air_depth: float
    marking_gain: float
    hilar_gain: float
    hilum_v: float
    rib_top: float
    rib_spacing: float
    rib_thickness: float
    rib_arch: float
    rib_jitter: tuple[float, ...]
    breasts: bool
    gastric_bubble: float
    black: float
    gain: float
    gamma: float
    gradient: float
    gradient_angle: float
    blur: float  # Gaussian sigma as a fraction of the image side
    noise: float
    mottle: float

    @property
    def thoracic_width(self) -> float:
        return sum(lung.lateral_extent() for lung in self.lungs)

    @property
    def heart_width(self) -> float:
        return self.heart.ctr * self.thoracic_width

    def lung(self, side: int) -> _Lung:
        return self.lungs[0] if side == RIGHT else self.lungs[1]

    def heart_ellipse(self) -> tuple[float, float, float, float, float]:
        """(centre_u, centre_v, semi_major, semi_minor, tilt) giving the heart's width and height."""
        heart = self.heart
        width = self.heart_width
        cos2, sin2 = math.cos(heart.tilt) ** 2, math.sin(heart.tilt) ** 2
        half_w, half_h = width / 2, heart.height / 2
        # A rotated ellipse's half-width and half-height are linear in A^2 and B^2.
        det = cos2**2 - sin2**2
        major2 = (cos2 * half_w**2 - sin2 * half_h**2) / det
        minor2 = max((cos2 * half_h**2 - sin2 * half_w**2) / det, (0.3 * half_h) ** 2)
        bottom = self.lung(LEFT).dome_top + 0.045
        centre_u = self.midline + width * (0.5 - heart.right_fraction)
        return centre_u, bottom - half_h, math.sqrt(major2), math.sqrt(minor2), heart.tilt


def _bone_density(age_years: float) -> float:
    """Bone density peaks in young adults and falls modestly with age."""
    age = 50.0 if not math.isfinite(age_years) else min(max(age_years, 0.0), 100.0)
    if age < 20:
        return 0.85 + 0.01 * age
    return 1.05 - 0.005 * (age - 20)


def _sample_anatomy(rng: np.random.Generator, difficulty: float, sex: str, age_years: float) -> _Anatomy:
    variability = 0.75 + 0.5 * difficulty

    def jitter(sd: float) -> float:
        return float(rng.normal(0.0, sd * variability))

    scale = float(np.clip(1.0 + jitter(0.035), 0.88, 1.1))
    width_scale = scale * (0.96 if sex == "F" else 1.0)
    midline = 0.5 + jitter(0.01)
    v_shift = jitter(0.015)
    half_height = 0.385 * scale + jitter(0.008)
    centre_v = 0.49 + v_shift
    right_dome = centre_v + 0.185 + jitter(0.015)
    domes = {RIGHT: right_dome, LEFT: right_dome + 0.022 + jitter(0.008)}
    lungs = []
    for side in (RIGHT, LEFT):
        centre_a = 0.205 * width_scale + jitter(0.006)
        lungs.append(
            _Lung(
                side=side,
                centre_a=centre_a,
                centre_v=centre_v,
                half_width=0.175 * width_scale * (1.0 + jitter(0.03)),
                half_height=half_height,
                flare=0.16 + jitter(0.03),
                dome_top=domes[side],
                dome_peak_a=centre_a + jitter(0.012),
                dome_curvature=2.0 * (1.0 + jitter(0.15)),
                medial_a=0.052 * scale + jitter(0.004) + (0.005 if side == LEFT else 0.0),
                aortic_knob=(0.035 + jitter(0.008)) if side == LEFT else 0.0,
            )
        )
    heart = _Heart(
        ctr=float(rng.uniform(0.40, 0.48)),
        height=0.29 * scale + jitter(0.012),
        tilt=math.radians(float(rng.uniform(20.0, 32.0))),
        right_fraction=float(rng.uniform(0.27, 0.35)),
    )
    return _Anatomy(
        midline=midline,
        scale=scale,
        lungs=(lungs[0], lungs[1]),
        heart=heart,
        body_half_width=0.465 * width_scale + jitter(0.02),
        shoulder_v=0.12 + v_shift + jitter(0.01),
        tissue=0.55 + jitter(0.03),
        bone=_bone_density(age_years) * (1.0 + jitter(0.08)),
        air_depth=0.37 + jitter(0.025),
        marking_gain=1.0 + jitter(0.2),
        hilar_gain=float(rng.uniform(0.6, 1.4)),
        hilum_v=centre_v - 0.035 + jitter(0.01),
        rib_top=centre_v - half_height - 0.005 + jitter(0.008),
        rib_spacing=0.056 * scale * (1.0 + jitter(0.04)),
        rib_thickness=0.018 * scale * (1.0 + jitter(0.08)),
        rib_arch=1.4 * (1.0 + jitter(0.1)),
        rib_jitter=tuple(float(x) for x in rng.normal(0.0, 0.003, 14)),
        breasts=sex == "F",
        gastric_bubble=float(rng.uniform(0.0, 1.0)),
        black=float(rng.uniform(0.02, 0.07)),
        gain=float(rng.uniform(1.0, 1.2)),
        gamma=float(rng.uniform(0.85, 1.15)),
        gradient=float(rng.uniform(0.0, 0.12)),
        gradient_angle=float(rng.uniform(0.0, 2 * math.pi)),
        blur=float(rng.uniform(0.0015, 0.0035)) * (1.0 + 0.5 * difficulty),
        noise=float(rng.uniform(0.008, 0.016)) * (1.0 + difficulty),
        mottle=float(rng.uniform(0.002, 0.005)) * (1.0 + difficulty),
    )


# ---------------------------------------------------------------------------
# Rasterising


def _contrast(difficulty: float) -> float:
    """Multiplier on every finding's strength."""
    return 1.0 - (1.0 - _MIN_CONTRAST) * difficulty


def _ramp(x: np.ndarray) -> np.ndarray:
    """Soft step: 0 below -0.5, 1 above 0.5 (x in units of the anti-aliasing edge)."""
    return np.clip(x + 0.5, 0.0, 1.0)


@dataclass
class _Patch:
    """Values over a rectangular window of the image."""

    rows: slice
    cols: slice
    values: np.ndarray


@dataclass
class _Scene:
    """The rasterised anatomy plus the layers that findings draw into."""

    anatomy: _Anatomy
    size: int
    difficulty: float
    u: np.ndarray  # (1, size)
    v: np.ndarray  # (size, 1)
    base: np.ndarray  # density of everything except lung air and markings
    lung_masks: dict[int, np.ndarray]
    air: np.ndarray  # lung air thickness, 0..1
    markings: np.ndarray
    heart_mask: np.ndarray
    heart: tuple[float, float, float, float, float]  # anatomy.heart_ellipse()
    fill: np.ndarray = field(init=False)
    marking_keep: np.ndarray = field(init=False)
    lucency: np.ndarray = field(init=False)
    additive: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.size, self.size)
        self.fill = np.zeros(shape, np.float32)
        self.marking_keep = np.ones(shape, np.float32)
        self.lucency = np.zeros(shape, np.float32)
        self.additive = np.zeros(shape, np.float32)

    @property
    def edge(self) -> float:
        return 1.0 / self.size

    @property
    def contrast(self) -> float:
        return _contrast(self.difficulty)

    @property
    def shrink(self) -> float:
        return 1.0 - _MAX_SHRINK * self.difficulty

    def window(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        return _window(self.u, self.v, u0, u1, v0, v1)

    def lateral(self, side: int, u: np.ndarray) -> np.ndarray:
        return side * (u - self.anatomy.midline)

    def u_of(self, side: int, a: float) -> float:
        return self.anatomy.midline + side * a

    def add_fill(self, patch: _Patch) -> None:
        """Replace a further fraction of the remaining lung air."""
        region = self.fill[patch.rows, patch.cols]
        region += (1.0 - region) * np.clip(patch.values, 0.0, 1.0)

    def add(self, layer: np.ndarray, patch: _Patch) -> None:
        layer[patch.rows, patch.cols] += patch.values

    def lung_footprint(self, side: int, patch: _Patch) -> _Patch:
        """What of a shape actually shows: the part over aerated lung."""
        return _Patch(patch.rows, patch.cols, patch.values * self.lung_masks[side][patch.rows, patch.cols])

    def inside_lung(self, side: int, a: float, v: float, margin: float) -> bool:
        lung = self.anatomy.lung(side)
        if a < lung.medial_border(v) + margin or v > lung.dome(a) - margin:
            return False
        if lung.rho(a, v) > 1.0 - margin / lung.half_width_at(v):
            return False
        hu, hv, major, minor, tilt = self.heart
        du, dv = self.u_of(side, a) - hu, v - hv
        x = du * math.cos(tilt) + dv * math.sin(tilt)
        y = -du * math.sin(tilt) + dv * math.cos(tilt)
        return math.hypot(x / (major + margin), y / (minor + margin)) > 1.0

    def sample_point(
        self,
        rng: np.random.Generator,
        side: int,
        zone: tuple[float, float],
        margin: float,
        lateral: tuple[float, float] = (0.0, 1.0),
    ) -> tuple[float, float]:
        """A point (a, v) inside one lung, in a band of its height (0 = apex, 1 = dome)."""
        lung = self.anatomy.lung(side)
        top, bottom = lung.apex_v, lung.dome_top
        a_lo, a_hi = lung.medial_a, lung.lateral_extent()
        for _ in range(200):
            v = top + (bottom - top) * rng.uniform(*zone)
            a = a_lo + (a_hi - a_lo) * rng.uniform(*lateral)
            if self.inside_lung(side, a, v, margin):
                return a, v
        # Deterministic fallback: the middle of the lung.
        return lung.centre_a, lung.centre_v + 0.05

    def compose(self) -> np.ndarray:
        anatomy = self.anatomy
        aerated = self.air * (1.0 - self.fill)
        markings = self.markings * (1.0 - self.fill) * self.marking_keep * anatomy.marking_gain
        return self.base - anatomy.air_depth * aerated + markings - self.lucency + self.additive


def _window(
    u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel slices and coordinates of a normalised rectangle, clipped to the image."""
    size = u.shape[1]
    c0 = min(size - 1, max(0, math.floor(u0 * size)))
    r0 = min(size - 1, max(0, math.floor(v0 * size)))
    c1 = max(c0 + 1, min(size, math.ceil(u1 * size) + 1))
    r1 = max(r0 + 1, min(size, math.ceil(v1 * size) + 1))
    return slice(r0, r1), slice(c0, c1), u[:, c0:c1], v[r0:r1, :]


def _noise_field(
    rng: np.random.Generator, cells: int, size: int, rows: slice, cols: slice, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Smooth noise (about unit variance) drawn on a fixed grid, so it is the same at any size.

    ``shape`` samples the window more coarsely than one value per pixel.
    """
    grid = rng.standard_normal((cells, cells)).astype(np.float32) * 1.6
    scale = cells / size
    box = (cols.start * scale, rows.start * scale, cols.stop * scale, rows.stop * scale)
    height, width = shape or (rows.stop - rows.start, cols.stop - cols.start)
    out = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.float32)


def _upsample(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if values.shape == shape:
        return values
    out = Image.fromarray(values.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _rasterise(anatomy: _Anatomy, size: int, difficulty: float, rng: np.random.Generator) -> _Scene:
    u = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :]
    v = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None]
    edge = 1.0 / size
    mid = anatomy.midline
    offset = np.abs(u - mid)

    # Soft tissue: torso with sloping shoulders and a neck, thicker in the middle.
    neck = 0.09 * anatomy.scale
    # Sloping shoulders: the half-width climbs from the neck and rounds off into the chest wall.
    slope = (anatomy.body_half_width - neck) / max(anatomy.shoulder_v, 0.05)
    rise = neck + slope * np.maximum(v, 0.0)
    half_width = anatomy.body_half_width - np.logaddexp(0.0, (anatomy.body_half_width - rise) / 0.03) * 0.03
    body = _ramp((half_width - offset) / (2 * edge))
    thickness = np.sqrt(np.clip(1.0 - (offset / half_width) ** 2, 0.0, 1.0))
    base = (anatomy.tissue * (0.6 + 0.4 * thickness) * body).astype(np.float32)

    right, left = anatomy.lungs
    # Abdomen below the domes (liver on the right) is a little denser than chest wall.
    domes = np.where(u < mid, right.dome(np.abs(u - mid)), left.dome(np.abs(u - mid)))
    abdomen = _ramp((v - domes) / (3 * edge)) * body
    base += 0.05 * abdomen
    if anatomy.gastric_bubble > 0.3:
        gu, gv = mid + 0.2 * anatomy.scale, left.dome(0.2 * anatomy.scale) + 0.04
        rows, cols, uu, vv = _window(u, v, gu - 0.07, gu + 0.07, gv - 0.05, gv + 0.05)
        bubble = _ramp((1.0 - np.sqrt(((uu - gu) / 0.05) ** 2 + ((vv - gv) / 0.03) ** 2)) * 0.03 / edge)
        base[rows, cols] -= 0.12 * anatomy.gastric_bubble * bubble * (vv > gv - 0.005)

    if anatomy.breasts:
        for side in (RIGHT, LEFT):
            bu, bv = mid + side * 0.24 * anatomy.scale, right.dome_top - 0.05
            r = np.sqrt(((u - bu) / 0.18) ** 2 + ((v - bv) / 0.11) ** 2)
            # Density builds up downwards and stops at a crisp inferior margin.
            base += 0.05 * np.clip((1.0 - r) * 10.0, 0.0, 1.0) * np.clip((v - bv + 0.13) / 0.15, 0.0, 1.0) * body

    # Heart: the lungs are cut away around it; above the dome it adds a little density.
    hu, hv, major, minor, tilt = anatomy.heart_ellipse()
    rows, cols, uu, vv = _window(u, v, hu - major - 0.01, hu + major + 0.01, hv - major - 0.01, hv + major + 0.01)
    x = (uu - hu) * math.cos(tilt) + (vv - hv) * math.sin(tilt)
    y = -(uu - hu) * math.sin(tilt) + (vv - hv) * math.cos(tilt)
    heart_radius = np.sqrt((x / major) ** 2 + (y / minor) ** 2)
    heart_mask = np.zeros((size, size), np.float32)
    heart_mask[rows, cols] = _ramp((1.0 - heart_radius) * minor / edge)
    above_domes = 1.0 - abdomen
    base[rows, cols] += 0.04 * np.sqrt(np.clip(1.0 - heart_radius**2, 0.0, 1.0)) * above_domes[rows, cols]

    # Spine and mediastinum.
    rows, cols, uu, vv = _window(u, v, mid - 0.1, mid + 0.1, 0.0, 1.0)
    spine = _ramp((0.033 * anatomy.scale - np.abs(uu - mid)) / edge)
    vertebra = ((vv - anatomy.rib_top) / (0.045 * anatomy.scale)) % 1.0
    disc = np.exp(-(((vertebra - 0.5) / 0.09) ** 2))
    base[rows, cols] += anatomy.bone * 0.07 * spine * (1.0 - 0.4 * disc) * (1.0 - 0.5 * abdomen[rows, cols])
    superior = np.clip((hv - minor - vv) / 0.05, 0.0, 1.0)
    mediastinum = np.zeros((size, size), np.float32)
    mediastinum[rows, cols] = np.clip((0.075 * anatomy.scale - np.abs(uu - mid)) / 0.025, 0.0, 1.0)
    base[rows, cols] += 0.04 * mediastinum[rows, cols] * superior
    # Trachea and main bronchi: a column of air down to the carina.
    carina = anatomy.hilum_v - 0.09
    rows, cols, uu, vv = _window(u, v, mid - 0.1, mid + 0.1, 0.0, carina + 0.08)
    trachea = _ramp((0.012 * anatomy.scale - np.abs(uu - mid)) / edge) * _ramp((carina - vv) / (2 * edge))
    for side in (RIGHT, LEFT):
        slope = 0.8 if side == RIGHT else 0.6
        along = (vv - carina) / math.hypot(1.0, slope)
        perp = np.abs(side * (uu - mid) - slope * (vv - carina)) / math.hypot(1.0, slope)
        bronchus = _ramp((0.009 - perp) / edge) * (vv > carina - 0.01) * _ramp((0.06 - along) / (4 * edge))
        trachea = np.maximum(trachea, bronchus)
    base[rows, cols] -= 0.14 * trachea

    # Film latitude: bone barely shows through the dense heart, mediastinum and abdomen.
    hidden = np.maximum(0.6 * heart_mask * above_domes, np.maximum(0.5 * abdomen, 0.5 * mediastinum))
    base += anatomy.bone * _ribs_and_clavicles(anatomy, u, v, size) * (1.0 - hidden)

    lung_masks: dict[int, np.ndarray] = {}
    air = np.zeros((size, size), np.float32)
    markings = np.zeros((size, size), np.float32)
    for lung in anatomy.lungs:
        a_max = lung.lateral_extent() + 0.01
        u_lo, u_hi = sorted((mid + lung.side * (lung.medial_a - 0.01), mid + lung.side * a_max))
        rows, cols, uu, vv = _window(u, v, u_lo, u_hi, lung.apex_v - 0.01, lung.base_v() + 0.01)
        a = lung.side * (uu - mid)
        rho = lung.rho(a, vv)
        mask = (
            _ramp((1.0 - rho) * lung.half_width / edge)
            * _ramp((a - lung.medial_border(vv)) / edge)
            * _ramp((lung.dome(a) - vv) / edge)
            * (1.0 - heart_mask[rows, cols])
        ).astype(np.float32)
        full = np.zeros((size, size), np.float32)
        full[rows, cols] = mask
        lung_masks[lung.side] = full
        # Thinner lung near its edges and the dome, so the lung greys out towards them.
        depth = (0.55 + 0.45 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))) * np.clip(
            (lung.dome(a) - vv) / 0.05, 0.5, 1.0
        ) ** 0.5
        air[rows, cols] += mask * depth
        # Vessel texture is smooth at large sizes, so it is computed on at most ~400 px.
        step = max(1, size // 400)
        vessels = _vessels(anatomy, lung, a[:, ::step], vv[::step, :], rng, size, rows, cols)
        markings[rows, cols] += mask * _upsample(vessels, mask.shape)
    return _Scene(
        anatomy=anatomy,
        size=size,
        difficulty=difficulty,
        u=u,
        v=v,
        base=base.astype(np.float32),
        lung_masks=lung_masks,
        air=air,
        markings=markings,
        heart_mask=heart_mask * above_domes,
        heart=(hu, hv, major, minor, tilt),
    )


def _ribs_and_clavicles(anatomy: _Anatomy, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    edge = 1.0 / size
    bones = np.zeros((size, size), np.float32)
    mid = anatomy.midline
    spacing = anatomy.rib_spacing
    for lung in anatomy.lungs:
        wall = lung.lateral_extent() + 0.03
        u_lo, u_hi = sorted((mid + lung.side * 0.02, mid + lung.side * (wall + 0.01)))
        rows, cols, uu, vv = _window(u, v, u_lo, u_hi, anatomy.rib_top - 0.06, lung.base_v() + 0.12)
        a = np.maximum(lung.side * (uu - mid), 0.0)
        cage_rho = np.sqrt(
            ((a - lung.centre_a) / (lung.half_width_at(vv) + 0.03)) ** 2
            + ((vv - lung.centre_v) / (lung.half_height + 0.03)) ** 2
        )
        inside_cage = _ramp((1.0 - cage_rho) * lung.half_width / (3 * edge)) * _ramp((a - 0.03) / (3 * edge))
        inside_cage = np.maximum(
            inside_cage, _ramp((0.09 - a) / (3 * edge)) * _ramp((a - 0.03) / (3 * edge)) * (vv > anatomy.rib_top - 0.02)
        )
        # Posterior ribs leave the spine almost level, then curve down to the lateral wall.
        arch = -0.25 * anatomy.rib_arch * a + 1.3 * anatomy.rib_arch * a**2
        index_f = (vv - anatomy.rib_top - arch) / spacing
        index = np.floor(index_f)
        jitter = np.asarray(anatomy.rib_jitter, np.float32)[np.clip(index, 0, 13).astype(np.intp)]
        phase = index_f - index - jitter / spacing
        thick = (anatomy.rib_thickness * (0.8 + 0.8 * a)) / spacing
        centre = np.abs(phase - thick / 2) / (thick / 2)
        band = _ramp((1.0 - centre) * thick * spacing / (2 * edge)) * (0.65 + 0.35 * np.clip(centre, 0, 1) ** 4)
        posterior = band * ((index >= 0) & (index < 10)) * inside_cage
        # Anterior ribs run down and medially from the wall; only their bony lateral parts show.
        ant_f = (vv - anatomy.rib_top - 0.02 - 0.55 * (wall - a)) / (spacing * 1.15)
        ant_phase = ant_f - np.floor(ant_f)
        ant_thick = 1.4 * anatomy.rib_thickness / (spacing * 1.15)
        ant_band = _ramp((ant_thick / 2 - np.abs(ant_phase - ant_thick / 2)) * spacing / edge)
        anterior = 0.35 * ant_band * _ramp((a - 0.16) / 0.04) * inside_cage * (ant_f >= 1) * (ant_f < 6)
        bones[rows, cols] += 0.085 * np.maximum(posterior, anterior)

        # Clavicle: from the sternal notch out and slightly up to the shoulder.
        med_a, med_v = 0.03, anatomy.rib_top + 0.075
        lat_a, lat_v = 0.33 * anatomy.scale, anatomy.rib_top + 0.01
        u_lo, u_hi = sorted((mid + lung.side * med_a, mid + lung.side * (lat_a + 0.02)))
        rows, cols, uu, vv = _window(u, v, u_lo, u_hi, lat_v - 0.04, med_v + 0.04)
        a = lung.side * (uu - mid)
        t = np.clip((a - med_a) / (lat_a - med_a), 0.0, 1.0)
        centre_v = med_v + (lat_v - med_v) * t - 0.012 * np.sin(2 * np.pi * t)
        clavicle = _ramp((0.013 - np.abs(vv - centre_v)) / edge) * _ramp((a - med_a) / edge) * _ramp((lat_a - a) / edge)
        bones[rows, cols] = np.maximum(bones[rows, cols], 0.14 * clavicle)
    return bones


def _vessels(
    anatomy: _Anatomy,
    lung: _Lung,
    a: np.ndarray,
    v: np.ndarray,
    rng: np.random.Generator,
    size: int,
    rows: slice,
    cols: slice,
) -> np.ndarray:
    """Lung markings: tapering branching vessels fanning out from the hilum."""
    hilum_a = lung.medial_a + 0.035
    hilum_v = anatomy.hilum_v - (0.01 if lung.side == LEFT else 0.0)
    da, dv = a - hilum_a, v - hilum_v
    r = np.sqrt(da**2 + dv**2)
    shape = r.shape
    angle = np.arctan2(dv, da) + 0.22 * _noise_field(rng, 10, size, rows, cols, shape)
    wiggle = 0.05 * _noise_field(rng, 24, size, rows, cols, shape)
    out = np.zeros_like(r)
    for level, (per_radian, start, width, weight) in enumerate(
        ((2.0, 0.03, 0.0045, 1.0), (4.0, 0.07, 0.0032, 0.75), (8.0, 0.14, 0.0022, 0.55))
    ):
        t = (angle + wiggle * (level + 1) * 0.5) * per_radian + rng.uniform(0, 1)
        nearest = np.round(t)
        strength = rng.uniform(0.4, 1.0, 64).astype(np.float32)[(nearest.astype(np.intp)) % 64]
        distance = np.abs(t - nearest) / per_radian * r
        taper = width * np.clip(1.0 - r / 0.45, 0.2, 1.0)
        onset = np.clip((r - start) / 0.03, 0.0, 1.0)
        out = np.maximum(out, weight * strength * onset * np.exp(-((distance / taper) ** 2)))
    hilar = np.exp(-(((da - 0.005) / 0.035) ** 2 + (dv / 0.05) ** 2))
    return (0.075 * out * np.exp(-r / 0.28) + 0.08 * anatomy.hilar_gain * hilar).astype(np.float32)


# ---------------------------------------------------------------------------
# Findings that change the anatomy itself


def _draw_cardiomegaly(anatomy: _Anatomy, rng: np.random.Generator, difficulty: float) -> _Anatomy:
    """Enlarge the heart to a cardiothoracic ratio above 0.5."""
    # Skewed towards borderline hearts, as most labelled cardiomegaly is.
    ctr = 0.51 + 0.14 * rng.uniform(0.0, 1.0) ** 1.5 * _contrast(difficulty)
    growth = ctr / anatomy.heart.ctr
    heart = replace(
        anatomy.heart, ctr=float(ctr), height=anatomy.heart.height * growth**0.4, tilt=anatomy.heart.tilt * 0.85
    )
    return replace(anatomy, heart=heart)


def _draw_emphysema(anatomy: _Anatomy, rng: np.random.Generator, difficulty: float) -> _Anatomy:
    """Hyperinflation: bigger, darker lungs, flat low domes, pruned vessels, narrow heart."""
    strength = _contrast(difficulty) * rng.uniform(0.35, 1.0)
    drop = 0.07 * strength
    lungs = tuple(
        replace(
            lung,
            dome_top=lung.dome_top + drop,
            dome_curvature=lung.dome_curvature * (1.0 - 0.65 * strength),
            half_width=lung.half_width * (1.0 + 0.05 * strength),
            half_height=lung.half_height + 0.4 * drop,
            centre_v=lung.centre_v + 0.4 * drop,
        )
        for lung in anatomy.lungs
    )
    # A narrow, vertical heart; an enlarged one (cardiomegaly drawn first) stays enlarged.
    ctr = anatomy.heart.ctr if anatomy.heart.ctr > 0.5 else anatomy.heart.ctr * (1.0 - 0.1 * strength)
    heart = replace(anatomy.heart, ctr=ctr, height=anatomy.heart.height * (1.0 + 0.1 * strength))
    return replace(
        anatomy,
        lungs=lungs,
        heart=heart,
        air_depth=anatomy.air_depth * (1.0 + 0.22 * strength),
        marking_gain=anatomy.marking_gain * (1.0 - 0.55 * strength),
    )


# ---------------------------------------------------------------------------
# Findings drawn over the anatomy; each returns its footprint (for the box).


def _random_side(rng: np.random.Generator) -> int:
    return RIGHT if rng.random() < 0.5 else LEFT


def _round_opacity(scene: _Scene, rng: np.random.Generator, radius: float, lobulation: float, density: float) -> _Patch:
    side = _random_side(rng)
    a, cv = scene.sample_point(rng, side, (0.1, 0.85), margin=0.6 * radius)
    cu = scene.u_of(side, a)
    harmonics = [(k, rng.uniform(0, lobulation), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    reach = radius * (1.0 + 3 * lobulation) + 0.01
    rows, cols, uu, vv = scene.window(cu - reach, cu + reach, cv - reach, cv + reach)
    angle = np.arctan2(vv - cv, uu - cu)
    outline = radius * (1.0 + sum(amp * np.sin(k * angle + ph) for k, amp, ph in harmonics))
    r = np.sqrt((uu - cu) ** 2 + (vv - cv) ** 2)
    shape = _ramp((outline - r) / (1.5 * scene.edge)) * np.sqrt(np.clip(1.0 - (r / (outline + 1e-6)) ** 2, 0.15, 1.0))
    patch = _Patch(rows, cols, shape.astype(np.float32))
    scene.add_fill(_Patch(rows, cols, density * scene.contrast * shape))
    # Solid tissue also shows over the mediastinum and ribs, a little.
    scene.add(scene.additive, _Patch(rows, cols, 0.03 * scene.contrast * shape))
    return patch


def _draw_nodule(scene: _Scene, rng: np.random.Generator) -> _Patch:
    radius = rng.uniform(0.015, 0.035) * scene.shrink
    return _round_opacity(scene, rng, radius, lobulation=0.05, density=rng.uniform(0.6, 0.9))


def _draw_mass(scene: _Scene, rng: np.random.Generator) -> _Patch:
    radius = rng.uniform(0.05, 0.095) * scene.shrink
    return _round_opacity(scene, rng, radius, lobulation=0.1, density=rng.uniform(0.6, 0.85))


def _draw_effusion(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Basal fluid with a meniscus climbing the lateral wall; bilateral in a third of cases."""
    main = _random_side(rng)
    sides = [main, -main] if rng.random() < 0.3 else [main]
    footprints = []
    for i, side in enumerate(sides):
        lung = scene.anatomy.lung(side)
        # Mostly small: many effusions only blunt the costophrenic angle.
        volume = (0.2 + 0.8 * rng.uniform(0.0, 1.0) ** 1.5) * (1.0 if i == 0 else 0.6)
        base_v = lung.base_v()
        lateral_level = base_v - (0.03 + 0.15 * volume) * scene.shrink
        medial_level = lateral_level + 0.02 + 0.05 * volume
        soft = rng.uniform(0.012, 0.03)
        rows, cols, uu, vv = scene.window(
            *sorted((scene.u_of(side, lung.medial_a - 0.02), scene.u_of(side, lung.lateral_extent() + 0.02))),
            lateral_level - soft - 0.02,
            base_v + 0.02,
        )
        a = scene.lateral(side, uu)
        lateral = np.clip((a - lung.medial_a) / (lung.lateral_extent() - lung.medial_a), 0.0, 1.0)
        # The meniscus: fluid climbs highest against the lateral chest wall.
        surface = medial_level - (medial_level - lateral_level) * lateral**2
        shape = np.clip((vv - surface) / soft + 0.5, 0.0, 1.0) ** 1.5
        patch = _Patch(rows, cols, shape.astype(np.float32))
        scene.add_fill(_Patch(rows, cols, rng.uniform(0.55, 0.9) * scene.contrast * shape))
        footprints.append(scene.lung_footprint(side, patch))
    return footprints[0]


def _draw_pneumothorax(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """An apical/lateral rim of pleural air without markings, edged by the visceral pleura."""
    side = _random_side(rng)
    lung = scene.anatomy.lung(side)
    rim = rng.uniform(0.08, 0.32) * scene.shrink  # in units of the normalised lung radius
    start, stop = rng.uniform(-0.6, -0.1), rng.uniform(1.6, 2.4)  # radians, 0 = lateral, pi/2 = apex
    u_lo, u_hi = sorted((scene.u_of(side, lung.medial_a - 0.01), scene.u_of(side, lung.lateral_extent() + 0.01)))
    rows, cols, uu, vv = scene.window(u_lo, u_hi, lung.apex_v - 0.01, lung.base_v())
    a = scene.lateral(side, uu)
    dx = (a - lung.centre_a) / lung.half_width_at(vv)
    dy = (lung.centre_v - vv) / lung.half_height
    angle = np.arctan2(dy, dx)
    sector = np.clip((angle - start) / 0.35, 0.0, 1.0) * np.clip((stop - angle) / 0.35, 0.0, 1.0)
    thickness = rim * sector**0.5
    rho = np.sqrt(dx**2 + dy**2)
    pleura_rho = 1.0 - thickness
    scale = lung.half_width
    space = _ramp((rho - pleura_rho) * scale / scene.edge) * (sector > 0.02)
    line = np.exp(-(((rho - pleura_rho) * scale / max(1.1 * scene.edge, 0.0018)) ** 2)) * (sector > 0.2)
    lung_mask = scene.lung_masks[side][rows, cols]
    strength = scene.contrast
    scene.marking_keep[rows, cols] *= 1.0 - space
    scene.lucency[rows, cols] += 0.055 * strength * space * lung_mask
    scene.additive[rows, cols] += 0.06 * strength * line * lung_mask
    return _Patch(rows, cols, (np.maximum(space, line) * lung_mask).astype(np.float32))


def _draw_edema(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Bilateral perihilar haze (bat-wing) fading towards the periphery."""
    density = rng.uniform(0.1, 0.4) * scene.contrast
    reach = rng.uniform(0.11, 0.16) * scene.shrink
    footprints = []
    for side in (RIGHT, LEFT):
        lung = scene.anatomy.lung(side)
        ha, hv = lung.medial_a + 0.06, scene.anatomy.hilum_v + 0.03
        rows, cols, uu, vv = scene.window(
            *sorted((scene.u_of(side, lung.medial_a - 0.01), scene.u_of(side, ha + 3 * reach))),
            hv - 2.5 * reach,
            hv + 2.5 * reach,
        )
        a = scene.lateral(side, uu)
        haze = np.exp(-(((a - ha) / (1.4 * reach)) ** 2) - ((vv - hv) / (1.5 * reach)) ** 2)
        texture = 1.0 + 0.2 * _noise_field(rng, 20, scene.size, rows, cols)
        shape = np.clip(haze * texture, 0.0, 1.0)
        scene.add_fill(_Patch(rows, cols, density * shape))
        footprints.append(scene.lung_footprint(side, _Patch(rows, cols, shape.astype(np.float32))))
    return footprints[0]


def _draw_hernia(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """A retrocardiac round opacity above the diaphragm, often with an air-fluid level."""
    anatomy = scene.anatomy
    radius = rng.uniform(0.045, 0.075) * scene.shrink
    cu = anatomy.midline + rng.uniform(-0.01, 0.07)
    cv = anatomy.lung(LEFT).dome_top - rng.uniform(0.03, 0.07)
    rows, cols, uu, vv = scene.window(cu - radius - 0.01, cu + radius + 0.01, cv - radius - 0.01, cv + radius + 0.01)
    r = np.sqrt((uu - cu) ** 2 + (vv - cv) ** 2)
    disk = _ramp((radius - r) / (1.5 * scene.edge)) * np.sqrt(np.clip(1.0 - (r / radius) ** 2, 0.2, 1.0))
    scene.additive[rows, cols] += 0.08 * scene.contrast * disk
    if rng.random() < 0.5:
        level = cv + rng.uniform(-0.3, 0.3) * radius
        gas = _ramp((radius * 0.92 - r) / scene.edge) * _ramp((level - vv) / scene.edge)
        scene.additive[rows, cols] -= 0.1 * scene.contrast * gas
    return _Patch(rows, cols, disk.astype(np.float32))


def _draw_atelectasis(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Plate-like band or a wedge of collapsed lung, usually basal."""
    side = _random_side(rng)
    zone = (0.55, 0.9) if rng.random() < 0.75 else (0.35, 0.6)
    if rng.random() < 0.6:
        length = rng.uniform(0.08, 0.16) * scene.shrink
        half_thick = rng.uniform(0.006, 0.014)
        a, cv = scene.sample_point(rng, side, zone, margin=0.3 * length, lateral=(0.2, 0.9))
        cu = scene.u_of(side, a)
        tilt = math.radians(rng.uniform(-20.0, 20.0))
        rows, cols, uu, vv = scene.window(cu - length, cu + length, cv - length / 2 - 0.02, cv + length / 2 + 0.02)
        along = (uu - cu) * math.cos(tilt) + (vv - cv) * math.sin(tilt)
        across = -(uu - cu) * math.sin(tilt) + (vv - cv) * math.cos(tilt)
        bend = 0.15 * length * (2 * along / length) ** 2
        shape = (
            np.exp(-(((across - bend) / half_thick) ** 2)) * np.clip(1.0 - (2 * along / length) ** 2, 0.0, 1.0) ** 0.5
        )
        density = rng.uniform(0.7, 0.95)
    else:
        lung = scene.anatomy.lung(side)
        a, cv = scene.sample_point(rng, side, zone, margin=0.02, lateral=(0.5, 0.9))
        ha, hv = lung.medial_a + 0.03, scene.anatomy.hilum_v
        direction = math.atan2(cv - hv, a - ha)
        spread = math.radians(rng.uniform(9.0, 16.0)) * scene.shrink
        rows, cols, uu, vv = scene.window(
            *sorted((scene.u_of(side, lung.medial_a), scene.u_of(side, lung.lateral_extent()))),
            hv - 0.05,
            lung.base_v(),
        )
        da, dv = scene.lateral(side, uu) - ha, vv - hv
        off = np.abs(np.arctan2(dv, da) - direction)
        r = np.sqrt(da**2 + dv**2)
        # A wedge: apex at the hilum, widening to the pleura, opaque mostly peripherally.
        shape = _ramp((spread - off) * r / (2 * scene.edge)) * np.clip((r - 0.05) / 0.08, 0.0, 1.0)
        density = rng.uniform(0.5, 0.75)
    scene.add_fill(_Patch(rows, cols, density * scene.contrast * shape))
    return scene.lung_footprint(side, _Patch(rows, cols, shape.astype(np.float32)))


def _patchy(
    scene: _Scene, rng: np.random.Generator, zone: tuple[float, float], radius: float, cells: int, threshold: float
) -> tuple[int, _Patch]:
    """An ill-defined cluster of blotches in one lung zone."""
    side = _random_side(rng)
    a, cv = scene.sample_point(rng, side, zone, margin=0.3 * radius)
    cu = scene.u_of(side, a)
    rows, cols, uu, vv = scene.window(cu - 2 * radius, cu + 2 * radius, cv - 2 * radius, cv + 2 * radius)
    envelope = np.exp(-(((uu - cu) ** 2 + (vv - cv) ** 2) / radius**2))
    blotches = np.clip((_noise_field(rng, cells, scene.size, rows, cols) + 1.0 - threshold) / 1.2, 0.0, 1.0)
    return side, _Patch(rows, cols, (envelope * blotches).astype(np.float32))


def _draw_infiltration(scene: _Scene, rng: np.random.Generator) -> _Patch:
    zone = [(0.1, 0.4), (0.35, 0.7), (0.6, 0.9)][int(rng.integers(3))]
    side, patch = _patchy(scene, rng, zone, rng.uniform(0.06, 0.11) * scene.shrink, cells=40, threshold=0.8)
    scene.add_fill(_Patch(patch.rows, patch.cols, rng.uniform(0.45, 0.65) * scene.contrast * patch.values))
    return scene.lung_footprint(side, patch)


def _draw_pneumonia(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Fluffy segmental airspace opacity with irregular margins, mostly mid/lower zones."""
    zone = (0.4, 0.9) if rng.random() < 0.8 else (0.15, 0.5)
    side = _random_side(rng)
    radius = rng.uniform(0.06, 0.1) * scene.shrink
    a, cv = scene.sample_point(rng, side, zone, margin=0.5 * radius)
    cu = scene.u_of(side, a)
    rows, cols, uu, vv = scene.window(cu - 1.8 * radius, cu + 1.8 * radius, cv - 1.8 * radius, cv + 1.8 * radius)
    r = np.sqrt(((uu - cu) / 1.15) ** 2 + (vv - cv) ** 2)
    ragged = radius * (1.0 + 0.3 * _noise_field(rng, 18, scene.size, rows, cols))
    core = np.clip((ragged - r) / (0.4 * radius), 0.0, 1.0)
    fluff = np.clip(0.85 + 0.2 * _noise_field(rng, 36, scene.size, rows, cols), 0.0, 1.0)
    shape = (core * fluff).astype(np.float32)
    scene.add_fill(_Patch(rows, cols, rng.uniform(0.6, 0.8) * scene.contrast * shape))
    return scene.lung_footprint(side, _Patch(rows, cols, shape))


def _draw_consolidation(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Homogeneous lobar density, flat-topped along a fissure, with dark air bronchograms."""
    side = _random_side(rng)
    lung = scene.anatomy.lung(side)
    a, cv = scene.sample_point(rng, side, (0.4, 0.75), margin=0.02, lateral=(0.35, 0.75))
    half_w = rng.uniform(0.09, 0.14) * scene.shrink
    half_h = rng.uniform(0.06, 0.09) * scene.shrink
    fissure = cv - half_h * rng.uniform(0.3, 0.7)
    tilt = rng.uniform(-0.2, 0.2)
    cu = scene.u_of(side, a)
    rows, cols, uu, vv = scene.window(cu - 1.4 * half_w, cu + 1.4 * half_w, cv - 1.4 * half_h, cv + 1.4 * half_h)
    ragged = 1.0 + 0.12 * _noise_field(rng, 18, scene.size, rows, cols)
    r = np.sqrt(((uu - cu) / half_w) ** 2 + ((vv - cv) / half_h) ** 2)
    # Sharp where the fissure bounds the lobe, a short fade into aerated lung elsewhere.
    shape = np.clip((ragged - r) / 0.45, 0.0, 1.0) ** 0.7 * _ramp(
        (vv - fissure - tilt * (uu - cu)) / (1.5 * scene.edge)
    )
    ha, hv = lung.medial_a, scene.anatomy.hilum_v
    la = scene.lateral(side, uu)
    angle = np.arctan2(vv - hv, la - ha) + 0.1 * _noise_field(rng, 16, scene.size, rows, cols)
    t = angle * 9.0 + rng.uniform(0, 1)
    dist = np.sqrt((la - ha) ** 2 + (vv - hv) ** 2)
    bronchi = np.exp(-(((t - np.round(t)) / 9.0 * dist / 0.0025) ** 2)) * np.clip(1.0 - dist / 0.35, 0.0, 1.0)
    density = rng.uniform(0.6, 0.9) * scene.contrast
    scene.add_fill(_Patch(rows, cols, density * shape * (1.0 - 0.45 * bronchi)))
    return scene.lung_footprint(side, _Patch(rows, cols, shape.astype(np.float32)))


def _draw_fibrosis(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """Reticular lines, upper-zone or subpleural, usually bilateral."""
    upper = rng.random() < 0.6
    sides = [RIGHT, LEFT] if rng.random() < 0.8 else [_random_side(rng)]
    density = rng.uniform(0.2, 0.55) * scene.contrast
    footprints = []
    for side in sides:
        lung = scene.anatomy.lung(side)
        u_lo, u_hi = sorted((scene.u_of(side, lung.medial_a), scene.u_of(side, lung.lateral_extent())))
        rows, cols, uu, vv = scene.window(u_lo, u_hi, lung.apex_v, lung.base_v())
        a = scene.lateral(side, uu)
        if upper:
            zone = np.clip((lung.centre_v - vv) / 0.15 + 0.5, 0.0, 1.0)
        else:
            zone = np.clip((lung.rho(a, vv) - 0.6) / 0.2, 0.0, 1.0) * np.clip(
                (vv - lung.centre_v + 0.1) / 0.1, 0.0, 1.0
            )
        width = 0.3
        net = np.maximum(
            np.exp(-((_noise_field(rng, 36, scene.size, rows, cols) / width) ** 2)),
            np.exp(-((_noise_field(rng, 36, scene.size, rows, cols) / width) ** 2)),
        )
        shape = (zone * (0.8 * net + 0.2)).astype(np.float32)
        scene.add_fill(_Patch(rows, cols, density * shape))
        footprints.append(scene.lung_footprint(side, _Patch(rows, cols, shape)))
    return footprints[0]


def _draw_pleural_thickening(scene: _Scene, rng: np.random.Generator) -> _Patch:
    """A smooth band along the lateral wall or over the apex, inside the ribs."""
    side = _random_side(rng)
    lung = scene.anatomy.lung(side)
    apical = rng.random() < 0.4
    start, stop = (0.9, 2.3) if apical else (rng.uniform(-0.7, -0.3), rng.uniform(0.5, 1.1))
    band = rng.uniform(0.04, 0.07) * scene.shrink  # 1.5-3 cm: still a few pixels at the demo's 64 px
    u_lo, u_hi = sorted((scene.u_of(side, lung.medial_a), scene.u_of(side, lung.lateral_extent() + 0.01)))
    rows, cols, uu, vv = scene.window(u_lo, u_hi, lung.apex_v - 0.01, lung.base_v())
    a = scene.lateral(side, uu)
    dx = (a - lung.centre_a) / lung.half_width_at(vv)
    dy = (lung.centre_v - vv) / lung.half_height
    angle = np.arctan2(dy, dx)
    sector = np.clip((angle - start) / 0.5, 0.0, 1.0) * np.clip((stop - angle) / 0.5, 0.0, 1.0)
    depth_in = (1.0 - np.sqrt(dx**2 + dy**2)) * lung.half_width
    thickness = band * sector
    shape = np.clip((thickness - depth_in) / (0.003 + 0.3 * thickness), 0.0, 1.0) * (sector > 0)
    scene.add_fill(_Patch(rows, cols, rng.uniform(0.8, 0.95) * min(1.0, 1.1 * scene.contrast) * shape))
    # Denser than the chest wall beside it (fibrous, often calcified), so it is not merely a narrower lung.
    scene.additive[rows, cols] += 0.12 * scene.contrast * shape * scene.lung_masks[side][rows, cols]
    return scene.lung_footprint(side, _Patch(rows, cols, shape.astype(np.float32)))


_AnatomyDrawer = Callable[[_Anatomy, np.random.Generator, float], _Anatomy]
_OverlayDrawer = Callable[[_Scene, np.random.Generator], _Patch]

_ANATOMY_DRAWERS: dict[str, _AnatomyDrawer] = {
    "Cardiomegaly": _draw_cardiomegaly,
    "Emphysema": _draw_emphysema,
}
_OVERLAY_DRAWERS: dict[str, _OverlayDrawer] = {
    "Atelectasis": _draw_atelectasis,
    "Effusion": _draw_effusion,
    "Infiltration": _draw_infiltration,
    "Mass": _draw_mass,
    "Nodule": _draw_nodule,
    "Pneumonia": _draw_pneumonia,
    "Pneumothorax": _draw_pneumothorax,
    "Consolidation": _draw_consolidation,
    "Edema": _draw_edema,
    "Fibrosis": _draw_fibrosis,
    "Pleural_Thickening": _draw_pleural_thickening,
    "Hernia": _draw_hernia,
}
assert set(_ANATOMY_DRAWERS) | set(_OVERLAY_DRAWERS) == set(FINDINGS)


# ---------------------------------------------------------------------------
# Film: exposure, blur, noise


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (sigma in pixels)."""
    if sigma < 0.3:
        return image
    if sigma > 2.0:
        # Blur at half resolution: a quarter of the work, and the result is smooth anyway.
        height, width = image.shape
        half = Image.fromarray(image).resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BOX)
        small = _gaussian_blur(np.asarray(half, dtype=np.float32), math.sqrt(sigma**2 - 1.0) / 2)
        return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(taps):
            acc += weight * (padded[i : i + n] if axis == 0 else padded[:, i : i + n])
        out = acc
    return out


def _expose(
    density: np.ndarray, anatomy: _Anatomy, rng: np.random.Generator, size: int, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    ramp = math.cos(anatomy.gradient_angle) * (u - 0.5) + math.sin(anatomy.gradient_angle) * (v - 0.5)
    film = anatomy.black + anatomy.gain * density * (1.0 + anatomy.gradient * ramp)
    film = np.clip(film, 0.0, 1.0) ** anatomy.gamma
    film = _gaussian_blur(film.astype(np.float32), anatomy.blur * size)
    full = (slice(0, size), slice(0, size))
    film = film + anatomy.mottle * _noise_field(rng, 48, size, *full)
    film = film + anatomy.noise * rng.standard_normal((size, size), dtype=np.float32)
    return np.round(np.clip(film, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------
# Public entry point


def _box(patch: _Patch) -> tuple[float, float, float, float]:
    values = patch.values
    peak = float(values.max()) if values.size else 0.0
    inside = values > _BOX_THRESHOLD * peak if peak > 0 else np.ones_like(values, dtype=bool)
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    y0, y1 = patch.rows.start + rows[0], patch.rows.start + rows[-1] + 1
    x0, x1 = patch.cols.start + cols[0], patch.cols.start + cols[-1] + 1
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _validate(findings: Collection[str], size: int, difficulty: float, sex: str) -> frozenset[str]:
    if isinstance(findings, str):
        raise TypeError(f"findings must be a collection of labels, not the string {findings!r}")
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding label {unknown[0]!r}; expected a subset of {', '.join(FINDINGS)}")
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    if not (isinstance(difficulty, int | float | np.floating) and 0.0 <= difficulty <= 1.0):
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    if sex not in SEXES:
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    return frozenset(findings)


def _render(
    findings: Collection[str],
    *,
    rng: np.random.Generator,
    size: int = 256,
    difficulty: float = 0.5,
    sex: str = "M",
    age_years: float = 50.0,
) -> tuple[Phantom, _Anatomy]:
    """``render_phantom`` that also returns the anatomy drawn (for tests and debugging)."""
    wanted = _validate(findings, size, difficulty, sex)
    size, difficulty = int(size), float(difficulty)
    # A fixed number of draws, whatever the findings, so the anatomy does not depend on them.
    seeds = rng.integers(0, 2**63 - 1, size=3 + len(FINDINGS))
    anatomy_rng, texture_rng, noise_rng = (np.random.default_rng(int(s)) for s in seeds[:3])
    finding_rngs = {f: np.random.default_rng(int(s)) for f, s in zip(FINDINGS, seeds[3:])}

    anatomy = _sample_anatomy(anatomy_rng, difficulty, sex, age_years)
    for finding in FINDINGS:
        if finding in wanted and finding in _ANATOMY_DRAWERS:
            anatomy = _ANATOMY_DRAWERS[finding](anatomy, finding_rngs[finding], difficulty)
    scene = _rasterise(anatomy, size, difficulty, texture_rng)

    footprints: dict[str, _Patch] = {}
    if "Cardiomegaly" in wanted:
        full = slice(0, size)
        footprints["Cardiomegaly"] = _Patch(full, full, scene.heart_mask)
    for finding in FINDINGS:
        if finding in wanted and finding in _OVERLAY_DRAWERS:
            footprints[finding] = _OVERLAY_DRAWERS[finding](scene, finding_rngs[finding])

    pixels = _expose(scene.compose(), anatomy, noise_rng, size, scene.u, scene.v)
    boxes = {f: _box(footprints[f]) for f in FINDINGS if f in footprints and f in BOX_FINDINGS}
    return Phantom(pixels=pixels, boxes=boxes), anatomy


def render_phantom(
    findings: Collection[str],
    *,
    rng: np.random.Generator,
    size: int = 256,
    difficulty: float = 0.5,
    sex: str = "M",
    age_years: float = 50.0,
) -> Phantom:
    """Render a synthetic PA chest film with the given NIH findings drawn in.

    ``difficulty`` runs from 0 (obvious findings) to 1 (subtle ones). Boxes are
    (x, y, w, h) in pixels, one per drawn finding that NIH gives boxes for.
    """
    phantom, _ = _render(findings, rng=rng, size=size, difficulty=difficulty, sex=sex, age_years=age_years)
    return phantom

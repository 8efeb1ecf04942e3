"""DICOM radiographs as the 2-D uint8 films the pipeline reads, and what their headers say about them.

Films from a PACS arrive as DICOM, and a DICOM's stored values are not grey levels
yet. ``read_dicom`` turns them into the film a viewer shows, in the order of the
standard's grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1.1):

1. the pixel data, decoded by pydicom (JPEG, JPEG-LS, JPEG 2000 and RLE through the
   pylibjpeg plugins), signed or unsigned, 8 to 16 bits stored;
2. the modality LUT, or ``RescaleSlope`` / ``RescaleIntercept``;
3. the VOI: the file's VOI LUT, else its first window (``WindowCenter`` /
   ``WindowWidth`` with its ``VOILUTFunction``: LINEAR, LINEAR_EXACT or SIGMOID),
   else a percentile window (``PERCENTILE_WINDOW``); 8-bit values without any of
   these are shown as stored, as an 8-bit PNG is;
4. ``MONOCHROME1`` (white is low) inverted, so bone is bright as in ``MONOCHROME2``;
5. turned to the radiological convention when ``PatientOrientation`` says the film
   is stored otherwise (rows toward the patient's left, columns toward the feet, as
   NIH's PNGs are): mirrored, flipped or transposed.

``read_dicom_header`` reads the header alone (the pixel data is not loaded) into a
``DicomHeader``: modality, view (``ViewPosition``, else ``ViewCodeSequence``, else
``PatientOrientation``), pixel spacing, bit depth, and why the file cannot be read as
one grey film (``problem``: no pixel data, several frames, colour, a bit depth no
radiograph has). Whether a readable film should be scored (a CT slice, a lateral
view) is the caller's decision; the header says what the file is.

pydicom is imported inside the functions: modules that only read PNGs (the image
cache's decoder processes) never load it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrutils.data.film_files import ImageReadError, describe_start, open_film_file, too_many_pixels

# Stored values between these percentiles span black to white when the file has no window.
PERCENTILE_WINDOW = (0.5, 99.5)
# The percentile window is taken on a strided sample of about this many pixels.
_PERCENTILE_SAMPLE = 1_000_000
# Elements larger than this are not read by read_dicom_header (the pixel data).
_DEFER_SIZE = "64 KB"

RADIOGRAPH_MODALITIES = {"CR": "computed radiography", "DX": "digital radiography", "RG": "radiographic film",
                         "DR": "digital radiography (a vendor's code)"}
# Codes that do not say what the image is: a digitised film is often stored as "other".
UNSPECIFIC_MODALITIES = {"": "none given", "OT": "other", "SC": "secondary capture"}
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT")
OBLIQUE_VIEWS = ("LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBLIQUE")
DECUBITUS_VIEWS = ("LLD", "RLD", "LD", "RD")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says about its image, before any pixel is decoded."""

    path: Path
    sop_class: str
    transfer_syntax: str
    compressed: bool
    modality: str  # upper case; "" when absent
    photometric: str
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    rows: int
    columns: int
    frames: int
    pixel_data: str  # "PixelData", "FloatPixelData", "DoubleFloatPixelData" or "" (none)
    view_position: str  # ViewPosition as written (upper case), "" when absent
    view: str  # "PA", "AP", "lateral", "oblique", "decubitus" or "" (the header does not say)
    view_source: str  # where ``view`` was read, e.g. "ViewPosition PA" or "PatientOrientation A\F"
    body_part: str
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing
    pixel_spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or ""
    intensity: str  # how stored values become grey levels (step 2-4 of the module docstring)
    orientation: tuple[bool, bool, bool]  # (transpose, mirror left-right, flip top-bottom) to the convention
    orientation_source: str
    notes: tuple[str, ...] = field(default=())
    # What links a result back to the PACS: the study, series and instance, and the accession number ("" when absent).
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    accession_number: str = ""

    @property
    def problem(self) -> str | None:
        """Why the pixels cannot be read as one grey film (None: they can)."""
        if not self.pixel_data:
            return f"DICOM without pixel data ({self.sop_class or 'no SOP class'}): nothing to score"
        if self.pixel_data != "PixelData":
            return f"DICOM with {self.pixel_data} (floating-point values, e.g. a parametric map), not a radiograph"
        if self.frames > 1:
            return f"multi-frame DICOM ({self.frames} frames): a chest radiograph is one frame"
        if self.samples_per_pixel != 1 or self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return (f"colour DICOM (PhotometricInterpretation {self.photometric or 'missing'}, {self.samples_per_pixel}"
                    " samples per pixel): a radiograph is MONOCHROME1 or MONOCHROME2")
        if not 8 <= self.bits_stored <= 16:
            return f"BitsStored {self.bits_stored}: a radiograph stores 8 to 16 bits per pixel"
        if self.rows < 1 or self.columns < 1:
            return f"image of {self.rows} x {self.columns} pixels"
        return None

    def size_problem(self, max_pixels: int | None = None) -> str | None:
        """Why the pixel data is too large to decode (``images.too_many_pixels``), from the header alone."""
        pixels = self.rows * self.columns * self.frames
        decoded_bytes = pixels * max(self.samples_per_pixel, 1) * max(-(-self.bits_allocated // 8), 1)
        what = (f"Rows {self.rows:,} x Columns {self.columns:,} x {self.frames:,} frame(s) "
                f"({self.bits_allocated} bits allocated: {decoded_bytes / 2**30:.1f} GiB decoded)")
        # A film's bytes count as pixels at 16 bits: 8 bits or more per sample, or colour, cost accordingly more.
        return too_many_pixels(max(pixels, decoded_bytes // 2), what, max_pixels)

    def facts(self) -> dict[str, Any]:
        """The header's facts as plain values, for a table of films."""
        spacing = self.pixel_spacing_mm or (None, None)
        return {
            "width": self.columns, "height": self.rows, "bits_stored": self.bits_stored,
            "photometric": self.photometric, "modality": self.modality, "view": self.view,
            "view_source": self.view_source, "body_part": self.body_part,
            "pixel_spacing_row_mm": spacing[0], "pixel_spacing_column_mm": spacing[1],
            "pixel_spacing_source": self.pixel_spacing_source, "transfer_syntax": self.transfer_syntax,
            "intensity": self.intensity, "orientation": self.orientation_source,
            **self.identifiers(),
        }

    def identifiers(self) -> dict[str, str]:
        """The header's study, series and instance UIDs and accession number, by DICOM keyword ("" when absent)."""
        return {"StudyInstanceUID": self.study_instance_uid, "SeriesInstanceUID": self.series_instance_uid,
                "SOPInstanceUID": self.sop_instance_uid, "AccessionNumber": self.accession_number}


# --------------------------------------------------------------------------- reading


def read_dicom_header(path: str | os.PathLike[str]) -> DicomHeader:
    """The header of a DICOM file (its pixel data is not loaded); ``ImageReadError`` when it is not DICOM."""
    return header_of(_read_dataset(path, header_only=True), path)


def read_dicom(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """A DICOM radiograph as a (H, W) uint8 film (module docstring); ``ImageReadError`` naming what is wrong."""
    return read_dicom_film(path, max_pixels)[0]


def read_dicom_film(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[np.ndarray, DicomHeader]:
    """``read_dicom``'s film and the file's header; a film above ``max_pixels`` is refused before its pixels are read."""
    from pydicom.pixels import apply_modality_lut

    # The pixel data is deferred: read from the file only once the header has been judged.
    dataset = _read_dataset(path, header_only=True)
    header = header_of(dataset, path)
    problem = header.problem or header.size_problem(max_pixels)
    if problem:
        raise ImageReadError(path, problem)
    try:
        stored = dataset.pixel_array
        values = apply_modality_lut(stored, dataset)
        grey = _voi(values, dataset)
    # pydicom and its decoder plugins raise many types on damaged pixel data (ValueError for a short
    # buffer, RuntimeError from a codec, ...); each one means the same here: the film cannot be read.
    except Exception as err:
        raise ImageReadError(path, f"cannot decode the pixel data ({header.transfer_syntax}): "
                                   f"{type(err).__name__}: {err}") from err
    if grey.shape != (header.rows, header.columns):
        raise ImageReadError(path, f"decoded pixels of shape {grey.shape}, expected {header.rows} x {header.columns}")
    if header.photometric == "MONOCHROME1":
        grey = 1.0 - grey
    film = np.rint(grey * 255.0).clip(0, 255).astype(np.uint8)
    return orient(film, header.orientation), header


def _read_dataset(path: str | os.PathLike[str], header_only: bool) -> Any:
    import pydicom

    path = Path(path)
    try:
        with open_film_file(path) as handle:
            head = handle.read(132)
    except OSError as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(path, f"{type(err).__name__}: {err.strerror or err}") from err
    has_preamble = head[128:132] == b"DICM"
    # pydicom warns (rather than raises) about much of what is wrong with a file: kept for the reason below,
    # and not printed once per film of a batch.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # Without the 128-byte preamble and "DICM" (old files, some exports) pydicom must be told to try.
            dataset = pydicom.dcmread(path, force=not has_preamble, defer_size=_DEFER_SIZE if header_only else None)
        # A damaged header raises anything from InvalidDicomError to struct.error; all mean "not readable DICOM".
        except Exception as err:
            raise ImageReadError(path, f"not a readable DICOM file: {type(err).__name__}: {err}") from err
    if "SOPClassUID" not in dataset and "Rows" not in dataset:
        said = f" ({caught[0].message})" if caught else ""
        what = ("a damaged or truncated DICOM file" if has_preamble
                else f"not a DICOM file (no DICM marker; {describe_start(head[:8])})")
        raise ImageReadError(path, f"{what}: no SOPClassUID, no Rows could be read{said}")
    return dataset


# --------------------------------------------------------------------------- writing


def write_dicom(
    path: str | os.PathLike[str],
    stored: np.ndarray | None,
    *,
    bits_stored: int = 8,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str | None = "DX",
    view: str | None = "PA",
    orientation: tuple[str, str] | None = None,
    window: tuple[float, float, str] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], np.ndarray] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = None,
    transfer_syntax: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write stored values as a DX DICOM file, in any of the variants real chest DICOMs come in.

    ``stored`` (H, W) or (frames, H, W) holds the values as stored (None: a file without
    pixel data); the keywords set the attributes ``read_dicom`` interprets. The tests
    and the benchmark write their DICOMs with it; ``read_dicom`` of a file written from
    an 8-bit film without a window gives the film back.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    transfer_syntax = transfer_syntax or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    if orientation is not None:
        ds.PatientOrientation = list(orientation)
    if stored is not None:
        allocated = 8 if bits_stored <= 8 else 16
        dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
        values = np.asarray(stored)
        assert values.min() >= np.iinfo(dtype).min and values.max() <= np.iinfo(dtype).max
        pixels = values.astype(dtype)
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.PixelData = pixels.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        descriptor, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = descriptor
        item.add_new(0x00283006, "OW", np.asarray(table, dtype="<u2").tobytes())  # LUT Data, as scanners write it
        ds.VOILUTSequence = Sequence([item])
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if stored is not None and transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- the header


def header_of(dataset: Any, path: str | os.PathLike[str]) -> DicomHeader:
    """A ``DicomHeader`` from a pydicom dataset (read with or without its pixel data)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    pixel_data = next((name for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if name in dataset), "")
    sop = dataset.get("SOPClassUID")
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    view, view_source = _view(dataset)
    spacing, spacing_source = _pixel_spacing(dataset)
    orientation, orientation_source = _orientation(dataset)
    header = DicomHeader(
        path=Path(path),
        sop_class=getattr(sop, "name", str(sop or "")),
        transfer_syntax=syntax.name if syntax is not None else "no transfer syntax in the file meta",
        compressed=bool(syntax is not None and syntax.is_compressed),
        modality=modality,
        photometric=str(dataset.get("PhotometricInterpretation", "") or "").strip().upper(),
        samples_per_pixel=_integer(dataset, "SamplesPerPixel", 1),
        bits_allocated=_integer(dataset, "BitsAllocated", 0),
        bits_stored=_integer(dataset, "BitsStored", _integer(dataset, "BitsAllocated", 0)),
        signed=_integer(dataset, "PixelRepresentation", 0) == 1,
        rows=_integer(dataset, "Rows", 0),
        columns=_integer(dataset, "Columns", 0),
        frames=_integer(dataset, "NumberOfFrames", 1) or 1,
        pixel_data=pixel_data,
        view_position=str(dataset.get("ViewPosition", "") or "").strip().upper(),
        view=view,
        view_source=view_source,
        body_part=str(dataset.get("BodyPartExamined", "") or "").strip().upper(),
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        intensity=_describe_intensity(dataset),
        orientation=orientation,
        orientation_source=orientation_source,
        **{field_name: _identifier(dataset, keyword) for field_name, keyword in _IDENTIFIER_FIELDS.items()},
    )
    return DicomHeader(**{**header.__dict__, "notes": _notes(header)})


_IDENTIFIER_FIELDS = {"study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
                      "sop_instance_uid": "SOPInstanceUID", "accession_number": "AccessionNumber"}
# A UID is at most 64 characters and an accession number 16 (PS3.5 6.2); a hostile header may hold megabytes.
_IDENTIFIER_MAX_CHARS = 64


def _identifier(dataset: Any, keyword: str) -> str:
    """A header's identifier as text: a multi-valued or malformed element is written as read, clipped, never raised."""
    try:
        value = dataset.get(keyword)
    except Exception:  # a damaged element fails on access; the film's identity is then unknown, not an error
        return ""
    text = "" if value is None else str(value).strip()
    return text[:_IDENTIFIER_MAX_CHARS] + ("..." if len(text) > _IDENTIFIER_MAX_CHARS else "")


def _integer(dataset: Any, keyword: str, default: int) -> int:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _view_kind(code: str) -> str:
    if code in FRONTAL_VIEWS:
        return code
    if code in LATERAL_VIEWS:
        return "lateral"
    if code in OBLIQUE_VIEWS:
        return "oblique"
    if code in DECUBITUS_VIEWS:
        return "decubitus"
    return ""


def _view(dataset: Any) -> tuple[str, str]:
    """The view and where it was read: ViewPosition, else ViewCodeSequence, else PatientOrientation."""
    position = str(dataset.get("ViewPosition", "") or "").strip().upper()
    if position:
        return _view_kind(position) or position, f"ViewPosition {position}"
    codes = dataset.get("ViewCodeSequence") or []
    meaning = str(codes[0].get("CodeMeaning", "")).strip() if len(codes) else ""
    lowered = meaning.lower()
    for words, kind in ((("lateral",), "lateral"), (("oblique",), "oblique"), (("decubitus",), "decubitus"),
                        (("postero-anterior", "posteroanterior", "postero anterior"), "PA"),
                        (("antero-posterior", "anteroposterior", "antero posterior"), "AP")):
        if any(word in lowered for word in words):
            return kind, f"ViewCodeSequence {meaning}"
    rows, columns = _orientation_letters(dataset)
    if rows and columns:
        if rows in ("H", "F") and columns not in ("H", "F"):
            rows, columns = columns, rows
        if rows in ("A", "P") and columns in ("H", "F"):
            return "lateral", f"PatientOrientation {_orientation_text(dataset)}"
    return "", ""


def _orientation_letters(dataset: Any) -> tuple[str, str]:
    """The main direction (first letter) of PatientOrientation's row and column values; "" where absent."""
    value = dataset.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return "", ""
    return str(value[0]).strip()[:1].upper(), str(value[1]).strip()[:1].upper()


def _orientation_text(dataset: Any) -> str:
    return "\\".join(str(v) for v in dataset.get("PatientOrientation"))


def _orientation(dataset: Any) -> tuple[tuple[bool, bool, bool], str]:
    """Steps that bring a frontal film to rows toward the patient's left and columns toward the feet."""
    rows, columns = _orientation_letters(dataset)
    if not rows or not columns:
        return (False, False, False), ""
    transpose = rows in ("H", "F") and columns in ("L", "R")
    if transpose:
        rows, columns = columns, rows
    steps = (transpose, rows == "R", columns == "H")
    done = [name for name, step in zip(("transposed", "mirrored left-right", "flipped top-bottom"), steps) if step]
    text = f"PatientOrientation {_orientation_text(dataset)}"
    return steps, f"{text}: {', '.join(done)} to the radiological convention (L\\F)" if done else text


def orient(film: np.ndarray, steps: tuple[bool, bool, bool]) -> np.ndarray:
    """Apply ``DicomHeader.orientation`` (transpose, mirror, flip) to a (H, W) film."""
    transpose, mirror, flip = steps
    if transpose:
        film = film.T
    if mirror:
        film = film[:, ::-1]
    if flip:
        film = film[::-1, :]
    return np.ascontiguousarray(film)


def _pixel_spacing(dataset: Any) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm: PixelSpacing (calibrated to the patient) if present, else ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        try:
            if value is not None and len(value) == 2:
                return (float(value[0]), float(value[1])), keyword
        except (TypeError, ValueError):
            continue
    return None, ""


def _notes(header: DicomHeader) -> tuple[str, ...]:
    notes = []
    if header.body_part and not any(word in header.body_part for word in ("CHEST", "THORAX", "LUNG", "TORAX")):
        notes.append(f"BodyPartExamined {header.body_part}: the model was trained on chest films")
    if header.view == "decubitus":
        notes.append(f"decubitus view ({header.view_source}): the model was trained on upright and supine films")
    if header.view == "" and header.modality in RADIOGRAPH_MODALITIES:
        notes.append("the header does not say the view (no ViewPosition, ViewCodeSequence or PatientOrientation)")
    if any(header.orientation):
        notes.append(header.orientation_source)
    return tuple(notes)


# --------------------------------------------------------------------------- grey levels


def _window(dataset: Any) -> tuple[float, float, str, int] | None:
    """(centre, width, function, how many windows the file offers) of the first window, or None."""
    centre, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centre in (None, "") or width in (None, ""):
        return None
    count = len(centre) if not isinstance(centre, (int, float, str)) and hasattr(centre, "__len__") else 1
    first_centre = centre[0] if count > 1 else centre
    first_width = width[0] if not isinstance(width, (int, float, str)) and hasattr(width, "__len__") else width
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    try:
        return float(first_centre), float(first_width), function, count
    except (TypeError, ValueError):
        return None


def _window_usable(window: tuple[float, float, str, int] | None) -> bool:
    if window is None or window[2] not in VOI_FUNCTIONS:
        return False
    centre, width, function, _ = window
    return width >= 1 if function == "LINEAR" else width > 0


def _has_voi_lut(dataset: Any) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and all(sequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData"))


def _as_stored(dataset: Any) -> bool:
    """8-bit unsigned values with no rescale to apply: grey levels already, as in an 8-bit PNG."""
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return (_integer(dataset, "BitsStored", 8) <= 8 and _integer(dataset, "PixelRepresentation", 0) == 0
            and slope == 1 and intercept == 0 and not dataset.get("ModalityLUTSequence"))


def _describe_intensity(dataset: Any) -> str:
    if _has_voi_lut(dataset):
        return "the file's VOI LUT"
    window = _window(dataset)
    if _window_usable(window):
        assert window is not None
        centre, width, function, count = window
        first = f", the first of {count}" if count > 1 else ""
        return f"the file's window (centre {centre:g}, width {width:g}, {function}{first})"
    invalid = f" (its window {window[:3]} is not usable)" if window is not None else ""
    if _as_stored(dataset):
        return f"as stored (8-bit values, no window in the file{invalid})"
    low, high = PERCENTILE_WINDOW
    return f"percentile window {low:g}-{high:g}% (no window in the file{invalid})"


def window_to_unit(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A VOI window (PS3.3 C.11.2.1.2-3) mapping values onto [0, 1] instead of the output bit range.

    LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped; LINEAR_EXACT: ((x - c) / w + 0.5),
    clipped; SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
    """
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR":
        centre, width = centre - 0.5, width - 1.0
        if width == 0:  # a window of width 1: a step at the centre
            return (x > centre).astype(np.float64)
    elif function != "LINEAR_EXACT":
        raise ValueError(f"unknown VOILUTFunction {function!r}; expected one of {VOI_FUNCTIONS}")
    return np.clip((x - centre) / width + 0.5, 0.0, 1.0)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILE_WINDOW) -> np.ndarray:
    """Values between the two percentiles stretched onto [0, 1] (clipped outside); a flat image is 0."""
    x = np.asarray(values, dtype=np.float64)
    step = max(1, int(np.sqrt(x.size / _PERCENTILE_SAMPLE)))
    low, high = np.percentile(x[::step, ::step], percentiles)
    if high <= low:
        low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def _voi(values: np.ndarray, dataset: Any) -> np.ndarray:
    """Modality values -> [0, 1] grey (before any MONOCHROME1 inversion)."""
    from pydicom.pixels import apply_voi

    if _has_voi_lut(dataset):
        integral = np.rint(values).astype(np.int64)
        descriptor = dataset.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), dataset).astype(np.float64)
        # The LUT's own range, not 2**bits - 1: some vendors declare 16 bits for 12-bit entries.
        low, high = table.min(), table.max()
        mapped = apply_voi(integral, dataset).astype(np.float64)
        return (mapped - low) / (high - low) if high > low else np.zeros_like(mapped)
    window = _window(dataset)
    if _window_usable(window):
        assert window is not None
        return window_to_unit(values, window[0], window[1], window[2])
    if _as_stored(dataset):
        return np.asarray(values, dtype=np.float64) / 255.0
    return percentile_window(values)

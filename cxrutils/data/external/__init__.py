"""External chest X-ray collections beside NIH: CheXpert, PadChest, VinDr-CXR, RSNA Pneumonia, SIIM-ACR Pneumothorax.

Each is read in its published layout into one frame (``common``), its labels mapped onto
the 14 NIH findings by an explicit map (``label_maps``: every finding mapped, or not
available with the reason). Entry points:

- ``load_external(collection, root, ExternalOptions(...))``: a real (or phantom) root;
- ``shipped_films(collection)``: the metadata shipped in torchxrayvision, without films;
- ``external_label_map(collection).table()``: the map as a table a report prints, and
  ``label_maps_overview()``: finding x collection, the five maps side by side;
- ``label_counts(films.films)``: positives, negatives and excluded per finding.

``cxrutils.demo.external_roots`` builds phantom roots in each layout from the shipped rows.
"""

from cxrutils.data.external.common import (
    BASE_COLUMNS,
    RAW_PREFIX,
    ExternalDataError,
    ExternalFilms,
    ExternalOptions,
    label_counts,
)
from cxrutils.data.external.label_maps import (
    DEFAULT_MIN_READERS,
    DEFAULT_UNCERTAIN_POLICY,
    LABEL_MAPS,
    UNCERTAIN_POLICIES,
    FindingMap,
    LabelMap,
    label_maps_overview,
)
from cxrutils.data.external.loading import (
    COLLECTIONS,
    READERS,
    collection_reader,
    external_label_map,
    load_external,
    shipped_films,
    shipped_raw,
)

__all__ = [
    "BASE_COLUMNS", "COLLECTIONS", "DEFAULT_MIN_READERS", "DEFAULT_UNCERTAIN_POLICY", "LABEL_MAPS", "RAW_PREFIX",
    "READERS", "UNCERTAIN_POLICIES", "ExternalDataError", "ExternalFilms", "ExternalOptions", "FindingMap",
    "LabelMap", "collection_reader", "external_label_map", "label_counts", "label_maps_overview", "load_external",
    "shipped_films", "shipped_raw",
]

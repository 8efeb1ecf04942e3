"""Which external collections each TorchXRayVision model trained on: a model is external only where it never trained.

torchxrayvision 1.5.7 (``models.py``, ``model_urls[...]["description"]`` and the class docstrings):

- ``densenet121-res224-all``: "trained on the datasets: nih-pc-chex-mimic_ch-google-openi-rsna";
- ``resnet50-res512-all``: "trained on the datasets pc-nih-rsna-siim-vin at a 512x512 resolution";
- ``densenet121-res224-nih`` NIH ChestX-ray14, ``-rsna`` RSNA Pneumonia Challenge, ``-pc`` PadChest,
  ``-chex`` CheXpert, ``-mimic_nb`` / ``-mimic_ch`` MIMIC-CXR.

Each dataset was split 80/20 by patient at random (``scripts/train_utils.py``), so a model that
trained on a collection most likely saw most of its films, whichever of them are scored here.
RSNA Pneumonia's and SIIM-ACR's films are NIH ChestX-ray14 films (new labels): a model that
trained on NIH films is not external on them, and one trained on RSNA is not external on NIH
or SIIM (``NIH_FILMS``). Google's 2019 relabelling is NIH films too. Such a model's figures on
the collection are shown, marked "not external", and never made the headline.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrutils.compare.provenance import SOURCE_MODELS, SOURCE_NIH_FILMS, SOURCE_SPLIT
from cxrutils.data.external import COLLECTIONS
from cxrutils.evaluate.external import NIH_FILM_COLLECTIONS

# A family of films: the collections whose films are the same hospital's (RSNA and SIIM are NIH films).
NIH_FILMS = "nih"
FILM_FAMILY: dict[str, str] = {"chexpert": "chexpert", "padchest": "padchest", "vindr": "vindr",
                               **{collection: NIH_FILMS for collection in NIH_FILM_COLLECTIONS}}
# What each model trained on, as torchxrayvision's model descriptions name the datasets.
TRAINED_ON: dict[str, tuple[str, ...]] = {
    "densenet121-res224-nih": ("nih",),
    "densenet121-res224-all": ("nih", "padchest", "chexpert", "mimic_ch", "google", "openi", "rsna"),
    "densenet121-res224-rsna": ("rsna",),
    "resnet50-res512-all": ("padchest", "nih", "rsna", "siim", "vindr"),
    "densenet121-res224-pc": ("padchest",),
    "densenet121-res224-chex": ("chexpert",),
    "densenet121-res224-mimic_nb": ("mimic_nb",),
    "densenet121-res224-mimic_ch": ("mimic_ch",),
}
_NIH_FILM_DATASETS = {"nih", "google", "rsna", "siim"}  # datasets whose films are NIH ChestX-ray14 films
EXTERNAL, NOT_EXTERNAL = "external", "not external"
_TITLES = {"chexpert": "CheXpert", "padchest": "PadChest", "vindr": "VinDr-CXR", "rsna": "RSNA Pneumonia",
           "siim": "SIIM-ACR Pneumothorax"}


@dataclass(frozen=True)
class ExternalProvenance:
    """One model against one collection: did it train on these films (or on the same films under other labels)?"""

    model: str
    collection: str
    external: bool
    why: str
    sources: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return EXTERNAL if self.external else NOT_EXTERNAL


def external_provenance(model: str, collection: str) -> ExternalProvenance:
    """``model`` (one of torchxrayvision's) on ``collection`` (one of ``COLLECTIONS``)."""
    if model not in TRAINED_ON:
        raise ValueError(f"no provenance recorded for {model!r}; known: {', '.join(TRAINED_ON)}")
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {', '.join(COLLECTIONS)}")
    trained = TRAINED_ON[model]
    title = _TITLES[collection]
    sources = (SOURCE_MODELS, SOURCE_SPLIT)
    if collection in trained:
        why = (f"trained on {title} (a random 80% of its patients): most of these films were its training films")
        return ExternalProvenance(model, collection, False, why, sources)
    if FILM_FAMILY[collection] == NIH_FILMS and _NIH_FILM_DATASETS & set(trained):
        via = ", ".join(sorted(_NIH_FILM_DATASETS & set(trained)))
        why = (f"{title}'s films are NIH ChestX-ray14 films, and it trained on NIH films ({via}): many of these "
               "films were its training films under other labels")
        return ExternalProvenance(model, collection, False, why, (*sources, SOURCE_NIH_FILMS))
    why = (f"never trained on {title} or on its films (trained on {', '.join(trained)}): another hospital's films "
           "for it too")
    return ExternalProvenance(model, collection, True, why, sources)


def provenance_table(collection: str, models: tuple[str, ...] = tuple(TRAINED_ON)) -> list[ExternalProvenance]:
    return [external_provenance(model, collection) for model in models]


def headline_model(models: list[str], collection: str) -> str | None:
    """The TorchXRayVision model to lead with on ``collection``: the first external one, else none."""
    return next((model for model in models if external_provenance(model, collection).external), None)


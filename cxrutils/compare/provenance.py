"""What each TorchXRayVision model was trained on, and whether it may have seen NIH's official test films.

A comparison on the official test list is fair only against a model that never saw
those films. torchxrayvision's training script splits every dataset 80/20 by patient
at random, ignoring the official lists, and the seed's split was not published: so a
model trained on NIH films (or on RSNA Pneumonia or Google's relabelled set, which are
NIH films) most likely trained on most official-test films. Each fact carries its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrutils.settings import DEFAULT_TXV_MODELS

SOURCE_MODELS = "torchxrayvision 1.5.7, models.py: model_urls (each model's description and release file name)"
SOURCE_SPLIT = ("torchxrayvision scripts/train_utils.py: GroupShuffleSplit(train_size=0.8, test_size=0.2) by "
                "patient on each dataset, ignoring NIH's official lists; the seed's split is not published "
                "(mlmed/torchxrayvision issue #47)")
SOURCE_NIH_FILMS = ("RSNA Pneumonia (Kaggle) and Google's 2019 relabelling (Majkowska et al., Radiology 2019) "
                    "are NIH ChestX-ray14 films with new labels")
SOURCE_PAPER = "Cohen et al., TorchXRayVision (arXiv:2111.00595); Cohen et al., arXiv:2002.02497"

# What a model's verdict says. "Clean" alone would invite reading a comparison with a model trained elsewhere as a
# like-for-like test of architectures: it is not (another hospital's films, another labeller, another recipe).
CLEAN = "never saw an NIH film"
MAY_HAVE_SEEN = "may have seen these test films"
# torchxrayvision trains on a random 80% of each dataset's patients: the share of NIH patients (and so, in
# expectation, of the official test films) that an NIH-trained model's training data holds.
NIH_TRAINING_SHARE = 0.8


@dataclass(frozen=True)
class Provenance:
    """One model's training data and what that means for NIH's official test list."""

    model: str
    datasets: tuple[str, ...]
    nih_films: bool  # could NIH ChestX-ray14 films be in its training data?
    why: str
    sources: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return MAY_HAVE_SEEN if self.nih_films else CLEAN

    @property
    def trained_on(self) -> str:
        return ", ".join(self.datasets)

    @property
    def headline_label(self) -> str:
        """What the report index says beside a comparison with this model."""
        if self.nih_films:
            return MAY_HAVE_SEEN
        return (f"{CLEAN}; trained on {self.trained_on}: a different training set and recipe, so a transfer "
                "comparison, not one of architectures")


PROVENANCE: dict[str, Provenance] = {p.model: p for p in (
    Provenance("densenet121-res224-nih", ("NIH ChestX-ray14 (random 80% of patients)",), True,
               f"trained on a random {NIH_TRAINING_SHARE:.0%} of NIH patients, not on train_val_list.txt: about "
               f"{NIH_TRAINING_SHARE:.0%} of the official test patients, and so about {NIH_TRAINING_SHARE:.0%} of "
               "their films, were training films (the draw was not published)", (SOURCE_MODELS, SOURCE_SPLIT)),
    Provenance("densenet121-res224-all", ("NIH ChestX-ray14", "PadChest", "CheXpert", "MIMIC-CXR (CheXpert labels)",
                                          "Google 2019 (NIH films)", "OpenI", "RSNA Pneumonia (NIH films)"), True,
               "NIH films from three of its datasets, split at random: most official test films were training films",
               (SOURCE_MODELS, SOURCE_SPLIT, SOURCE_NIH_FILMS, SOURCE_PAPER)),
    Provenance("densenet121-res224-rsna", ("RSNA Pneumonia Challenge (NIH films, new labels)",), True,
               "RSNA Pneumonia's films are NIH films, split at random: official test films overlap its training set",
               (SOURCE_MODELS, SOURCE_SPLIT, SOURCE_NIH_FILMS)),
    Provenance("resnet50-res512-all", ("PadChest", "NIH ChestX-ray14", "RSNA Pneumonia (NIH films)",
                                       "SIIM-ACR Pneumothorax", "VinDr-CXR"), True,
               "NIH films among its datasets, split at random: official test films overlap its training set",
               (SOURCE_MODELS, SOURCE_SPLIT, SOURCE_NIH_FILMS)),
    Provenance("densenet121-res224-pc", ("PadChest (Spain)",), False,
               "PadChest only: no NIH film, so it cannot have memorised the test films; it scores all 14 findings. It "
               "is another hospital's films, labeller and training recipe: a transfer comparison, not a comparison "
               "of architectures",
               (SOURCE_MODELS, SOURCE_PAPER)),
    Provenance("densenet121-res224-chex", ("CheXpert (Stanford)",), False,
               "CheXpert only: no NIH film; 7 of the 14 findings", (SOURCE_MODELS, SOURCE_PAPER)),
    Provenance("densenet121-res224-mimic_nb", ("MIMIC-CXR (NegBio labels)",), False,
               "MIMIC-CXR only: no NIH film; 7 of the 14 findings", (SOURCE_MODELS, SOURCE_PAPER)),
    Provenance("densenet121-res224-mimic_ch", ("MIMIC-CXR (CheXpert labels)",), False,
               "MIMIC-CXR only: no NIH film; 7 of the 14 findings", (SOURCE_MODELS, SOURCE_PAPER)),
)}
# The comparators notebook 04 and cxrutils compare use: the model the recipes compare with, and the clean one.
DEFAULT_MODELS: tuple[str, ...] = DEFAULT_TXV_MODELS  # the one list, in the settings schema


def provenance(model: str) -> Provenance:
    if model not in PROVENANCE:
        raise ValueError(f"no provenance recorded for {model!r}; known: {', '.join(PROVENANCE)}")
    return PROVENANCE[model]


def headline_model(models: list[str]) -> str | None:
    """The comparison to lead with: the first clean model compared, else none (every one may have seen the films)."""
    return next((name for name in models if not provenance(name).nih_films), None)

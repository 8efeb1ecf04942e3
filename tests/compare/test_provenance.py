"""What each TorchXRayVision model saw: a fact per supported model, the clean comparator by default, and its banner."""

from __future__ import annotations

import warnings

import pytest

from cxrutils.compare import provenance as prov
from cxrutils.compare.txv import TXV_MODEL_NAMES, txv_spec
from cxrutils.show.comparison_view import provenance_banner
from cxrutils.show.display import TONES

with warnings.catch_warnings():
    import torchxrayvision as xrv

MAY_HAVE_SEEN_NIH = {"densenet121-res224-nih", "densenet121-res224-all", "densenet121-res224-rsna",
                     "resnet50-res512-all"}
NEVER_SAW_NIH = {"densenet121-res224-pc", "densenet121-res224-chex", "densenet121-res224-mimic_nb",
                 "densenet121-res224-mimic_ch"}


def test_every_supported_model_has_a_sourced_provenance() -> None:
    assert set(TXV_MODEL_NAMES) == MAY_HAVE_SEEN_NIH | NEVER_SAW_NIH
    assert set(TXV_MODEL_NAMES) <= set(xrv.models.model_urls)  # each one torchxrayvision really ships
    for name in TXV_MODEL_NAMES:
        origin = prov.provenance(name)
        assert origin.datasets and origin.why and origin.sources and all(origin.sources)
        assert origin.nih_films == (name in MAY_HAVE_SEEN_NIH)
        assert origin.verdict == (prov.MAY_HAVE_SEEN if origin.nih_films else prov.CLEAN)
        assert txv_spec(name).includes_nih_images == origin.nih_films  # one table, read by the adapter too
    # The random patient split that puts official test films into the NIH models' training data is cited.
    assert prov.SOURCE_SPLIT in prov.provenance("densenet121-res224-nih").sources


def test_the_defaults_are_the_recipes_comparator_and_the_clean_one_which_leads() -> None:
    assert prov.DEFAULT_MODELS == ("densenet121-res224-nih", "densenet121-res224-pc")
    assert prov.headline_model(list(prov.DEFAULT_MODELS)) == "densenet121-res224-pc"
    assert prov.headline_model(["densenet121-res224-all", "densenet121-res224-chex"]) == "densenet121-res224-chex"
    assert prov.headline_model(["densenet121-res224-nih", "densenet121-res224-rsna"]) is None
    with pytest.raises(ValueError, match="no provenance recorded.*densenet121-res224-pc"):
        prov.provenance("densenet121-res224-unknown")


@pytest.mark.parametrize("name, colour", [("densenet121-res224-nih", "red"), ("densenet121-res224-pc", "green")])
def test_each_model_carries_a_banner_that_says_what_it_may_have_seen(name: str, colour: str) -> None:
    page = provenance_banner(name).data
    origin = prov.provenance(name)
    assert origin.verdict in page and name in page
    assert ("may have seen these test films" in page) == (colour == "red")
    assert TONES[colour] in page


def test_the_leakage_caveat_says_what_the_provenance_table_says() -> None:
    """About 80% of the official test films, as the NIH model's provenance: not 'some' of them."""
    from cxrutils.compare.comparison import LEAKAGE_CAVEAT

    share = f"about {prov.NIH_TRAINING_SHARE:.0%} of the official test"
    assert share in LEAKAGE_CAVEAT and share in prov.provenance("densenet121-res224-nih").why
    assert "some official-test images" not in LEAKAGE_CAVEAT
    assert "which overlap the official test list" in LEAKAGE_CAVEAT  # the words the notebook test finds on the page


def test_a_model_trained_elsewhere_is_labelled_a_transfer_comparison_not_a_clean_one() -> None:
    from cxrutils.compare.comparison import comparison_caveats

    clean = prov.provenance("densenet121-res224-pc")
    assert clean.verdict == "never saw an NIH film" and "clean" not in clean.verdict
    assert clean.headline_label.startswith("never saw an NIH film; trained on PadChest (Spain)")
    assert "a different training set and recipe" in clean.headline_label
    assert "not one of architectures" in clean.headline_label
    assert prov.provenance("densenet121-res224-nih").headline_label == prov.MAY_HAVE_SEEN
    (caveat, _) = comparison_caveats("densenet121-res224-pc")
    assert "never saw an NIH film" in caveat and "not how the two architectures compare" in caveat

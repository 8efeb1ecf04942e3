"""How far NIH's text-mined labels are from radiologists who read the films: Cohen's kappa, by its definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrutils.data.metadata import read_metadata
from cxrutils.data.radiologist_labels import MAPPING, read_radiologist_labels
from cxrutils.evaluate.radiologist import label_agreement


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """(observed - chance agreement) / (1 - chance agreement), chance from each rater's own rate of YES."""
    observed = np.mean(a == b)
    chance = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    return float((observed - chance) / (1 - chance))


def test_nih_labels_agree_with_the_radiologists_on_the_official_test_films_with_kappa_0_28_to_0_43():
    """The figures the model card and notebook 01 cite: on Google's test set (1,962 official-test films)."""
    metadata, radiologist = read_metadata(None), read_radiologist_labels()
    table = label_agreement(metadata, radiologist, "test")
    films = radiologist[radiologist["set"] == "test"]
    rows = metadata.set_index("image").loc[films.index]
    assert list(table.index) == list(MAPPING) and (table["films"] == 1_962).all()
    for finding, outputs in MAPPING.items():
        nih = rows[list(outputs)].max(axis=1).to_numpy()
        panel = films[finding].to_numpy()
        assert table.loc[finding, "kappa"] == pytest.approx(kappa(panel, nih))
        assert table.loc[finding, "agreement"] == pytest.approx(np.mean(panel == nih))
        assert table.loc[finding, "NIH positives"] == nih.sum()
    assert round(table["kappa"].min(), 2) == 0.28 and round(table["kappa"].max(), 2) == 0.43
    assert table["kappa"].idxmin() == "Airspace opacity"
    everything = label_agreement(metadata, radiologist, None)
    assert (everything["films"] == 4_376).all()
    with pytest.raises(ValueError, match="not in the metadata"):
        label_agreement(metadata.iloc[:100], radiologist, "test")
    assert isinstance(everything, pd.DataFrame)

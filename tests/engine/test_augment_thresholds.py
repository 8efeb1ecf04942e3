import numpy as np
import pytest
import torch

from cxrutils.engine.augment import AugmentConfig, random_affine
from cxrutils.stats.thresholds import choose_thresholds


def test_identity_augmentation_returns_the_batch_unchanged():
    batch = torch.rand(3, 1, 16, 16)
    none = AugmentConfig(rotation_degrees=0, scale_min=1, scale_max=1, translate_fraction=0, hflip_probability=0)
    assert random_affine(batch, none) is batch


def test_flip_only_mirrors_each_image():
    batch = torch.rand(4, 1, 8, 8)
    flip = AugmentConfig(rotation_degrees=0, scale_min=1, scale_max=1, translate_fraction=0, hflip_probability=1)
    torch.testing.assert_close(random_affine(batch, flip), batch.flip(-1), atol=1e-5, rtol=0)


def test_augmentation_is_per_image_and_seeded():
    batch = torch.rand(1, 1, 32, 32).repeat(6, 1, 1, 1)
    config = AugmentConfig()
    first = random_affine(batch, config, torch.Generator().manual_seed(0))
    again = random_affine(batch, config, torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first[0], first[1])  # each image gets its own transform
    assert first.shape == batch.shape


def test_thresholds_come_from_validation_and_match_a_brute_force_youden():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (300, 3))
    scores = np.clip(labels * 0.3 + rng.random((300, 3)) * 0.8, 0, 1)
    thresholds = choose_thresholds(labels, scores, "youden")
    for k in range(3):
        def youden(t):
            predicted = scores[:, k] >= t
            tpr = predicted[labels[:, k] == 1].mean()
            fpr = predicted[labels[:, k] == 0].mean()
            return tpr - fpr
        best = max(youden(t) for t in np.unique(scores[:, k]))
        assert youden(thresholds[k]) == pytest.approx(best)


def test_max_f1_thresholds_maximise_f1_against_a_brute_force_search():
    """Every class's threshold gives the highest F1 any cut on its scores gives (positives: score >= threshold)."""
    rng = np.random.default_rng(4)
    labels = (rng.random((400, 5)) < [0.05, 0.2, 0.5, 0.8, 0.0]).astype(int)
    scores = np.clip(labels * rng.uniform(0.1, 0.5, 5) + rng.random((400, 5)) * 0.7, 0, 1)
    # A rare finding with a few confident calls (5 positives among 20 films) and no signal otherwise: its best F1,
    # about 0.28, lies among the confident films, where precision + recall < 1 (flagging every film gives 0.1).
    labels[rng.choice(400, 20, replace=False), 4] = 1
    confident = np.r_[rng.choice(np.flatnonzero(labels[:, 4] == 1), 5, replace=False),
                      rng.choice(np.flatnonzero(labels[:, 4] == 0), 15, replace=False)]
    scores[confident, 4] = 0.9 + 0.05 * rng.random(20)
    thresholds = choose_thresholds(labels, scores, "max_f1")
    for k in range(labels.shape[1]):
        def f1(t):
            flagged = scores[:, k] >= t
            true_positives = (flagged & (labels[:, k] == 1)).sum()
            return 2 * true_positives / (flagged.sum() + labels[:, k].sum())

        best = max(f1(t) for t in np.unique(scores[:, k]))
        assert f1(thresholds[k]) == pytest.approx(best), k
        assert thresholds[k] in scores[:, k]  # a cut at one of the scores, as the rule ">=" needs
    assert len(set(np.round(thresholds, 6))) == labels.shape[1]  # not one value for every class


def test_a_class_without_positives_gets_no_threshold():
    labels = np.zeros((10, 2), dtype=int)
    labels[:5, 0] = 1
    thresholds = choose_thresholds(labels, np.random.default_rng(0).random((10, 2)), "max_f1")
    assert np.isfinite(thresholds[0]) and np.isnan(thresholds[1])


def test_a_threshold_at_the_highest_score_can_be_chosen_and_mismatched_arrays_are_refused():
    """When the one positive scores highest, the best cut is that top score (F1 1), the last point with a threshold."""
    labels = np.array([[0], [0], [1], [0], [0]])
    scores = np.array([[0.1], [0.4], [0.9], [0.3], [0.5]])
    assert choose_thresholds(labels, scores, "max_f1")[0] == 0.9
    assert choose_thresholds(labels, scores, "youden")[0] == 0.9
    with pytest.raises(ValueError, match="same"):
        choose_thresholds(np.zeros((5, 2)), np.zeros((5, 3)), "youden")

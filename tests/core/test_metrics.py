import numpy as np
import pytest

from gblend_ray.core.metrics import (
    average_precision,
    describe,
    headline,
    mean_auc,
    mean_average_precision,
    roc_auc,
)


def test_map_and_mauc_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6], [0.2, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # class 0 ranked: 0.9 (pos), 0.8 (neg), 0.3 (pos), 0.2 (neg)
    #   AP = (1/2)(1/1) + (1/2)(2/3) = 5/6; AUC: pairs (pos > neg) = (0.9>0.8, 0.9>0.2, 0.3>0.2) = 3 of 4
    # class 1 ranked: 0.7 (pos), 0.6 (pos), 0.2 (neg), 0.1 (neg): AP = 1, AUC = 1
    assert average_precision(scores[:, 0], labels[:, 0]) == pytest.approx(5 / 6)
    assert roc_auc(scores[:, 0], labels[:, 0]) == pytest.approx(3 / 4)
    assert mean_average_precision(scores, labels) == pytest.approx((5 / 6 + 1) / 2)
    assert mean_auc(scores, labels) == pytest.approx((3 / 4 + 1) / 2)


def test_ties_count_once_and_half():
    # a positive tied with a negative: one threshold holding both (precision 1/2), AUC 1/2 for the pair
    scores, positive = np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])
    assert average_precision(scores, positive) == pytest.approx(0.5)
    assert roc_auc(scores, positive) == pytest.approx((0.5 + 1) / 2)
    # the order of tied samples does not matter
    assert average_precision(scores[[1, 0, 2]], positive[[1, 0, 2]]) == pytest.approx(0.5)


def test_classes_without_positives_or_negatives_are_left_out():
    scores = np.array([[0.9, 0.3, 0.5], [0.1, 0.8, 0.4]])
    labels = np.array([[1, 0, 1], [0, 0, 1]])  # class 1: no positive; class 2: no negative
    assert mean_average_precision(scores, labels) == pytest.approx((1.0 + 1.0) / 2)  # classes 0 and 2
    assert mean_auc(scores, labels) == pytest.approx(1.0)  # class 0 only
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="same"):
        mean_auc(scores, labels[:, :2])


def test_headline_prefers_video_level_then_top1_then_map():
    assert headline({"loss": 1, "top1": 0.5, "top5": 0.9, "video_top1": 0.6, "video_top5": 1}) == ("video_top1", "video_top5")
    assert headline({"loss": 1, "top1": 0.5, "top5": 0.9}) == ("top1", "top5")
    assert headline({"loss": 1, "mAP": 0.3, "mAUC": 0.7}) == ("mAP", "mAUC")
    assert describe({"loss": 0.25, "mAP": 0.3, "mAUC": 0.7}) == "mAP 30.0%, mAUC 70.0%, loss 0.250"


def test_agrees_with_scikit_learn_on_random_scores_with_ties():
    """The hand-written AP and ROC AUC are scikit-learn's definitions (step-wise AP without
    interpolation; AUC with ties counting half), class-averaged over the defined classes."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((200, 6)), 1)  # one decimal: many tied scores
    labels = (rng.random((200, 6)) < 0.3).astype(int)
    labels[:, 5] = 0  # a class with no positive: left out of both means
    defined = labels.any(axis=0)
    expected_ap = metrics.average_precision_score(labels[:, defined], scores[:, defined], average="macro")
    expected_auc = metrics.roc_auc_score(labels[:, defined], scores[:, defined], average="macro")
    assert mean_average_precision(scores, labels) == pytest.approx(expected_ap, abs=1e-12)
    assert mean_auc(scores, labels) == pytest.approx(expected_auc, abs=1e-12)

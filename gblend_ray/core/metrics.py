"""Ranking metrics of multi-label classification (AudioSet style): mAP and mAUC.

Pure NumPy (the math layer). ``scores`` and ``labels`` are ``(N, C)`` arrays, labels 0/1.
Each metric is computed per class and averaged over the classes where it is defined:
AP needs at least one positive, ROC AUC at least one positive and one negative (as in
the AudioSet evaluations the paper follows). Tied scores are one threshold, so the
result does not depend on the order of tied samples.
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be the same (N, C) shape")
    return scores, labels > 0.5


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds, from
    the highest down (P_k, R_k: precision and recall of predicting score ≥ threshold k)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    total = positive.sum()
    if total == 0:
        raise ValueError("average precision is undefined for a class with no positive sample")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each threshold
    true_pos = np.cumsum(p)[last]
    predicted = last + 1
    recall = true_pos / total
    precision = true_pos / predicted
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of one class: the probability that a random positive scores above a random
    negative, ties counting half (Mann–Whitney U with average ranks)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined for a class without both positive and negative samples")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average rank within each group of tied scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP: the mean of ``average_precision`` over the classes with a positive sample."""
    scores, positive = _check(scores, labels)
    defined = [c for c in range(scores.shape[1]) if positive[:, c].any()]
    if not defined:
        raise ValueError("mAP is undefined: no class has a positive sample in this split")
    return float(np.mean([average_precision(scores[:, c], positive[:, c]) for c in defined]))


def mean_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAUC: the mean of ``roc_auc`` over the classes with both positives and negatives."""
    scores, positive = _check(scores, labels)
    defined = [c for c in range(scores.shape[1]) if positive[:, c].any() and not positive[:, c].all()]
    if not defined:
        raise ValueError("mAUC is undefined: no class has both positive and negative samples in this split")
    return float(np.mean([roc_auc(scores[:, c], positive[:, c]) for c in defined]))


HEADLINES = (
    ("video_top1", "video_top5"),
    ("top1", "top5"),
    ("mAP", "mAUC"),
)
"""What a run is judged by, in order of preference: the paper's video-level accuracy
when several clips per video were evaluated, else clip (or sample) accuracy, else, for a
multi-label task, mAP; each with its companion metric."""

LABELS = {"video_top1": "video top-1", "video_top5": "video top-5", "top1": "top-1", "top5": "top-5",
          "mAP": "mAP", "mAUC": "mAUC", "loss": "loss"}


def headline(test: dict) -> tuple[str, str]:
    """The (main, companion) metric keys of a run's test metrics (``HEADLINES``)."""
    for main, companion in HEADLINES:
        if main in test:
            return main, companion
    raise ValueError(f"test metrics {sorted(test)} have none of {[m for m, _ in HEADLINES]}")


def describe(test: dict) -> str:
    """Every test metric of a run in one line, percentages but the loss."""
    parts = [f"{label} {100 * test[key]:.1f}%" for key, label in LABELS.items() if key in test and key != "loss"]
    return ", ".join([*parts, f"loss {test['loss']:.3f}"])

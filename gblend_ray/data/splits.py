"""The Gradient-Blending data splits of a data set: T, V, T', and val/test.

Gradient-Blending needs, inside the train split, a held-out set V standing in for the
true distribution and a train subset T' of the same size on which the train loss is
measured; :func:`make_splits` builds those (see :class:`Splits`) from an array dataset
or a media manifest alike (anything with ``task``, ``labels``, ``split`` and
``num_classes``: ``arrays.LabelledSamples``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import SPLIT_VALUES, DatasetError, LabelledSamples


@dataclass(frozen=True)
class Splits:
    """Index sets (sorted int64) for Gradient-Blending.

    train: T, what the model trains on (train split minus V).
    heldout: V, held out from the train split; stands in for the true distribution.
    train_subset: T' subset of T on which the train loss is measured.
    val, test: the dataset's val and test splits (never touched by T, V, T').
    """

    train: np.ndarray
    heldout: np.ndarray
    train_subset: np.ndarray
    val: np.ndarray
    test: np.ndarray

    FIELDS = ("train", "heldout", "train_subset", "val", "test")

    def __eq__(self, other: object) -> bool:  # the generated one would compare arrays ambiguously
        return isinstance(other, Splits) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in self.FIELDS)

    def to_dict(self) -> dict[str, list[int]]:
        return {f: [int(i) for i in getattr(self, f)] for f in self.FIELDS}

    def sizes(self) -> dict[str, int]:
        return {f: int(len(getattr(self, f))) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> "Splits":
        return cls(**{f: _idx(d[f]) for f in cls.FIELDS})


def _idx(a: Any) -> np.ndarray:
    return np.sort(np.asarray(a, dtype=np.int64).reshape(-1))


def _strata(dataset: LabelledSamples) -> np.ndarray:
    """Class used for stratification: the label (multiclass), else the first positive label,
    with all-negative rows forming their own stratum (multilabel)."""
    if dataset.task == "multiclass":
        return np.asarray(dataset.labels, dtype=np.int64)
    pos = np.asarray(dataset.labels) > 0.5
    return np.where(pos.any(axis=1), pos.argmax(axis=1), dataset.num_classes)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """How many of each stratum to pick so the total is exact and shares are proportional.

    Every stratum with >=2 members gets at least one pick when the budget allows, and picks
    are kept below the stratum size where possible, so both sides keep every class."""
    quota = total * counts / counts.sum()
    alloc = np.floor(quota).astype(np.int64)
    eligible = counts >= 2
    if eligible.sum() <= total:
        alloc[eligible & (alloc == 0)] = 1
    while alloc.sum() < total:
        cand = alloc < counts - 1
        cand = cand if cand.any() else alloc < counts
        i = int(np.argmax(np.where(cand, quota - alloc, -np.inf)))
        alloc[i] += 1
    while alloc.sum() > total:
        cand = alloc > 1
        cand = cand if cand.any() else alloc > 0
        i = int(np.argmin(np.where(cand, quota - alloc, np.inf)))
        alloc[i] -= 1
    return alloc


def _stratified_pick(pool: np.ndarray, strata: np.ndarray, total: int,
                     rng: np.random.Generator) -> np.ndarray:
    keys, counts = np.unique(strata[pool], return_counts=True)
    picked = [rng.permutation(pool[strata[pool] == k])[:m]
              for k, m in zip(keys, _allocate(counts, total))]
    return _idx(np.concatenate(picked)) if picked else _idx([])


def _check_fraction(name: str, value: float, low_open: bool) -> None:
    ok = isinstance(value, numbers.Real) and (0 < value < 1 if low_open else 0 <= value < 1)
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1)' if low_open else '[0, 1)'}, got {value!r}")


def make_splits(dataset: LabelledSamples, heldout_fraction: float = 0.1, subset_size: int | None = None,
                seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> Splits:
    """Build T, V, T' (and val/test) as described in :class:`Splits`; deterministic in ``seed``.

    The dataset's split.npy is used for train/val/test when present, otherwise a stratified
    split with ``val_fraction``/``test_fraction`` is drawn. V is a stratified sample of
    round(heldout_fraction * n_train) train indices (at least one per class where possible);
    T' is a uniform sample of T of ``subset_size`` (default |V|, capped at |T|).
    """
    _check_fraction("heldout_fraction", heldout_fraction, low_open=True)
    _check_fraction("val_fraction", val_fraction, low_open=False)
    _check_fraction("test_fraction", test_fraction, low_open=False)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if subset_size is not None and (not isinstance(subset_size, numbers.Integral)
                                    or isinstance(subset_size, bool) or subset_size < 1):
        raise ValueError(f"subset_size must be a positive int or None, got {subset_size!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    strata = _strata(dataset)
    n = dataset.num_samples
    if dataset.split is not None:
        split = np.asarray(dataset.split).astype(str)
        train, val, test = (_idx(np.flatnonzero(split == s)) for s in SPLIT_VALUES)
    else:
        everything = np.arange(n, dtype=np.int64)
        test = _stratified_pick(everything, strata, int(round(test_fraction * n)), rng)
        rest = np.setdiff1d(everything, test)
        val = _stratified_pick(rest, strata, min(int(round(val_fraction * n)), len(rest)), rng)
        train = np.setdiff1d(rest, val)
    if len(train) < 2:
        where = f" ({dataset.path / 'split.npy'})" if dataset.split is not None and dataset.path else ""
        raise ValueError(f"train split has {len(train)} samples{where}; need at least 2 to hold some out")
    n_heldout = min(max(int(round(heldout_fraction * len(train))), 1), len(train) - 1)
    heldout = _stratified_pick(train, strata, n_heldout, rng)
    t = np.setdiff1d(train, heldout)
    k = min(len(heldout) if subset_size is None else int(subset_size), len(t))
    subset = _idx(rng.choice(t, size=k, replace=False))
    return Splits(_idx(t), heldout, subset, _idx(val), _idx(test))


def _class_counts(dataset: LabelledSamples, idx: np.ndarray) -> np.ndarray:
    """Samples (multiclass) or positives (multi-label) of each class among ``idx``."""
    labels = np.asarray(dataset.labels)[idx]
    if labels.ndim == 1:
        return np.bincount(labels.astype(np.int64), minlength=dataset.num_classes)
    return (labels > 0.5).sum(axis=0)


SMALL_V = 30
"""Below this many samples in V, ``check_splits`` warns that G-Blend's estimate is coarse:
on the suite's basic-motions (V of 4) the rounds' weights are noise (README, "Defaults")."""


def check_splits(dataset: LabelledSamples, splits: Splits) -> list[str]:
    """Raise ``DatasetError`` for splits a run cannot be measured on — an empty T, V, T' or
    test part, a class with no sample in the train split — and return warnings for
    splits that weaken it: a V of fewer than ``SMALL_V`` samples, a class absent from V
    (G-Blend's generalization ignores it) or from test (its accuracy is not measured)."""
    source = (f"{dataset.path}/split.npy" if dataset.split is not None and dataset.path
              else f"the split drawn for {dataset.path} (data.val_fraction, data.test_fraction)")
    sizes = splits.sizes()
    counts = f"T {sizes['train']}, V {sizes['heldout']}, T' {sizes['train_subset']}, test {sizes['test']}"
    for part, what in (("train", "T (the train split minus V)"), ("heldout", "V (held out from the train split)"),
                       ("train_subset", "T' (the subset of T the train loss is measured on)"), ("test", "test")):
        if sizes[part] == 0:
            hint = ("mark some samples 'test' in split.npy, or delete it to draw a split" if part == "test"
                    else "give the train split more samples, or raise data.heldout_fraction")
            raise DatasetError(f"{source}: the {what} part is empty ({counts}); {hint}")
    names = list(dataset.classes)
    train = _class_counts(dataset, np.concatenate([splits.train, splits.heldout]))
    missing = [names[c] for c in np.flatnonzero(train == 0)]
    if missing:
        raise DatasetError(f"{source}: the train split has no sample of {len(missing)} of {len(names)} classes "
                           f"({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}); a model cannot learn "
                           "a class it never sees: put samples of every class in the train split")
    warnings = []
    if sizes["heldout"] < SMALL_V:
        warnings.append(f"{source}: V holds {sizes['heldout']} samples ({counts}): G-Blend's estimate on it is "
                        f"coarse (an accuracy moves in steps of 1/{sizes['heldout']}) and mostly noise; raise "
                        "data.heldout_fraction, or read its weights with that in mind")
    for part, what in (("heldout", "V"), ("test", "the test split")):
        absent = [names[c] for c in np.flatnonzero(_class_counts(dataset, getattr(splits, part)) == 0)]
        if absent:
            warnings.append(f"{source}: {what} has no sample of {len(absent)} class(es) "
                            f"({', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}; {counts})")
    return warnings

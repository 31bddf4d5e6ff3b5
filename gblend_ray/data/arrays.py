"""The on-disk multi-modal array dataset format: reading, checking and writing it.

A dataset is a directory::

    meta.yaml          description of the arrays (below)
    <modality>.npy     one per modality: shape (N, *shape), any float or int dtype
                       (loaded as float32), no NaN/inf
    labels.npy         multiclass: (N,) integers in [0, num_classes)
                       multilabel: (N, num_classes) of 0/1
    split.npy          optional: (N,) strings, each "train", "val" or "test"

``meta.yaml``::

    name: av-overfit            # optional, defaults to the directory name
    task: multiclass            # multiclass | multilabel (default multiclass)
    classes: [c0, c1, ...]      # class names (required)
    modalities:                 # required, ordered mapping name -> spec
      video: {shape: [32]}      # per-sample shape (array shape without axis 0)
      audio: {shape: [256]}

Every array must have the same N. Modality names are used as file names, so
they are restricted to ``[A-Za-z0-9_][A-Za-z0-9_.-]*`` and may not be
``labels`` or ``split``. Any problem raises :class:`DatasetError` whose message
starts with the full path of the offending file and says how to fix it.

The Gradient-Blending splits of a data set (T, V, T', test) are cut in ``splits.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TASKS = ("multiclass", "multilabel")
SPLIT_VALUES = ("train", "val", "test")
_RESERVED = {"labels", "split"}  # would collide with labels.npy / split.npy
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class DatasetError(ValueError):
    """A dataset directory does not follow the format in this module's docstring."""


class LabelledSamples:
    """What every data set has for ``make_splits`` and the model: ``task``, ``classes``,
    ``labels`` and ``split`` fields (arrays here, media files in ``media.MediaDataset``)."""

    classes: list[str]
    labels: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(eq=False)  # element-wise array equality makes a generated __eq__ useless
class Dataset(LabelledSamples):
    path: Path | None
    name: str
    task: str
    classes: list[str]
    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(d) for d in arr.shape[1:]) for name, arr in self.modalities.items()}


def _fail(file: Path, msg: str) -> DatasetError:
    return DatasetError(f"{file}: {msg}")


def _load_npy(file: Path, what: str) -> np.ndarray:
    if not file.is_file():
        raise _fail(file, f"missing {what}; write it with numpy.save (see the gblend_ray.data.arrays docstring)")
    try:
        # pickle is refused: a dataset must never be able to run code on load
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise _fail(file, f"cannot read {what} as a plain .npy array ({e}); "
                          "write it with numpy.save from a numeric/str array, not an object array") from e


def _parse_meta(meta_file: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(meta_file.read_text())
    except yaml.YAMLError as e:
        raise _fail(meta_file, f"invalid YAML; fix the syntax:\n{e}") from e
    if not isinstance(meta, dict):
        raise _fail(meta_file, "top level must be a mapping with keys 'classes' and 'modalities'")
    task = meta.get("task", "multiclass")
    if task not in TASKS:
        raise _fail(meta_file, f"field 'task' is {task!r}; use one of {list(TASKS)}")
    classes = meta.get("classes")
    if classes is None:
        raise _fail(meta_file, "missing required key 'classes'; add a list of class names")
    if not isinstance(classes, list) or not classes or any(isinstance(c, (list, dict)) for c in classes):
        raise _fail(meta_file, f"field 'classes' must be a non-empty list of names, got {classes!r}")
    classes = [str(c) for c in classes]  # YAML may have parsed names like 0 or yes
    if len(set(classes)) != len(classes):
        raise _fail(meta_file, f"field 'classes' has duplicate names {classes}; make them unique")
    mods = meta.get("modalities")
    if mods is None:
        raise _fail(meta_file, "missing required key 'modalities'; add a mapping name -> {shape: [...]}")
    if not isinstance(mods, dict) or not mods:
        raise _fail(meta_file, f"field 'modalities' must be a non-empty mapping name -> {{shape: [...]}}, got {mods!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    for mname, spec in mods.items():
        if not isinstance(mname, str) or not _NAME_RE.match(mname) or mname in _RESERVED:
            raise _fail(meta_file, f"modality name {mname!r} is not allowed; use letters, digits, '_', '.', '-' "
                                   f"and not {sorted(_RESERVED)}")
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise _fail(meta_file, f"modalities.{mname}.shape must be a list of positive ints "
                                   f"(per-sample shape), got {spec!r}")
        shapes[mname] = tuple(shape)
    name = meta.get("name", meta_file.parent.name)
    return {"name": str(name), "task": task, "classes": classes, "shapes": shapes}


def _check_rows(file: Path, arr: np.ndarray, n: int | None, ref: Path | None) -> int:
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise _fail(file, f"has shape {arr.shape}; it needs a first (sample) axis with at least one sample")
    if n is not None and arr.shape[0] != n:
        raise _fail(file, f"has {arr.shape[0]} samples (first axis) but {ref} has {n}; "
                          "every array must have one row per sample, in the same order")
    return int(arr.shape[0])


def load_dataset(path: str | Path) -> Dataset:
    """Read and fully validate the dataset directory ``path``."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise _fail(root, "dataset directory does not exist; create it with save_dataset()")
    meta_file = root / "meta.yaml"
    if not meta_file.is_file():
        raise _fail(meta_file, "missing meta.yaml; it must declare 'classes' and 'modalities' "
                               "(see the gblend_ray.data.arrays docstring)")
    meta = _parse_meta(meta_file)
    n: int | None = None
    ref: Path | None = None
    modalities: dict[str, np.ndarray] = {}
    for mname, shape in meta["shapes"].items():
        file = root / f"{mname}.npy"
        arr = _load_npy(file, f"array for modality {mname!r} declared in {meta_file}")
        if arr.dtype.kind not in "biuf":
            raise _fail(file, f"dtype {arr.dtype} is not numeric; save a float or int array")
        n, ref = _check_rows(file, arr, n, ref), ref or file
        if tuple(arr.shape[1:]) != shape:
            raise _fail(file, f"per-sample shape is {tuple(arr.shape[1:])} but {meta_file} declares "
                              f"modalities.{mname}.shape = {list(shape)}; fix one of them")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():  # after the cast: huge float64 values become inf here
            bad = int(np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))[0])
            raise _fail(file, f"contains NaN/inf (first at sample {bad}, or a value too large for float32); "
                              "clean or impute the data")
        modalities[mname] = arr

    num_classes = len(meta["classes"])
    labels_file = root / "labels.npy"
    labels = _load_npy(labels_file, "labels")
    _check_rows(labels_file, labels, n, ref)
    if labels.dtype.kind not in "biuf":
        raise _fail(labels_file, f"dtype {labels.dtype} is not numeric; save integer class ids (or 0/1)")
    if meta["task"] == "multiclass":
        if labels.ndim != 1:
            raise _fail(labels_file, f"has shape {labels.shape}; task multiclass needs shape (N,) of class ids "
                                     "(for one-hot/multi-hot labels set task: multilabel)")
        if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise _fail(labels_file, "contains non-integer values; save integer class ids")
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(labels_file, f"label {labels[i]} at sample {i} is out of range [0, {num_classes}); "
                                     f"{meta_file} lists {num_classes} classes")
        labels = labels.astype(np.int64)
    else:
        if labels.shape[1:] != (num_classes,):
            raise _fail(labels_file, f"has shape {labels.shape}; task multilabel needs (N, {num_classes}) "
                                     f"matching the {num_classes} classes in {meta_file}")
        if not np.isin(labels, (0, 1)).all():
            raise _fail(labels_file, "task multilabel needs values 0 or 1 only; binarize the labels")
        labels = labels.astype(np.float32)

    split = None
    split_file = root / "split.npy"
    if split_file.exists():
        raw = _load_npy(split_file, "split")
        _check_rows(split_file, raw, n, ref)
        if raw.ndim != 1 or raw.dtype.kind not in "US":
            raise _fail(split_file, f"has shape {raw.shape} dtype {raw.dtype}; save a (N,) str array, "
                                    "e.g. numpy.asarray(split, dtype=str)")
        split = raw.astype(str)
        bad = ~np.isin(split, SPLIT_VALUES)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(split_file, f"value {str(split[i])!r} at sample {i} is not one of {list(SPLIT_VALUES)}; "
                                    "fix it or delete split.npy to get a generated split")
    return Dataset(root, meta["name"], meta["task"], meta["classes"], modalities, labels, split)


def check_new_directory(path: Path, what: str, note: str = "") -> None:
    """A data set (``what``, e.g. "data.preset 'av-overfit'") is written only into a
    directory that does not exist or is empty: nothing a user keeps there is overwritten."""
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path}: {what} would be written here, but this is a file; give a new directory")
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if held:
        shown = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
        raise DatasetError(f"{path}: {note}is not empty ({shown}); {what} is only written into a new or empty "
                           "directory: give one, or remove this one first")


def write_whole(target: Path, what: str, write: Callable[[Path], Any]) -> Path:
    """Write a data set (``what``) into the new or empty directory ``target`` whole:
    ``write`` fills a directory beside it, which then replaces ``target`` in one rename.
    A failure leaves nothing half-written, and a process that loads ``target`` while
    another writes it never reads a partial array. Of two processes that write the same
    ``target`` at once, one rename wins and the other raises (``DatasetError`` or
    ``OSError``) with ``target`` already whole."""
    target = Path(target).expanduser().resolve()
    check_new_directory(target, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(scratch / "set")  # made inside the private scratch directory with the user's umask
        check_new_directory(target, what)  # still new or empty
        if target.exists():
            target.rmdir()
        os.replace(scratch / "set", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def save_dataset(path: str | Path, modalities: Mapping[str, Any], labels: Any, classes: Sequence[str],
                 split: Sequence[str] | np.ndarray | None = None, task: str = "multiclass",
                 name: str | None = None) -> Path:
    """Write the format to ``path`` (created if needed), check it by loading it back, return the path."""
    root = Path(path).expanduser().resolve()
    if task not in TASKS:
        raise DatasetError(f"{root / 'meta.yaml'}: task {task!r} is not one of {list(TASKS)}")
    root.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in modalities.items()}
    meta: dict[str, Any] = {} if name is None else {"name": str(name)}
    meta.update(task=task, classes=[str(c) for c in classes],
                modalities={k: {"shape": [int(d) for d in a.shape[1:]]} for k, a in arrays.items()})
    (root / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))  # key order = modality order
    for k, a in arrays.items():
        if not _NAME_RE.match(str(k)) or k in _RESERVED:
            continue  # load_dataset reports the bad name against meta.yaml
        np.save(root / f"{k}.npy", a.astype(np.float32) if a.dtype.kind in "biuf" else a)
    np.save(root / "labels.npy", np.asarray(labels))
    split_file = root / "split.npy"
    if split is not None:
        np.save(split_file, np.asarray(split, dtype=str))
    elif split_file.exists():
        split_file.unlink()  # a stale split from an earlier save would silently be used on load
    load_dataset(root)
    return root

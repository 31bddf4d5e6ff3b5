"""A media data set's manifest: which video files, with which labels, segments and splits.

The paper trains on clips cut from Kinetics, mini-Sports and mini-AudioSet videos (§4,
"Implementation details"); a media data set names such files in a manifest.

Manifest (``manifest.csv``; ``data.path`` is the CSV file or a directory holding it)::

    path,label,start,end,split
    videos/abseiling_001.mp4,abseiling,0,10,train
    /data/k400/val/x.mp4,juggling,,,val

- ``path``: the video, relative to the manifest's directory or absolute.
- ``label`` (multiclass: one class name) or ``labels`` (multi-label: class names
  separated by ``;``). One of the two columns, not both.
- ``start``, ``end`` (optional, seconds): the part of the file clips are cut from
  (default: the whole file). Both columns may be left empty on any row.
- ``split`` (optional): ``train``, ``val`` or ``test`` on every row (otherwise
  ``make_splits`` draws a stratified split).

An optional ``meta.yaml`` next to the manifest may give ``name``, ``classes`` (ordered;
the label ids follow this order) and ``task: multiclass|multilabel``. Without it the
classes are the sorted unique names and the task is multi-label iff the column is
``labels``. Manifest problems raise :class:`MediaError` naming the manifest, the row
(1-based, header excluded, with its line) and the field, and saying what to do.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..arrays import SPLIT_VALUES, TASKS

MANIFEST = "manifest.csv"


class MediaError(ValueError):
    """A manifest, a media file or a flow file cannot be used; the message starts with the
    path of the offending file and says how to fix it."""


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row, resolved: ``row`` is 1-based without the header, ``line`` the CSV line."""

    row: int
    line: int
    path: Path
    labels: tuple[int, ...]
    start: float | None
    end: float | None
    split: str | None

    @property
    def key(self) -> str:
        """How the row is named in ``skipped``: the path, with its segment if it has one."""
        if self.start is None and self.end is None:
            return str(self.path)
        return f"{self.path}#t={'' if self.start is None else f'{self.start:g}'},{'' if self.end is None else f'{self.end:g}'}"


@dataclass
class Manifest:
    path: Path
    name: str
    task: str
    classes: list[str]
    rows: list[ManifestRow]


def resolve_manifest(path: str | Path) -> Path:
    """The manifest CSV that ``data.path`` names: the file itself or ``<dir>/manifest.csv``."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise MediaError(f"{p / MANIFEST}: no {MANIFEST} in this directory; write one with columns "
                             "path,label (see gblend_ray.data.media.manifest) or point data.path at the CSV file")
        return p / MANIFEST
    if not p.is_file():
        raise MediaError(f"{p}: manifest does not exist; point data.path at a manifest CSV or its directory")
    return p


def is_media_path(path: str | Path) -> bool:
    """Whether ``data.path`` names a media manifest (a ``.csv`` file, or a directory with a
    ``manifest.csv``) rather than an array dataset directory (``data/arrays.py``)."""
    p = Path(path).expanduser()
    return (p.is_file() and p.suffix.lower() == ".csv") or (p.is_dir() and (p / MANIFEST).is_file())


def _row_error(manifest: Path, row: int, line: int, fieldname: str, msg: str) -> MediaError:
    return MediaError(f"{manifest}: row {row} (line {line}), field {fieldname!r}: {msg}")


def _read_meta(meta_file: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(meta_file.read_text())
    except yaml.YAMLError as e:
        raise MediaError(f"{meta_file}: invalid YAML; fix the syntax:\n{e}") from e
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise MediaError(f"{meta_file}: top level must be a mapping (keys name, classes, task)")
    out: dict[str, Any] = {}
    if "task" in meta:
        if meta["task"] not in TASKS:
            raise MediaError(f"{meta_file}: field 'task' is {meta['task']!r}; use one of {list(TASKS)}")
        out["task"] = meta["task"]
    if "classes" in meta:
        classes = meta["classes"]
        if not isinstance(classes, list) or not classes or any(isinstance(c, (list, dict)) for c in classes):
            raise MediaError(f"{meta_file}: field 'classes' must be a non-empty list of names, got {classes!r}")
        classes = [str(c) for c in classes]  # YAML may have parsed names like 0 or yes
        if len(set(classes)) != len(classes):
            raise MediaError(f"{meta_file}: field 'classes' has duplicate names {classes}; make them unique")
        out["classes"] = classes
    if "name" in meta:
        out["name"] = str(meta["name"])
    return out


def _seconds(value: str, manifest: Path, row: int, line: int, fieldname: str) -> float | None:
    if value == "":
        return None
    try:
        t = float(value)
    except ValueError:
        raise _row_error(manifest, row, line, fieldname, f"{value!r} is not a number; give seconds "
                                                          "(e.g. 2.5) or leave it empty for the whole file") from None
    if not math.isfinite(t) or t < 0:
        raise _row_error(manifest, row, line, fieldname, f"{value!r} must be a finite number of seconds >= 0")
    return t


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate the manifest (format in the module docstring); files are not opened."""
    manifest = resolve_manifest(path)
    meta_file = manifest.parent / "meta.yaml"
    meta = _read_meta(meta_file) if meta_file.is_file() else {}
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            raw = [({(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()},
                    reader.line_num) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise MediaError(f"{manifest}: cannot be read as a UTF-8 CSV file ({e}); save it as CSV "
                         "with a header row path,label") from e
    if "path" not in header:
        raise MediaError(f"{manifest}: no 'path' column (header is {header}); the first line must name "
                         "the columns, e.g. path,label")
    if ("label" in header) == ("labels" in header):
        what = "both 'label' and 'labels'" if "label" in header else "neither 'label' nor 'labels'"
        raise MediaError(f"{manifest}: has {what} column; use 'label' (one class per row) or 'labels' "
                         "(';'-separated classes per row), not both")
    column = "label" if "label" in header else "labels"
    if not raw:
        raise MediaError(f"{manifest}: has a header but no rows; add one row per video")
    task = meta.get("task", "multilabel" if column == "labels" else "multiclass")

    names: list[list[str]] = []
    for i, (r, line) in enumerate(raw, 1):
        value = r.get(column, "")
        parts = [p.strip() for p in value.split(";")] if column == "labels" else [value]
        if not value or any(not p for p in parts):
            raise _row_error(manifest, i, line, column, f"{value!r} is empty or has an empty class name; "
                                                        "give a class name" + (" list like a;b" if column == "labels" else ""))
        if column == "label" and ";" in value:
            raise _row_error(manifest, i, line, column, f"{value!r} names several classes; for multi-label "
                                                        "data name the column 'labels'")
        if task == "multiclass" and len(parts) > 1:
            raise _row_error(manifest, i, line, column, f"{value!r} names {len(parts)} classes but the task is "
                                                        f"multiclass ({meta_file}); give one class or set task: multilabel")
        names.append(parts)
    classes = meta.get("classes") or sorted({n for parts in names for n in parts})
    class_id = {c: k for k, c in enumerate(classes)}

    splits = [r.get("split", "") for r, _ in raw] if "split" in header else None
    if splits is not None and not any(splits):
        splits = None  # an empty column is no split
    rows = []
    for i, ((r, line), parts) in enumerate(zip(raw, names), 1):
        if not r.get("path"):
            raise _row_error(manifest, i, line, "path", "is empty; give the video's path "
                                                        "(relative to the manifest's directory or absolute)")
        for n in parts:
            if n not in class_id:
                raise _row_error(manifest, i, line, column, f"class {n!r} is not among the classes listed in "
                                                            f"{meta_file} ({classes}); add it there or fix the row")
        start = _seconds(r.get("start", ""), manifest, i, line, "start")
        end = _seconds(r.get("end", ""), manifest, i, line, "end")
        if end is not None and end <= (start or 0.0):
            raise _row_error(manifest, i, line, "end", f"{end:g} s is not after start ({start or 0:g} s); "
                                                       "fix the segment or leave end empty for the end of the file")
        split = None
        if splits is not None:
            split = splits[i - 1]
            if split not in SPLIT_VALUES:
                raise _row_error(manifest, i, line, "split", f"{split!r} is not one of {list(SPLIT_VALUES)}; "
                                                             "fill every row or drop the column for a generated split")
        file = Path(r["path"]).expanduser()
        file = file if file.is_absolute() else manifest.parent / file
        labels = tuple(sorted({class_id[n] for n in parts}))
        rows.append(ManifestRow(i, line, file.resolve(), labels, start, end, split))
    name = meta.get("name", manifest.parent.name)
    return Manifest(manifest, name, task, list(classes), rows)

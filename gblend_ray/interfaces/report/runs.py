"""The runs a report is made of: every run directory under a root, read back.

A *run directory* is what ``gblend run`` writes (``results.json``, ``trajectory.json``,
``config.yaml``), or a failed run (``error.txt`` and ``config.yaml``, no results). A
report root is one run directory, a ``gblend compare`` output, or a sweep holding run
directories at any depth; :func:`find_runs` collects them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ...storage.location import Location, resolve


@dataclass
class RunRecord:
    """One run directory. ``results`` is None for a failed run, whose ``error`` holds the
    message from ``error.txt``. ``modalities`` is the config's ``data.modalities``; empty
    means the run used all of the dataset's modalities."""

    path: Path | Location
    """A local path, or the run's location in object storage."""
    method: str
    modalities: tuple[str, ...]
    seed: int | None
    results: dict | None
    trajectory: list[dict] = field(default_factory=list)
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config, flattened to dotted keys."""

    @property
    def ok(self) -> bool:
        return self.results is not None


def method_kind(method: str) -> str:
    """``uni``, ``naive``, ``aux``, ``gblend`` or whatever precedes the ``:``."""
    return method.partition(":")[0]


def is_gblend(method: str) -> bool:
    return method_kind(method) == "gblend"


def _read_config_yaml(path: Location) -> dict:
    """A run's ``config.yaml`` (what a failed run leaves besides its error), or {}."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# What tells runs of one table row apart without making them different rows.
_NOT_SETTINGS = ("seed", "method", "name", "data.modalities", "data.path", "data.preset", "tracking.")


def _load_run(where: Location) -> RunRecord | None:
    """The run in ``where``, or None when it holds no run's results or error."""
    results_file, error_file = where / "results.json", where / "error.txt"
    results: dict | None = None
    error: str | None = None
    if results_file.is_file():
        try:
            loaded = json.loads(results_file.read_text())
        except (OSError, ValueError) as err:
            # A truncated results.json (a run killed while writing) is a failure to show,
            # not a reason to lose the whole report.
            error = f"unreadable results.json: {err}"
        else:
            if isinstance(loaded, dict) and "method" in loaded and "test" in loaded:
                results = loaded
            elif not error_file.is_file():
                return None  # some other tool's results.json (e.g. a sweep's), not a run
    if error_file.is_file():
        try:
            error = error_file.read_text().strip() or "(empty error.txt)"
        except OSError as err:
            error = f"unreadable error.txt: {err}"
    if results is None and error is None:
        return None

    cfg = (results or {}).get("config") or _read_config_yaml(where / "config.yaml")
    method = (results or {}).get("method") or cfg.get("method") or "unknown"
    seed = (results or {}).get("seed", cfg.get("seed"))
    mods = (cfg.get("data") or {}).get("modalities")
    if isinstance(mods, str):
        mods = [mods]

    trajectory: list[dict] = []
    traj_file = where / "trajectory.json"
    if results is not None and traj_file.is_file():
        try:
            loaded = json.loads(traj_file.read_text())
            trajectory = loaded if isinstance(loaded, list) else []
        except (OSError, ValueError):
            trajectory = []  # the table does not need it; only the weight plot loses a run
    return RunRecord(path=where.local_path or where, method=str(method), modalities=tuple(str(m) for m in (mods or ())),
                     seed=seed if isinstance(seed, int) else None, results=results,
                     trajectory=trajectory, error=error, config=_flatten(cfg))


def find_runs(root: str | Path | Location) -> list[RunRecord]:
    """Every run directory under ``root`` (``root`` included; a local path or a storage
    URI), in path order. A directory is a run if it holds a run's ``results.json`` or an
    ``error.txt``.
    """
    root = resolve(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    runs = []
    for where in _candidates(root):
        run = _load_run(where)
        if run is not None:
            runs.append(run)
    return runs


def _candidates(root: Location) -> list[Location]:
    """The directories under ``root`` that hold a ``results.json`` or ``error.txt``, in
    path order, from one recursive listing (one request on an object store)."""
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    dirs = {root.path.rstrip("/")} | {i.path.rsplit("/", 1)[0] for i in infos
                                      if i.type == pafs.FileType.File and i.base_name in ("results.json", "error.txt")}
    return [Location(root.fs, d, root.scheme, root.query) for d in sorted(dirs, key=lambda d: d.split("/"))]


def setting_of(run: RunRecord, runs: list[RunRecord]) -> str:
    """The config values that vary across ``runs`` (other than seed, method and
    modalities), as ``key=value, ...``: runs that differ there are different rows (an
    optimizer or a fusion sweep)."""
    keys = {k for r in runs for k in r.config if not k.startswith(_NOT_SETTINGS)}
    varying = sorted(k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1)
    return ", ".join(f"{k}={run.config.get(k)}" for k in varying)


GroupKey = tuple[str, tuple[str, ...], str]
"""A table row: (method, modalities, setting)."""


def group_runs(runs: list[RunRecord], ok_only: bool = False) -> dict[GroupKey, list[RunRecord]]:
    """The runs of each table row, in path order."""
    groups: dict[GroupKey, list[RunRecord]] = {}
    for run in runs:
        if run.ok or not ok_only:
            groups.setdefault((run.method, run.modalities, setting_of(run, runs)), []).append(run)
    return groups

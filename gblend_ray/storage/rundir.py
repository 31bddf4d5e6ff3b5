"""A run directory: one run's files, its identity, and what a new command may do with it.

A run directory holds one run. ``run.json`` records its config, a hash of the config and
its status (``running``, ``failed``, ``finished``); a command that is pointed at the
directory again ``claim``s it first:

- a directory that is empty or does not exist: the run starts;
- a run of another config: refused, naming the keys that differ, unless ``overwrite``
  (which removes the old run's files first);
- the same config, finished: nothing to do (the caller prints its results), unless
  ``overwrite``;
- the same config, unfinished (interrupted or failed): refused with the two ways on —
  ``resume`` continues it from its last boundary checkpoint, ``overwrite`` starts over;
- files but no ``run.json``: not a run this version can identify; refused.

Every file goes through the directory's ``Location`` (a local path or a storage URI), so
a run on object storage has the same layout as one on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import traceback
from typing import Any, Literal

from .location import Location, resolve

RUN = "run.json"
CONFIG = "config.yaml"
RESULTS = "results.json"
TRAJECTORY = "trajectory.json"
TRAINED = "trained_weights.json"
METRICS = "metrics.jsonl"
ROUNDS = "rounds.jsonl"
ROUNDS_CSV = "rounds.csv"
ERROR = "error.txt"
LOG = "ray.log"
CHECKPOINTS = "checkpoints"
"""Boundary checkpoints of the in-process engine (``epoch_0004/``, ...)."""
RAY = "ray"
"""Ray Train's and Tune's storage for the run (``ray/train/epoch_0004/``, ``ray/probes/``)."""
WANDB = "wandb"
PRETRAINED = "pretrained"
RUN_FILES = (RUN, CONFIG, RESULTS, TRAJECTORY, TRAINED, METRICS, ROUNDS, ROUNDS_CSV, ERROR, LOG, CHECKPOINTS, RAY,
             WANDB, PRETRAINED)
"""Everything a run writes into its directory: what ``overwrite`` removes (nothing else)."""

Status = Literal["running", "failed", "finished", "stopped"]
Claim = Literal["start", "resume", "finished"]
_EPOCH_DIR = re.compile(r"epoch_(\d+)(_final)?$")


class RunDirError(ValueError):
    """A run directory that cannot take this run as asked: the message says what to do."""


def canonical(config: dict) -> dict:
    """``config`` as JSON reads it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(canonical(config), sort_keys=True).encode()).hexdigest()[:16]


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing_keys(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (old value, new value) for every key whose value differs."""
    a, b = _flatten(canonical(old)), _flatten(canonical(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


class RunDir:
    """One run's directory (a local path or a storage URI)."""

    def __init__(self, where: str | Location):
        self.location = resolve(where)

    @property
    def uri(self) -> str:
        return self.location.uri

    def __truediv__(self, name: str) -> Location:
        return self.location / name

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def __reduce__(self):
        return (RunDir, (self.uri,))

    # ------------------------------------------------------------------ files

    def exists(self, name: str) -> bool:
        return (self / name).exists()

    def read_json(self, name: str, default: Any = None) -> Any:
        where = self / name
        if not where.exists():
            return default
        return json.loads(where.read_text())

    def write_json(self, name: str, payload: Any) -> None:
        (self / name).write_text(json.dumps(payload, indent=2, allow_nan=False))

    def read_jsonl(self, name: str) -> list[dict]:
        """The records of a JSON-lines file; a last line cut short by a crash is dropped."""
        where = self / name
        if not where.exists():
            return []
        records = []
        for line in where.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def write_jsonl(self, name: str, records: list[dict]) -> None:
        """Write the whole file (object stores have no append; the files are small)."""
        (self / name).write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))

    # ------------------------------------------------------------------ identity

    def identity(self) -> dict | None:
        """``run.json``: the run's config, its hash, its status; None if there is none."""
        try:
            ident = self.read_json(RUN)
        except json.JSONDecodeError:
            return None
        return ident if isinstance(ident, dict) and "config" in ident else None

    def start(self, config: dict) -> None:
        """Record this directory as the run of ``config``, running (attempt 1, driven by
        this process)."""
        self.location.mkdir()
        self.write_json(RUN, {"config_hash": config_hash(config), "status": "running",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempts": 1, **_driver(),
                              "config": canonical(config)})

    def resume(self) -> None:
        """Record another attempt at the run, driven by this process."""
        ident = self.identity() or {}
        self.mark("running", attempts=int(ident.get("attempts", 1)) + 1, **_driver())

    def mark(self, status: Status, **extra: Any) -> None:
        ident = self.identity()
        if ident is None:
            return
        ident.update(status=status, **extra, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.write_json(RUN, ident)

    def fail(self, cause: str, err: BaseException | None = None) -> None:
        """A failed run: ``error.txt`` (its cause, then the traceback) and its status."""
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)) if err is not None else ""
        (self / ERROR).write_text(f"{cause}\n\n{trace}".rstrip() + "\n")
        self.mark("failed", error=cause)

    def checkpoint_epochs(self, holding: str | None = None) -> list[int]:
        """The epochs of the boundary checkpoints on disk (either engine's), ascending;
        with ``holding``, only those whose directory holds that file (a checkpoint whose
        write was cut short has none)."""
        epochs = set()
        for where in (self / CHECKPOINTS, self / RAY / "train"):
            for name in where.listdir():
                m = _EPOCH_DIR.match(name)
                if m and not m.group(2) and (holding is None or (where / name / holding).is_file()):
                    epochs.add(int(m.group(1)))
        return sorted(epochs)

    def claim(self, config: dict, *, resume: bool = False, overwrite: bool = False) -> Claim:
        """What a command that wants to run ``config`` here does (module docstring);
        raises ``RunDirError`` when it must not."""
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite exclude each other: --resume continues the run in "
                              f"{self.uri}, --overwrite removes it and starts over")
        names = self.location.listdir()
        if not names:
            return "start"
        ident = self.identity()
        if ident is None:
            ours = [n for n in names if n in RUN_FILES]
            if overwrite:
                self.clear()
                return "start"
            raise RunDirError(
                f"{self.uri} is not empty ({_listing(names)}) but holds no run this version can identify (no {RUN})"
                + (f"; --overwrite removes the run files it holds ({', '.join(ours)}) and starts this run"
                   if ours else "")
                + "; or choose another --out")
        changed = differing_keys(ident["config"], config)
        if changed:
            if overwrite:
                self.clear()
                return "start"
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            raise RunDirError(f"{self.uri} holds a run of another config ({len(changed)} key(s) differ: {shown}{more}); "
                              "--overwrite removes that run and starts this one, or choose another --out")
        if overwrite:
            self.clear()
            return "start"
        if ident.get("status") == "finished" and self.exists(RESULTS):
            return "finished"
        if resume:
            return "resume"
        where = self.checkpoint_epochs()
        last = f", last checkpoint at epoch {where[-1]}" if where else ", no checkpoint yet"
        raise RunDirError(f"{self.uri} holds this run, unfinished ({ident.get('status', 'running')}{last}): "
                          "--resume continues it, --overwrite starts it over")

    def clear(self) -> None:
        """Remove every file a run writes (``RUN_FILES``); anything else stays."""
        for name in RUN_FILES:
            (self / name).remove()


def _driver() -> dict:
    """Who drives an attempt: a sweep trial's or a command's process, on which host."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _listing(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")

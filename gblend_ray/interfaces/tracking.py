"""Record a run's progress: a local mirror (always) and Weights & Biases (optionally).

The training code is handed a :class:`RunTracker` as an observer with three methods,
called on the process that trains (rank 0 only):

- ``on_epoch(record)``: one line of ``run_dir/metrics.jsonl``; on W&B, the record's
  numeric values with ``epoch`` as their x axis.
- ``on_round(record)``: one G-Blend estimation round: a line of ``run_dir/rounds.jsonl``
  and a row of ``run_dir/rounds.csv`` (``epoch`` plus ``weights/<head>``, ``G/<head>``,
  ``dO/<head>``, ``ogr/<head>``); on W&B, those scalars with ``round/epoch`` as their x
  axis, plus ``round/fallback`` and ``round/starved`` (0/1).
- ``on_end(results)``: the test metrics into the W&B summary, then the W&B run is
  finished. Calling it again does nothing.

W&B steps are not used: every ``log`` call is one history row, and ``define_metric``
gives epoch metrics ``epoch`` and round metrics ``round/epoch`` as their x axes. Rounds
and epochs interleave (and a restarted worker logs again from its checkpoint), so
explicit steps would have W&B drop points. An epoch record's ``weights/<head>`` (the
weights in effect for that epoch) is logged to W&B as ``epoch_weights/<head>``, so that
the ``weights/<head>`` series holds exactly one point per estimation round.

The tracker is pickled before its first call (it is shipped to Ray workers), so files
are opened per write and the W&B run is created on first use; pickling drops the live
run. The W&B run id is derived from ``run_dir``, so a restarted worker resumes the same
run (``resume="allow"``). Everything written passes through :func:`scrub` first: no
API key, token, password or secret is written anywhere.

No torch or ray here; ``wandb`` is imported only when a W&B run is started.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core.metrics import LABELS
from ..core.spec import WANDB_MODES, TrackingSpec

log = logging.getLogger(__name__)

SECRET_MARKERS = ("api_key", "apikey", "token", "password", "secret")
MASK = "***"
ROUND_FIELDS = ("weights", "G", "dO", "ogr")
"""Per-head round quantities, in the order of the ``rounds.csv`` columns."""
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def _api_key_configured() -> bool:
    """Whether W&B has an API key: ``WANDB_API_KEY``, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else []
    home = Path.home()
    candidates += [str(home / ".netrc"), str(home / "_netrc")]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            entry = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def wandb_mode(mode: str | None = None) -> str:
    """The W&B mode a run uses.

    A ``WANDB_MODE`` environment variable wins (it is the process-level override, e.g. to
    stay offline without a network), then ``WANDB_DISABLED=true`` (``"disabled"``), then an
    explicit ``mode``; with neither, ``"online"`` if an API key is configured
    (``WANDB_API_KEY`` or a netrc entry for ``api.wandb.ai``), else ``"offline"``.
    """
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        env = _MODE_ALIASES.get(env, env)
        if env not in WANDB_MODES:
            raise ValueError(f"WANDB_MODE must be one of {WANDB_MODES}, got {env!r}")
        return env
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled"
    if mode is not None:
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"W&B mode must be one of {WANDB_MODES}, got {mode!r}")
        return mode
    return "online" if _api_key_configured() else "offline"


def _is_secret(key: Any) -> bool:
    k = str(key).lower()
    return any(marker in k for marker in SECRET_MARKERS)


def scrub(config: Any) -> Any:
    """A copy of ``config`` with the value of every key containing ``api_key``, ``apikey``,
    ``token``, ``password`` or ``secret`` (case-insensitive, at any depth, also inside
    lists) replaced by ``"***"``."""
    if isinstance(config, dict):
        return {k: (MASK if _is_secret(k) else scrub(v)) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(scrub(v) for v in config)
    return config


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON) and unknown objects as str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _number(value: Any) -> float | int | None:
    """``value`` as a plain number, or None if it is not one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _number(value.item())
        except (TypeError, ValueError):
            return None
    return None


def run_id(run_dir: str | Path) -> str:
    """The W&B run id of ``run_dir``: stable across restarts of the worker that trains it."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def round_heads(record: dict) -> list[str]:
    """The heads of a round record, in order: its ``heads`` then any others in ``weights``."""
    heads = list(record.get("heads") or {})
    return heads + [h for h in (record.get("weights") or {}) if h not in heads]


def round_values(record: dict) -> dict[str, float]:
    """A round's per-head scalars: ``weights/<head>``, ``G/<head>``, ``dO/<head>``,
    ``ogr/<head>``, leaving out those that are None."""
    heads = record.get("heads") or {}
    weights = record.get("weights") or {}
    out: dict[str, float] = {}
    for h in round_heads(record):
        info = heads.get(h) or {}
        values = {"weights": weights.get(h, info.get("weight")), "G": info.get("G"),
                  "dO": info.get("dO"), "ogr": info.get("ogr")}
        for field in ROUND_FIELDS:
            v = _number(values[field])
            if v is not None:
                out[f"{field}/{h}"] = v
    return out


class RunTracker:
    """Records one run's progress under ``run_dir`` and, with ``spec.backend == "wandb"``,
    to a W&B run named ``name`` with config ``scrub(config)``."""

    def __init__(self, run_dir: str | Path, spec: TrackingSpec, name: str, config: dict):
        self.run_dir = Path(run_dir)
        self.spec = spec
        self.name = name
        self.config = scrub(config)
        self._run = None
        self._defined: set[str] = set()
        self._wandb_failed = False
        self._ended = False

    # -- the observer -----------------------------------------------------------------

    def on_epoch(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl``; log its numbers to W&B against ``epoch``."""
        self._append_jsonl("metrics.jsonl", record)
        data = {}
        for key, value in record.items():
            v = _number(value)
            if v is None:
                continue
            if key.startswith("weights/"):
                key = "epoch_" + key
            data[key] = v
        self._log(data, x="epoch")

    def on_round(self, record: dict) -> None:
        """Append ``record`` to ``rounds.jsonl`` and a row to ``rounds.csv``; log the round's
        scalars to W&B against ``round/epoch``, one point per round."""
        self._append_jsonl("rounds.jsonl", record)
        values = round_values(record)
        self._append_csv(record, values)
        data: dict[str, float] = dict(values)
        data["round/epoch"] = _number(record.get("epoch")) or 0
        data["round/fallback"] = int(bool(record.get("fallback")))
        data["round/starved"] = int(bool(record.get("prediction_head_starved")))
        seconds = _number(record.get("round_seconds"))
        if seconds is not None:
            data["round/seconds"] = seconds
        self._log(data, x="round/epoch")

    def on_end(self, results: dict) -> None:
        """Write the test metrics to the W&B summary and finish the W&B run. Idempotent."""
        if self._ended:
            return
        self._ended = True
        run = self._wandb_run()
        if run is None:
            return
        try:
            test = results.get("test") or {}
            for metric in LABELS:
                v = _number(test.get(metric))
                if v is not None:
                    run.summary[f"test/{metric}"] = v
            for key in ("method", "seed"):
                if key in results:
                    run.summary[key] = _jsonable(scrub(results[key]))
            run.finish()
        except Exception as exc:  # tracking must never take the training run down
            self._wandb_error("finishing", exc)
        self._run = None

    # -- pickling ---------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_run"] = None
        state["_defined"] = set()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- the local mirror -------------------------------------------------------------

    def _append_jsonl(self, filename: str, record: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_jsonable(scrub(record)), allow_nan=False)
        with open(self.run_dir / filename, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _append_csv(self, record: dict, values: dict[str, float]) -> None:
        path = self.run_dir / "rounds.csv"
        fields = None
        if path.exists() and path.stat().st_size > 0:
            with open(path, newline="", encoding="utf-8") as f:
                fields = next(csv.reader(f), None)
        new = not fields
        if new:
            fields = ["epoch"] + [f"{field}/{h}" for h in round_heads(record) for field in ROUND_FIELDS]
        row = {"epoch": record.get("epoch"), **values}
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # -- W&B --------------------------------------------------------------------------

    def _wandb_run(self):
        """The live W&B run, started on first use; None without W&B."""
        if self.spec.backend != "wandb" or self._wandb_failed:
            return None
        if self._run is not None:
            return self._run
        try:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=self.spec.project,
                group=self.spec.group,
                name=self.name,
                config=self.config,
                dir=str(self.run_dir),
                mode=wandb_mode(self.spec.mode),
                id=run_id(self.run_dir),
                resume="allow",
                reinit="create_new",
                settings=wandb.Settings(silent=True, show_info=False, show_warnings=False,
                                        console="off", save_code=False, disable_git=True,
                                        disable_code=True, x_save_requirements=False),
            )
            self._run.define_metric("epoch")
            self._run.define_metric("round/epoch")
            self._defined = {"epoch", "round/epoch"}
        except Exception as exc:
            self._wandb_error("starting", exc)
            self._run = None
        return self._run

    def _log(self, data: dict, x: str) -> None:
        if self._ended:
            return
        run = self._wandb_run()
        if run is None:
            return
        try:
            for key in data:
                if key not in self._defined:
                    run.define_metric(key, step_metric=x)
                    self._defined.add(key)
            run.log(data)
        except Exception as exc:
            self._wandb_error("logging", exc)

    def _wandb_error(self, doing: str, exc: Exception) -> None:
        """A W&B failure turns W&B off for this run; the local mirror goes on."""
        self._wandb_failed = True
        log.warning("W&B failed %s run %r (%s: %s); W&B logging is off for this run, "
                    "the local mirror in %s goes on", doing, self.name, type(exc).__name__, exc, self.run_dir)

"""Record a run's progress: a local mirror (always) and Weights & Biases (optionally).

A :class:`RunTracker` is a run's observer, on the process that drives the run (the
``gblend`` command, or a sweep's trial): the in-process engine calls it directly, the
Ray engine relays rank 0's epoch records and the coordinator's rounds to it. It has
three methods:

- ``on_epoch(record)``: one line of ``run_dir/metrics.jsonl``; on W&B, the record's
  numeric values with ``epoch`` as their x axis.
- ``on_round(record)``: one G-Blend estimation round: a line of ``run_dir/rounds.jsonl``
  and a row of ``run_dir/rounds.csv`` (``epoch`` plus ``weights/<head>``, ``G/<head>``,
  ``dO/<head>``, ``ogr/<head>``); on W&B, those scalars with ``round/epoch`` as their x
  axis, plus ``round/fallback`` and ``round/starved`` (0/1).
- ``on_end(results)``: the test metrics into the W&B summary and one chart of every
  head's weight over the epochs (``weights_chart``, ``wandb.plot.line_series``: the
  paper's Fig. 5a), then the W&B run is finished. Calling it again does nothing.

A W&B run's ``job_type`` is its method and its tags are the method and its modalities,
so that runs of one method filter and group together across compares and sweeps (whose
runs share the ``group`` of their output directory).

W&B steps are not used: every ``log`` call is one history row, and ``define_metric``
gives epoch metrics ``epoch`` and round metrics ``round/epoch`` as their x axes. An
epoch record's ``weights/<head>`` (the weights in effect for that epoch) is logged to
W&B as ``epoch_weights/<head>``, so that the ``weights/<head>`` series holds exactly one
point per estimation round.

Records arrive again when a run resumes from a checkpoint (its epochs after the
checkpoint are trained again, its rounds replayed): the tracker keeps the first record
of each epoch and each round, so the mirror and W&B hold every record once. The W&B run
id is derived from the run directory, so a resumed run continues the same W&B run; an
offline one is written again from the mirror (one offline run per run directory, every
step once), an online one is resumed (``resume="allow"``) and sent only what it lacks.
Everything written passes through :func:`scrub` first: no API key, token, password or
secret is written anywhere.

No torch or ray here; ``wandb`` is imported only when a W&B run is started.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import netrc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core.metrics import LABELS
from ..core.spec import WANDB_MODES, TrackingSpec
from ..storage.location import Location, resolve
from ..storage.rundir import METRICS, ROUNDS, ROUNDS_CSV, WANDB, RunDir

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


def run_id(run_dir: str | Path | Location | RunDir) -> str:
    """The W&B run id of a run directory: the same for every process and every resume."""
    uri = run_dir.uri if isinstance(run_dir, (Location, RunDir)) else resolve(run_dir).uri
    return hashlib.sha1(uri.encode()).hexdigest()[:16]


def run_tags(config: dict) -> list[str]:
    """A run's W&B tags: its method and its modalities (``all`` when it uses every one)."""
    modalities = (config.get("data") or {}).get("modalities") or []
    return [str(config.get("method", "run")), "+".join(modalities) if modalities else "all"]


def weight_series(epochs: list[dict]) -> tuple[list[int], dict[str, list[float]]] | None:
    """The weight of each head in force at every epoch, from the mirror's epoch records:
    ``(epochs, {head: weights})``; None when the records hold no weights."""
    heads = [k.partition("/")[2] for k in (epochs[0] if epochs else {}) if k.startswith("weights/")]
    rows = sorted((r for r in epochs if all(_number(r.get(f"weights/{h}")) is not None for h in heads)),
                  key=lambda r: r["epoch"])
    if not heads or not rows:
        return None
    return [int(r["epoch"]) for r in rows], {h: [float(r[f"weights/{h}"]) for r in rows] for h in heads}


def wandb_line_series(epochs: list[int], heads: dict[str, list[float]]):
    """W&B's line chart of the heads' weights over the epochs."""
    import wandb

    return wandb.plot.line_series(xs=epochs, ys=list(heads.values()), keys=list(heads),
                                  title="G-Blend weights per head", xname="epoch")


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
    """Records one run's progress in its run directory and, with ``spec.backend ==
    "wandb"``, in a W&B run named ``name`` with config ``scrub(config)``."""

    def __init__(self, run_dir: str | Path | RunDir, spec: TrackingSpec, name: str, config: dict):
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.spec = spec
        self.name = name
        self.config = scrub(config)
        self._run = None
        self._defined: set[str] = set()
        self._wandb_failed = False
        self._ended = False
        self._staging: Path | None = None
        # what an earlier attempt of this run already recorded (a resume): never twice
        self._epochs = self.run.read_jsonl(METRICS)
        self._rounds = self.run.read_jsonl(ROUNDS)

    @property
    def run_dir(self) -> Path | Location:
        return self.run.location.local_path or self.run.location

    # -- the observer -----------------------------------------------------------------

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None:
        """Add the checkpoint's epochs and rounds that an interruption kept from the mirror."""
        for record in rounds:
            self.on_round(record)
        for record in history:
            self.on_epoch(record)

    def on_epoch(self, record: dict) -> None:
        """Add ``record`` to ``metrics.jsonl``; log its numbers to W&B against ``epoch``.
        An epoch already recorded is left as it was."""
        if any(r.get("epoch") == record.get("epoch") for r in self._epochs):
            return
        self._wandb_run()  # started (a resumed offline run replayed) before this record joins the mirror
        self._epochs.append(_jsonable(scrub(record)))
        self.run.write_jsonl(METRICS, self._epochs)
        self._log(*_epoch_point(record))

    def on_round(self, record: dict) -> None:
        """Add ``record`` to ``rounds.jsonl`` and a row to ``rounds.csv``; log the round's
        scalars to W&B against ``round/epoch``, one point per round. A round already
        recorded is left as it was."""
        if any(r.get("epoch") == record.get("epoch") for r in self._rounds):
            return
        self._wandb_run()
        self._rounds.append(_jsonable(scrub(record)))
        self.run.write_jsonl(ROUNDS, self._rounds)
        (self.run / ROUNDS_CSV).write_text(rounds_csv(self._rounds))
        self._log(*_round_point(record))

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
            chart = weight_series(self._epochs)
            if chart is not None:
                epochs, heads = chart
                run.log({"weights_chart": wandb_line_series(epochs, heads)})
            run.finish()
            if self._staging is not None:  # W&B writes to a local disk only: copy its files over
                (self.run / WANDB).mkdir().upload_from(self._staging / WANDB)
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

    # -- W&B --------------------------------------------------------------------------

    def _wandb_dir(self) -> Path:
        local = self.run.location.local_path
        if local is not None:
            return local
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="gblend-wandb-"))
        return self._staging

    def _wandb_run(self):
        """The live W&B run, started on first use; None without W&B. A resumed offline run
        starts its offline files over and logs the mirror's records into them first."""
        if self.spec.backend != "wandb" or self._wandb_failed:
            return None
        if self._run is not None:
            return self._run
        try:
            import wandb

            mode = wandb_mode(self.spec.mode)
            root = self._wandb_dir()
            ident = run_id(self.run)
            replay = mode == "offline"
            if replay:  # an earlier attempt's offline files: written again below, whole
                for old in (root / WANDB).glob(f"offline-run-*-{ident}"):
                    shutil.rmtree(old, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            self._run = _init_retrying(wandb,
                project=self.spec.project,
                group=self.spec.group,
                name=self.name,
                job_type=str(self.config.get("method", "run")),
                tags=run_tags(self.config),
                config=self.config,
                dir=str(root),
                mode=mode,
                id=ident,
                resume="allow",
                reinit="create_new",
                settings=_settings(wandb),
            )
            self._run.define_metric("epoch")
            self._run.define_metric("round/epoch")
            self._defined = {"epoch", "round/epoch"}
            if replay:
                for data, x in _replay(self._epochs, self._rounds):
                    self._send(data, x)
        except Exception as exc:
            self._wandb_error("starting", exc)
            self._run = None
        return self._run

    def _log(self, data: dict, x: str) -> None:
        if not self._ended and self._wandb_run() is not None:
            self._send(data, x)

    def _send(self, data: dict, x: str) -> None:
        try:
            for key in data:
                if key not in self._defined:
                    self._run.define_metric(key, step_metric=x)
                    self._defined.add(key)
            self._run.log(data)
        except Exception as exc:
            self._wandb_error("logging", exc)

    def _wandb_error(self, doing: str, exc: Exception) -> None:
        """A W&B failure turns W&B off for this run; the local mirror goes on."""
        self._wandb_failed = True
        log.warning("W&B failed %s run %r (%s: %s); W&B logging is off for this run, "
                    "the local mirror in %s goes on", doing, self.name, type(exc).__name__, exc, self.run)


def _settings(wandb):
    return wandb.Settings(silent=True, show_info=False, show_warnings=False, console="off", save_code=False,
                          disable_git=True, init_timeout=300, disable_code=True, x_save_requirements=False)


def log_sweep_summary(out: Location, rows: list[dict], goal: tuple[str, str] | None, spec: TrackingSpec,
                      group: str, kind: str = "sweep") -> None:
    """A sweep's W&B summary: a run of its own in the sweep's group (job type ``kind``)
    with every trial as a row of the ``trials`` table and the best trial by the sweep's
    metric — its overrides, its validation value and its test metrics — in the run's
    summary (``best/...``). Its files go to ``OUT/wandb``. A W&B failure is a warning."""
    if spec.backend != "wandb" or not rows:
        return
    staging = None if out.local_path is not None else Path(tempfile.mkdtemp(prefix="gblend-wandb-"))
    root = out.local_path if staging is None else staging
    try:
        import wandb

        keys = sorted({k for r in rows for k in r["overrides"]})
        tests = sorted({k for r in rows for k in r.get("test", {})})
        metric = goal[0] if goal else None
        columns = ["run_dir", "status", *keys, *([metric] if metric else []), *(f"test/{k}" for k in tests), "best"]
        data = [[r["run_dir"], r["status"], *(_cell(r["overrides"].get(k)) for k in keys),
                 *([_cell(r.get(metric))] if metric else []), *(_cell(r.get("test", {}).get(k)) for k in tests),
                 bool(r.get("best"))] for r in rows]
        root.mkdir(parents=True, exist_ok=True)
        run = _init_retrying(wandb, project=spec.project, group=group, name=f"{group}-{kind}", job_type=kind,
                             tags=[kind, "summary"], dir=str(root), mode=wandb_mode(spec.mode),
                             id=hashlib.sha1(f"{out.uri}#{kind}".encode()).hexdigest()[:16], resume="allow",
                             reinit="create_new", settings=_settings(wandb),
                             config={"goal": list(goal) if goal else None, "trials": len(rows)})
        run.log({"trials": wandb.Table(columns=columns, data=data)})
        counts = {f"trials/{status}": sum(r["status"] == status for r in rows) for status in ("ok", "stopped", "failed")}
        best = next((r for r in rows if r.get("best")), None)
        if best is not None:
            counts.update({"best/run_dir": best["run_dir"], **{f"best/{k}": v for k, v in best["overrides"].items()},
                           **({f"best/{metric}": best.get(metric)} if metric else {}),
                           **{f"best/test/{k}": v for k, v in best.get("test", {}).items()}})
        run.summary.update(counts)
        run.finish()
        if staging is not None:
            (out / WANDB).mkdir().upload_from(staging / WANDB)
    except Exception as exc:  # tracking never fails a sweep
        log.warning("W&B failed logging the %s summary of %s (%s: %s); sweep.json has it", kind, out.uri,
                    type(exc).__name__, exc)


def _cell(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _init_retrying(wandb, attempts: int = 12, pause_s: float = 2.5, **kwargs):
    """``wandb.init``, again for a while if the run's id is still held: the W&B service of a
    process that was killed (a run resumed right after SIGKILL) lets go of it only when it
    notices its parent is gone, a few seconds later."""
    for attempt in range(attempts):
        try:
            return wandb.init(**kwargs)
        except Exception as err:  # wandb's errors share no base class worth naming
            if "in use" not in str(err) or attempt == attempts - 1:
                raise
            log.info("W&B run id %s is still held (%s); retrying in %g s", kwargs.get("id"), err, pause_s)
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def _epoch_point(record: dict) -> tuple[dict, str]:
    """An epoch record as W&B numbers against ``epoch``."""
    data = {}
    for key, value in record.items():
        v = _number(value)
        if v is None:
            continue
        data["epoch_" + key if key.startswith("weights/") else key] = v
    return data, "epoch"


def _round_point(record: dict) -> tuple[dict, str]:
    """A round record as W&B numbers against ``round/epoch``."""
    data: dict[str, float] = dict(round_values(record))
    data["round/epoch"] = _number(record.get("epoch")) or 0
    data["round/fallback"] = int(bool(record.get("fallback")))
    data["round/starved"] = int(bool(record.get("prediction_head_starved")))
    seconds = _number(record.get("round_seconds"))
    if seconds is not None:
        data["round/seconds"] = seconds
    return data, "round/epoch"


def _replay(epochs: list[dict], rounds: list[dict]) -> list[tuple[dict, str]]:
    """The recorded epochs and rounds in the order a run logs them: the round at epoch e
    before the record of epoch e + 1."""
    points = [((r.get("epoch") or 0, 0), _round_point(r)) for r in rounds]
    points += [((e.get("epoch") or 0, 1), _epoch_point(e)) for e in epochs]
    # the round at epoch e precedes the training of epoch e + 1, whose record says e + 1:
    # order by (e, 0) for rounds, (epoch - 1, 1) for epochs
    return [point for _, point in sorted(points, key=lambda p: (p[0][0] - p[0][1], p[0][1]))]


def rounds_csv(rounds: list[dict]) -> str:
    """``rounds.csv``: ``epoch`` then ``weights/<head>``, ``G/<head>``, ``dO/<head>`` and
    ``ogr/<head>`` per head (the first round's heads), one row per round."""
    if not rounds:
        return ""
    fields = ["epoch"] + [f"{field}/{h}" for h in round_heads(rounds[0]) for field in ROUND_FIELDS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in rounds:
        writer.writerow({"epoch": record.get("epoch"), **round_values(record)})
    return out.getvalue()

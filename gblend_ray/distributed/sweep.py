"""Sweeps: a Ray Tune experiment whose trials are whole runs (Train inside Tune).

A search space is a run config plus a ``sweep:`` section::

    sweep:
      grid:                      # every combination
        method: [uni:video, naive, gblend:online]
        seed: [0, 1, 2]
      cases:                     # listed combinations, crossed with the grid
        - {data.modalities: [video], method: uni:video}
        - {data.modalities: [video, audio], method: gblend:online}
      sample:                    # drawn num_samples times (with each grid point)
        optim.lr: {loguniform: [0.01, 0.1]}
      num_samples: 1
      max_concurrent_trials: 2   # default: what the cluster holds
      engine: ray                # each trial trains on Ray (ray) or in its own process (inline)
      metric: val/top1           # with mode, search and scheduler: what the sweep optimises
      mode: max                  #   and how (``distributed.search``)

Each trial writes a run directory ``OUT/trials/<overrides>/`` (``results.json``,
``trajectory.json``, ``config.yaml``, or ``error.txt`` when it failed) and reports each
epoch's validation metrics to Tune as it trains, its test metrics once at the end. A
failing trial is recorded as failed and the others go on; one the scheduler stopped
early is recorded as stopped. ``resume`` continues an interrupted sweep: Tune
restores its experiment, and a trial whose run directory already holds results returns
them instead of training again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import queue
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from ray import tune

from ..core.plan import FUSED
from ..storage.location import Location, resolve
from ..storage.rundir import ERROR, RunDir
from ..training.runner import run_inline
from .cluster import stable_resources
from .errors import describe_failure, root_cause
from .ray_runner import run_on_ray
from .search import best_trial, epoch_metrics, final_test_metrics, objective, scheduler, searcher

PrepareRun = Callable[[dict, str, bool], Any]
"""Builds a trial's spec from its overrides and claims its run directory (a URI),
resuming what it holds when told: returns a prepared run (``.spec``, ``.run``,
``.claim``, ``.observer``, ``.resume``, ``.results()``). Injected by the interfaces
layer (``experiment.prepare_trial``)."""

SWEEP_ENGINES = ("ray", "inline")
SWEEP_KEYS = ("grid", "cases", "sample", "num_samples", "max_concurrent_trials", "engine", "metric", "mode",
              "search", "scheduler")
OWN_FAILURES = (FloatingPointError, ValueError)
"""A trial's own failures: divergence, and the ValueErrors that name a bad setting, file or
resource (config, data, split, checkpoint, run directory, resource errors). Not retried."""
RETRIES = 2
"""Tune retries of a trial that failed for any other reason (a lost node, a killed process)."""
TUNE, TRIALS, SWEEP_JSON = "tune", "trials", "sweep.json"

_SAMPLERS = {"choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform,
             "randint": tune.randint}
EXPERIMENT = "sweep"
_CASE = "case"


class SweepError(ValueError):
    pass


def param_space(sweep: dict) -> dict:
    """Tune's param space from a ``sweep:`` section (keys are dotted config keys)."""
    unknown = set(sweep) - set(SWEEP_KEYS)
    if unknown:
        raise SweepError(f"sweep: unknown key(s) {sorted(unknown)}; expected {', '.join(SWEEP_KEYS)}")
    space: dict = {}
    cases = sweep.get("cases")
    if cases is not None:
        if not (isinstance(cases, list) and cases and all(isinstance(c, dict) and c for c in cases)):
            raise SweepError(f"sweep.cases: expected a non-empty list of mappings of config keys, got {cases!r}")
        space[_CASE] = tune.grid_search(cases)
    for key, values in (sweep.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r}")
        space[key] = tune.grid_search(values)
    for key, how in (sweep.get("sample") or {}).items():
        if not (isinstance(how, dict) and len(how) == 1 and next(iter(how)) in _SAMPLERS):
            raise SweepError(f"sweep.sample.{key}: expected one of {sorted(_SAMPLERS)} with its arguments, "
                             f"e.g. {{loguniform: [0.01, 0.1]}}, got {how!r}")
        (kind, args), = how.items()
        space[key] = _SAMPLERS[kind](args) if kind == "choice" else _SAMPLERS[kind](*args)
    if not space:
        raise SweepError("sweep: needs a grid or a sample section with at least one key")
    return space


def trial_overrides(config: dict) -> dict:
    """A trial's dotted overrides: its case's keys, then its grid and sampled values."""
    config = dict(config)
    return {**config.pop(_CASE, {}), **config}


TrialDir = Callable[[dict], str]
"""Where a trial's run directory goes, relative to the sweep's directory, from its overrides."""


def trial_name(overrides: dict) -> str:
    """A readable, stable directory name for a trial's overrides."""
    text = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:120] + "-" + digest


def default_trial_dir(overrides: dict) -> str:
    """``trials/<overrides>``: a sweep's trials side by side."""
    return f"{TRIALS}/{trial_name(overrides)}"


class _TuneEpochs:
    """The trial's run observer, which also reports each epoch's validation metrics to
    Tune, once per epoch. ``tune.report`` waits for Tune to take the result, so a thread
    of its own sends them: the run (and, on the Ray engine, the driver's event relay) goes
    on meanwhile. A scheduler that stops the trial ends it there, and Tune then ends the
    trial's process. The last epoch's metrics go out with the test metrics instead (after
    ``close``): ASHA stops every trial that reaches ``max_t``, and the trial's results
    would then never be reported."""

    def __init__(self, inner, prediction_head: str, epochs: int):
        self.inner, self.head, self.epochs, self.last = inner, prediction_head, epochs, None
        self.reported = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._send, name="gblend-tune-reports", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        while (metrics := self._queue.get()) is not None:
            tune.report(metrics)

    def close(self) -> None:
        """Every epoch's report sent (or the trial stopped): the final report may follow."""
        self._queue.put(None)
        self._thread.join()

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None:
        if history:
            self.last = epoch_metrics(history[-1], self.head)
        self.reported = max(self.reported, epoch)
        if self.inner is not None:
            self.inner.on_resume(epoch, history, rounds)

    def on_epoch(self, record: dict) -> None:
        if self.inner is not None:
            self.inner.on_epoch(record)
        if int(record["epoch"]) > self.reported:
            self.reported = int(record["epoch"])
            self.last = epoch_metrics(record, self.head)
            if self.reported < self.epochs:
                self._queue.put(dict(self.last))

    def on_round(self, record: dict) -> None:
        if self.inner is not None:
            self.inner.on_round(record)

    def on_end(self, results: dict) -> None:
        if self.inner is not None:
            self.inner.on_end(results)


def sweep_trial(config: dict, prepare: PrepareRun, out: str, engine: str, metric: str | None = None,
                trial_dir: TrialDir = default_trial_dir) -> None:
    """One trial: one whole run in ``OUT/trials/<overrides>/`` (or where ``trial_dir`` says). A trial whose run finished
    before (a resumed sweep) reports its results without training; one that was
    interrupted, or that Tune retries, resumes its run from its last boundary
    checkpoint. Reports every epoch's validation metrics, then the test metrics (with the
    last epoch's validation metrics beside them, so that the sweep's ``metric`` is in
    every report; NaN for a trial that failed)."""
    overrides = trial_overrides(config)
    run_trial(prepare(overrides, (resolve(out) / trial_dir(overrides)).uri, True), engine, metric)


def run_trial(prepared, engine: str, metric: str | None = None) -> None:
    """The body of a Tune trial that is one whole run, already prepared: train it (or
    read it back when it finished before), reporting to Tune as ``sweep_trial`` says."""
    method = prepared.spec.method
    head = method.partition(":")[2] if method.startswith("uni:") else FUSED
    if prepared.claim == "finished":  # never run twice
        results = prepared.results()
        last = epoch_metrics(results["history"][-1], head) if results.get("history") else {}
        tune.report({**last, **final_test_metrics(results), "reused": 1})
        return
    observer = _TuneEpochs(prepared.observer, head, prepared.spec.train.epochs)
    try:
        run = run_on_ray if engine == "ray" else run_inline
        results = run(prepared.spec, prepared.run, observer=observer, resume=prepared.resume)
    except Exception as err:
        observer.close()
        cause = describe_failure(err)
        prepared.run.fail(cause, err)
        if isinstance(root_cause(err), OWN_FAILURES):
            # The trial's own config failed (it diverged, its data or resources are wrong):
            # reported as failed, not raised, so Tune does not retry what would fail again.
            tune.report({**(observer.last or {}), **({metric: math.nan} if metric else {}), "failed": 1,
                         "error": cause})
            return
        raise  # a lost node, a killed process: Tune retries the trial (it resumes its run)
    finally:
        _close_wandb()
    observer.close()
    last = epoch_metrics(results["history"][-1], head) if results.get("history") else (observer.last or {})
    tune.report({**last, **final_test_metrics(results), "reused": 0, "seconds": float(results["seconds"])})


def _close_wandb() -> None:
    """Stop this trial process's W&B service now. Left to its exit hook, it runs after
    Ray has torn the process down and prints a "Connection lost" traceback per trial."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        try:
            wandb.teardown()
        except Exception:  # tracking never fails a trial
            pass


class TrialLines(tune.Callback):
    """The sweep's own terminal lines: one per finished or failed trial, with the count
    (``label`` names a trial from its overrides)."""

    def __init__(self, total: int, label: Callable[[dict], str] = trial_name, what: str = "sweep"):
        self.total, self.done, self.failed, self.stopped = total, 0, 0, 0
        self.label, self.what = label, what
        self.stream = sys.stdout  # the terminal, whatever Tune's own prints are sent to

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the experiment
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stdout)

    def _say(self, trial, what: str) -> None:
        ended = self.done + self.failed + self.stopped
        stopped = f", {self.stopped} stopped" if self.stopped else ""
        self.stream.write(f"[{self.what} {ended}/{self.total}: {self.done} ok, {self.failed} failed{stopped}] "
                          f"{self.label(trial_overrides(trial.config or {}))}: {what}\n")
        self.stream.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("failed"):
            self.failed += 1
            self._say(trial, f"FAILED: {trial.last_result.get('error')}")
            return
        self.done += 1
        metrics = {k: v for k, v in (trial.last_result or {}).items() if k.startswith("test/")}
        if not metrics:  # the scheduler stopped it
            self.done -= 1
            self.stopped += 1
            self._say(trial, f"stopped early at epoch {(trial.last_result or {}).get('epoch', '?')}")
            return
        seconds = (trial.last_result or {}).get("seconds")
        took = " (finished before)" if (trial.last_result or {}).get("reused") else f"  ({seconds:.1f} s)" if seconds else ""
        self._say(trial, (", ".join(f"test {k[5:]} {100 * v:.1f}%" for k, v in metrics.items()
                                    if k != "test/loss") or "done") + took)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._say(trial, "FAILED")


def trial_count(sweep: dict) -> int:
    """How many trials the sweep's grid, cases and samples make."""
    n = len(sweep.get("cases") or [None]) * int(sweep.get("num_samples", 1))
    for values in (sweep.get("grid") or {}).values():
        n *= len(values) if isinstance(values, list) else 1
    return n


def check_sweep_dir(out: Location, resume: bool, overwrite: bool) -> None:
    """A sweep directory holds one sweep: a second one into it is refused unless it
    resumes the first (``resume``) or replaces it (``overwrite``)."""
    held = [n for n in (TUNE, TRIALS, SWEEP_JSON) if (out / n).exists()]
    if not held or resume:
        return
    if overwrite:
        for name in held:
            (out / name).remove()
        return
    raise SweepError(f"{out.uri} already holds a sweep ({', '.join(held)}): --resume continues it, "
                     "--overwrite removes it and starts this one, or choose another --out")


def concurrent_trials(sweep: dict, per_trial: dict[str, float], cluster: dict[str, float]) -> int:
    """Trials at once: the space's ``max_concurrent_trials``, else as many as the cluster's
    limiting resource holds (GPUs for runs that train on GPUs, CPUs otherwise)."""
    if sweep.get("max_concurrent_trials"):
        return int(sweep["max_concurrent_trials"])
    fits = [int(cluster.get(k, 0.0) // v) for k, v in per_trial.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def check_sweep(sweep: dict, epochs: int) -> tuple[dict, tuple[str, str] | None]:
    """The sweep section checked before anything starts: Tune's param space and the
    objective (``(metric, mode)`` or None). Raises SweepError naming the key."""
    engine = sweep.get("engine", "ray")
    if engine not in SWEEP_ENGINES:
        raise SweepError(f"sweep.engine: expected one of {', '.join(SWEEP_ENGINES)}, got {engine!r}")
    space = param_space(sweep)
    try:
        goal = objective(sweep)
        searcher(sweep, goal, 1)
        scheduler(sweep, goal, epochs)
    except ValueError as err:
        raise SweepError(str(err)) from err
    return space, goal


def _reuse_actors(engine: str, sched) -> bool:
    """An inline trial's process is the in-process runner's: reused, the next trial skips a
    process start and torch's import (runs one after another in one process are what
    ``--inline`` does anyway). A Ray trial's process only waits on its run, and with an
    early-stopping scheduler a reused actor lost stopped trials' results in Ray 2.60, so
    neither of those is reused."""
    return engine == "inline" and sched is None


def run_sweep(sweep: dict, prepare: PrepareRun, out: str | Location, *, per_trial: dict[str, float],
              epochs: int, resume: bool = False, overwrite: bool = False, verbose: int = 0,
              trial_dir: TrialDir = default_trial_dir, lines: TrialLines | None = None) -> list[dict]:
    """Run (or resume) the sweep; write ``OUT/sweep.json``; return one row per trial (the
    best by the sweep's metric marked ``best``). ``per_trial`` is what one trial's run
    holds at once (its trainer and probe trials on the Ray engine, its process on the
    inline one); ``epochs`` is the runs' ``train.epochs`` (ASHA's default ``max_t``).
    ``trial_dir`` places each trial's run directory, ``lines`` prints its terminal lines
    (a compare's runs are trials too: ``interfaces.compare``)."""
    import ray

    out = resolve(out)
    engine = sweep.get("engine", "ray")
    space, goal = check_sweep(sweep, epochs)
    check_sweep_dir(out, resume, overwrite)
    concurrent = concurrent_trials(sweep, per_trial, ray.cluster_resources())
    metric = goal[0] if goal else None
    # An inline trial trains in its own Tune actor and holds its CPUs; a Ray trial holds
    # none itself (its trainer workers and probe trials ask for theirs), so that nested
    # runs cannot starve each other as long as `concurrent` runs fit in the cluster.
    resources = dict(per_trial) if engine == "inline" else {"CPU": 0.001, **stable_resources()}
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, prepare=prepare, out=out.uri, engine=engine, metric=metric,
                             trial_dir=trial_dir), resources)
    storage = out / TUNE
    path = (storage / EXPERIMENT).path
    lines = lines or TrialLines(trial_count(sweep))
    if resume and tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, storage_filesystem=storage.fs)
        inner = getattr(tuner, "_local_tuner", None)  # restore brings back the old run's callbacks,
        if inner is not None:  # counts and all: count this run's trials afresh
            inner._run_config.callbacks = [lines]
    else:
        sched = scheduler(sweep, goal, epochs)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(num_samples=int(sweep.get("num_samples", 1)),
                                        max_concurrent_trials=concurrent, reuse_actors=_reuse_actors(engine, sched),
                                        search_alg=searcher(sweep, goal, concurrent),
                                        scheduler=sched),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage.path, storage_filesystem=storage.fs,
                                      verbose=verbose, callbacks=[lines],
                                      failure_config=tune.FailureConfig(max_failures=RETRIES, fail_fast=False)),
        )
    with _tune_prints(quiet=not verbose):
        grid = tuner.fit()
    rows = []
    for result in grid:
        overrides = trial_overrides(result.config or {})
        run = RunDir(out / trial_dir(overrides))
        metrics = result.metrics or {}
        failed = result.error is not None or bool(metrics.get("failed"))
        tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
        status = "failed" if failed else "ok" if tested else "stopped"
        if status == "stopped" and run.identity() is not None:  # the scheduler ended it: not a crash
            run.mark("stopped", stopped_at_epoch=metrics.get("epoch"))
        rows.append({
            "overrides": overrides,
            "run_dir": run.uri,
            "status": status,
            "error": _trial_error(run, result.error) if failed else None,
            "epochs": metrics.get("epoch"),
            **({metric: metrics.get(metric)} if metric else {}),
            "test": {k[5:]: v for k, v in tested.items()},
            "best": False,
        })
    best = best_trial(rows, goal) if goal else None
    if best is not None:
        best["best"] = True
    (out / SWEEP_JSON).write_text(json.dumps(rows, indent=2, default=str))
    return rows


class _ToLog(io.TextIOBase):
    """A stream whose lines go to a logger (``ray.tune``: with ``ray_output``, the run's log)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self._pending = logger, ""

    def write(self, text: str) -> int:
        self._pending += text
        *done, self._pending = self._pending.split("\n")
        for line in done:
            if line.strip():
                self.logger.info(line)
        return len(text)


def _tune_prints(quiet: bool):
    """Tune prints its experiment's heading (searcher, scheduler, paths) to standard output
    whatever its verbosity: in a quiet sweep those lines go to the log."""
    return contextlib.redirect_stdout(_ToLog(logging.getLogger("ray.tune"))) if quiet else contextlib.nullcontext()


def _trial_error(run: RunDir, error: BaseException | None) -> str:
    """A failed trial's cause: the first line of its ``error.txt``, else Tune's error's."""
    if run.exists(ERROR):
        first = run.location.join(ERROR).read_text().strip().splitlines()
        if first:
            return first[0]
    return describe_failure(error) if error is not None else "failed (no error.txt)"

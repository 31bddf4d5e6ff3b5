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

Each trial writes a run directory ``OUT/trials/<overrides>/`` (``results.json``,
``trajectory.json``, ``config.yaml``, or ``error.txt`` when it failed). A failing trial is
recorded as failed and the others go on. ``resume`` continues an interrupted sweep: Tune
restores its experiment, and a trial whose run directory already holds results returns
them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from ray import tune

from ..storage.location import Location, resolve
from ..storage.rundir import ERROR, RunDir
from ..training.runner import run_inline
from .cluster import stable_resources
from .errors import describe_failure, root_cause
from .ray_runner import run_on_ray

PrepareRun = Callable[[dict, str, bool], Any]
"""Builds a trial's spec from its overrides and claims its run directory (a URI),
resuming what it holds when told: returns a prepared run (``.spec``, ``.run``,
``.claim``, ``.observer``, ``.resume``, ``.results()``). Injected by the interfaces
layer (``experiment.prepare_trial``)."""

SWEEP_ENGINES = ("ray", "inline")
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
    unknown = set(sweep) - {"grid", "cases", "sample", "num_samples", "max_concurrent_trials", "engine"}
    if unknown:
        raise SweepError(f"sweep: unknown key(s) {sorted(unknown)}; expected grid, cases, sample, num_samples, "
                         "max_concurrent_trials, engine")
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


def trial_name(overrides: dict) -> str:
    """A readable, stable directory name for a trial's overrides."""
    text = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:120] + "-" + digest


def sweep_trial(config: dict, prepare: PrepareRun, out: str, engine: str) -> None:
    """One trial: one whole run in ``OUT/trials/<overrides>/``. A trial whose run finished
    before (a resumed sweep) reports its results without training; one that was
    interrupted, or that Tune retries, resumes its run from its last boundary
    checkpoint. Reports its test metrics to Tune."""
    overrides = trial_overrides(config)
    prepared = prepare(overrides, (resolve(out) / TRIALS / trial_name(overrides)).uri, True)
    if prepared.claim == "finished":  # never run twice
        tune.report({**_test_metrics(prepared.results()), "reused": 1})
        return
    try:
        run = run_on_ray if engine == "ray" else run_inline
        results = run(prepared.spec, prepared.run, observer=prepared.observer, resume=prepared.resume)
    except Exception as err:
        cause = describe_failure(err)
        prepared.run.fail(cause, err)
        if isinstance(root_cause(err), OWN_FAILURES):
            # The trial's own config failed (it diverged, its data or resources are wrong):
            # reported as failed, not raised, so Tune does not retry what would fail again.
            tune.report({"failed": 1, "error": cause})
            return
        raise  # a lost node, a killed process: Tune retries the trial (it resumes its run)
    finally:
        _close_wandb()
    tune.report({**_test_metrics(results), "reused": 0})


def _test_metrics(results: dict) -> dict[str, float]:
    """What Tune records of a trial: every test metric (top-1, video top-1, mAP, ...)."""
    return {f"test_{k}": float(v) for k, v in results["test"].items()}


def _close_wandb() -> None:
    """Stop this trial process's W&B service now. Left to its exit hook, it runs after
    Ray has torn the process down and prints a "Connection lost" traceback per trial."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        try:
            wandb.teardown()
        except Exception:  # tracking never fails a trial
            pass


class _Lines(tune.Callback):
    """The sweep's own terminal lines: one per finished or failed trial, with the count."""

    def __init__(self, total: int):
        self.total, self.done, self.failed = total, 0, 0

    def _say(self, trial, what: str) -> None:
        print(f"[sweep {self.done + self.failed}/{self.total}: {self.done} ok, {self.failed} failed] "
              f"{trial_name(trial_overrides(trial.config or {}))}: {what}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("failed"):
            self.failed += 1
            self._say(trial, f"FAILED: {trial.last_result.get('error')}")
            return
        self.done += 1
        metrics = {k: v for k, v in (trial.last_result or {}).items() if k.startswith("test_")}
        self._say(trial, ", ".join(f"{k[5:]} {100 * v:.1f}%" for k, v in metrics.items() if k != "test_loss")
                  or "done")

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


def run_sweep(sweep: dict, prepare: PrepareRun, out: str | Location, *, per_trial: dict[str, float],
              resume: bool = False, overwrite: bool = False, verbose: int = 0) -> list[dict]:
    """Run (or resume) the sweep; write ``OUT/sweep.json``; return one row per trial.
    ``per_trial`` is what one trial's run holds at once (its trainer and probe trials on
    the Ray engine, its process on the inline one)."""
    import ray

    out = resolve(out)
    engine = sweep.get("engine", "ray")
    if engine not in SWEEP_ENGINES:
        raise SweepError(f"sweep.engine: expected one of {', '.join(SWEEP_ENGINES)}, got {engine!r}")
    space = param_space(sweep)
    check_sweep_dir(out, resume, overwrite)
    concurrent = concurrent_trials(sweep, per_trial, ray.cluster_resources())
    # An inline trial trains in its own Tune actor and holds its CPUs; a Ray trial holds
    # none itself (its trainer workers and probe trials ask for theirs), so that nested
    # runs cannot starve each other as long as `concurrent` runs fit in the cluster.
    resources = dict(per_trial) if engine == "inline" else {"CPU": 0.001, **stable_resources()}
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, prepare=prepare, out=out.uri, engine=engine), resources)
    storage = out / TUNE
    path = (storage / EXPERIMENT).path
    lines = _Lines(trial_count(sweep))
    if resume and tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, storage_filesystem=storage.fs)
        inner = getattr(tuner, "_local_tuner", None)  # restore brings back the old run's callbacks,
        if inner is not None:  # counts and all: count this run's trials afresh
            inner._run_config.callbacks = [lines]
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(num_samples=int(sweep.get("num_samples", 1)),
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage.path, storage_filesystem=storage.fs,
                                      verbose=verbose, callbacks=[lines],
                                      failure_config=tune.FailureConfig(max_failures=RETRIES, fail_fast=False)),
        )
    grid = tuner.fit()
    rows = []
    for result in grid:
        overrides = trial_overrides(result.config or {})
        run = RunDir(out / TRIALS / trial_name(overrides))
        failed = result.error is not None or bool((result.metrics or {}).get("failed"))
        rows.append({
            "overrides": overrides,
            "run_dir": run.uri,
            "status": "failed" if failed else "ok",
            "error": _trial_error(run, result.error) if failed else None,
            "test_top1": (result.metrics or {}).get("test_top1"),
        })
    (out / SWEEP_JSON).write_text(json.dumps(rows, indent=2, default=str))
    return rows


def _trial_error(run: RunDir, error: BaseException | None) -> str:
    """A failed trial's cause: the first line of its ``error.txt``, else Tune's error's."""
    if run.exists(ERROR):
        first = run.location.join(ERROR).read_text().strip().splitlines()
        if first:
            return first[0]
    return describe_failure(error) if error is not None else "failed (no error.txt)"

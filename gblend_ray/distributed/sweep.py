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
import traceback
from collections.abc import Callable
from pathlib import Path

from ray import tune

from ..core.spec import RunSpec
from ..training.assembly import RunObserver
from ..training.runner import run_inline
from .ray_runner import run_on_ray

# Builds a trial's spec from its overrides and prepares its run directory (writes the
# config); returns the spec and the run's observer. Injected by the interfaces layer.
PrepareRun = Callable[[dict, Path], tuple[RunSpec, RunObserver | None]]

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
    """One trial: one whole run. Reports its test metrics to Tune."""
    overrides = trial_overrides(config)
    run_dir = Path(out) / "trials" / trial_name(overrides)
    done = run_dir / "results.json"
    if done.exists():  # finished before the sweep was interrupted: never run twice
        results = json.loads(done.read_text())
        tune.report({**_test_metrics(results), "reused": 1})
        return
    (run_dir / "error.txt").unlink(missing_ok=True)
    spec, observer = prepare(overrides, run_dir)
    try:
        run = run_on_ray if engine == "ray" else run_inline
        results = run(spec, run_dir, observer=observer)
    except Exception as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        raise
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


def run_sweep(sweep: dict, prepare: PrepareRun, out: str | Path, *, cpus_per_trial: float,
              resume: bool = False, verbose: int = 1) -> list[dict]:
    """Run (or resume) the sweep; write ``OUT/sweep.json``; return one row per trial."""
    import ray

    out = Path(out).resolve()
    engine = sweep.get("engine", "ray")
    if engine not in ("ray", "inline"):
        raise SweepError(f"sweep.engine: expected ray or inline, got {engine!r}")
    space = param_space(sweep)
    total_cpus = ray.cluster_resources().get("CPU", 1.0)
    concurrent = sweep.get("max_concurrent_trials") or max(1, int(total_cpus // max(cpus_per_trial, 1e-9)))
    # An inline trial trains in its own Tune actor and holds its CPUs; a Ray trial holds
    # none itself (its trainer workers and probe trials ask for theirs), so that nested
    # runs cannot starve each other as long as `concurrent` runs fit in the cluster.
    resources = {"CPU": cpus_per_trial} if engine == "inline" else {"CPU": 0.001}
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, prepare=prepare, out=str(out), engine=engine), resources)
    path = out / "tune" / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(num_samples=int(sweep.get("num_samples", 1)),
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out / "tune"), verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
        )
    grid = tuner.fit()
    rows = []
    for result in grid:
        overrides = trial_overrides(result.config or {})
        rows.append({
            "overrides": overrides,
            "run_dir": str(out / "trials" / trial_name(overrides)),
            "status": "failed" if result.error is not None else "ok",
            "error": str(result.error).splitlines()[0] if result.error is not None else None,
            "test_top1": (result.metrics or {}).get("test_top1"),
        })
    (out / "sweep.json").write_text(json.dumps(rows, indent=2, default=str))
    return rows

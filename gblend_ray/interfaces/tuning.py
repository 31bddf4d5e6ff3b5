"""``gblend compare SPACE --tune``: a fair comparison of methods.

Every method gets the same search over its hyperparameters — the space's ``sweep:``
section, its ``sample:`` keys, ``num_samples`` trials, its searcher and scheduler —
selected on the validation metric (``sweep.metric``, ``sweep.mode``); the best
configuration of each method is then rerun on every seed, and the test metric is
reported over the seeds. A method's ranking then says what the method does, not how
well the one shared learning rate suits it::

    sweep:
      sample:
        optim.lr: {loguniform: [0.01, 0.2]}
      num_samples: 4                # the budget, per method
      metric: val/top1
      mode: max
      search: {name: optuna}

Each method's search is a sweep of its own in ``OUT/search/<method>/`` (``sweep.json``
names its best trial); ``OUT/tuning.json`` records what each method chose and why;
the reruns are the compare's runs, ``OUT/<method>/seed<k>/``, and ``OUT/summary.json``
adds to each method its ``chosen`` hyperparameters and the validation value that chose
them. The tuning seed is the config's ``seed``; a rerun on that seed repeats the chosen
trial.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from ..core.spec import RunSpec
from ..storage.location import Location, resolve
from .compare import group_of, method_dir
from .config import ConfigError, spec_to_dict
from .experiment import prepare_trial
from .tracking import log_sweep_summary

SEARCH, TUNING_JSON = "search", "tuning.json"
TUNED_KEYS = ("sample", "num_samples", "metric", "mode", "search", "scheduler", "max_concurrent_trials", "engine")


def check_tuning_space(sweep: dict | None, source: str) -> dict:
    """The ``sweep:`` section of a ``--tune`` space: a ``sample:`` section, a budget and a
    validation objective; every method searches the same. Raises ConfigError naming the key."""
    if not sweep:
        raise ConfigError(f"{source}: compare --tune needs a sweep: section with sample:, num_samples, "
                          "metric and mode (see gblend_ray/interfaces/tuning.py)", field="sweep", source=source)
    if not isinstance(sweep.get("sample"), dict) or not sweep["sample"]:
        raise ConfigError(f"{source}: sweep.sample: compare --tune searches the hyperparameters of sweep.sample; "
                          "add at least one, e.g. optim.lr: {loguniform: [0.01, 0.2]}", field="sweep.sample",
                          source=source)
    for key in ("grid", "cases"):
        if sweep.get(key):
            raise ConfigError(f"{source}: sweep.{key}: compare --tune gives every method the same search; the "
                              "methods come from --methods and the seeds from --seeds: remove sweep." + key,
                              field=f"sweep.{key}", source=source)
    if sweep.get("metric") is None or sweep.get("mode") is None:
        raise ConfigError(f"{source}: sweep.metric and sweep.mode: compare --tune selects each method's "
                          "configuration on a validation metric, e.g. metric: val/top1 and mode: max",
                          field="sweep.metric", source=source)
    return {k: v for k, v in sweep.items() if k in TUNED_KEYS}


def search_dir(out: str | Path | Location, method: str) -> Location:
    return resolve(out) / SEARCH / method_dir(method)


def tune_methods(spec: RunSpec, sweep: dict, methods: list[str], out: str | Path | Location,
                 run_search: Callable[[dict, Callable, Location], list[dict]], *,
                 log: Callable[[str], None] = print) -> dict[str, dict]:
    """Search each method's hyperparameters (``run_search(sweep, prepare, where)``, a
    ``distributed.sweep.run_sweep`` with its resources bound) and return, per method,
    its choice: ``overrides`` (the sampled values of the best trial), ``metric``,
    ``mode`` and ``value`` (the validation value that chose it), ``trials`` and
    ``search_dir``. A method whose every trial failed or stopped has ``overrides`` None.
    Writes ``OUT/tuning.json``."""
    metric, mode = sweep["metric"], sweep["mode"]
    chosen: dict[str, dict] = {}
    for method in methods:
        base = spec_to_dict(spec)
        base["method"] = method
        where = search_dir(out, method)
        rows = run_search(sweep, functools.partial(prepare_trial, base=base, group=group_of(spec, out)), where)
        log_sweep_summary(where, rows, (metric, mode), spec.tracking, group_of(spec, out), kind="search")
        best = next((r for r in rows if r.get("best")), None)
        chosen[method] = {
            "overrides": dict(best["overrides"]) if best else None,
            "metric": metric, "mode": mode, "value": best.get(metric) if best else None,
            "trials": len(rows), "failed": sum(r["status"] == "failed" for r in rows),
            "stopped": sum(r["status"] == "stopped" for r in rows), "search_dir": where.uri,
        }
        picked = (", ".join(f"{k}={_short(v)}" for k, v in best["overrides"].items()) + f": {metric} {best[metric]:.4f}"
                  if best else "no trial finished")
        log(f"{method:<16} chose {picked} (of {len(rows)} trials)")
    (resolve(out) / TUNING_JSON).write_text(json.dumps(chosen, indent=2, default=str))
    return chosen


def add_choices(summary: dict, chosen: dict[str, dict]) -> dict:
    """The summary of the reruns, each method with what it chose and the value that chose it."""
    for method, s in summary.items():
        c = chosen.get(method) or {}
        s["chosen"] = c.get("overrides")
        s["selected_by"] = {k: c.get(k) for k in ("metric", "mode", "value", "trials")}
    return summary


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_choices(summary: dict) -> str:
    """Each method's chosen hyperparameters and the validation value that chose them."""
    rows = []
    for method, s in summary.items():
        sel = s.get("selected_by") or {}
        hp = ", ".join(f"{k}={_short(v)}" for k, v in (s.get("chosen") or {}).items()) or "—"
        value = f"{sel['metric']} {sel['value']:.4f}" if sel.get("value") is not None else "no trial finished"
        rows.append(f"{method:<18}{hp}   ({value}, best of {sel.get('trials')})")
    return "\n".join(rows)

"""What a sweep optimises and how: its objective (``sweep.metric``, ``sweep.mode``), its
searcher (``sweep.search``) and its trial scheduler (``sweep.scheduler``), as Ray Tune's
own searchers and schedulers.

::

    sweep:
      sample:
        optim.lr: {loguniform: [0.01, 0.3]}
        blend.floor: {uniform: [0.1, 0.5]}
      num_samples: 6
      metric: val/top1              # the prediction head's; or val/<head>/top1, val/loss, ...
      mode: max
      search: {name: optuna}        # or random (the default); optuna's own options beside name
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # or fifo (the default)

Trials report every epoch's validation metrics (``val/...``) while they train and their
test metrics (``test/...``) once, at the end. A sweep selects on validation only: a test
metric as ``sweep.metric`` is refused, since choosing by it would make the test split a
validation split and its figures optimistic.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ray import tune

MODES = ("max", "min")
SEARCHERS = ("random", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha")
_ASHA_KEYS = ("max_t", "grace_period", "reduction_factor", "brackets")


class SearchError(ValueError):
    pass


def objective(sweep: dict) -> tuple[str, str] | None:
    """``(metric, mode)`` of the sweep, or None when it only enumerates its trials."""
    metric, mode = sweep.get("metric"), sweep.get("mode")
    if metric is None and mode is None:
        if _name(sweep, "search", "random") != "random" or _name(sweep, "scheduler", "fifo") != "fifo":
            raise SearchError("sweep.metric: a searcher or a scheduler needs the metric it optimises, "
                              "e.g. metric: val/top1 and mode: max")
        return None
    if not isinstance(metric, str) or not metric:
        raise SearchError(f"sweep.metric: expected a metric name such as val/top1, got {metric!r}")
    if metric.startswith("test"):
        raise SearchError(f"sweep.metric: {metric!r} is a test metric; a sweep selects on validation "
                          "(val/top1, val/loss, val/<head>/top1, ...): choosing by the test split would "
                          "make its figures optimistic")
    if not metric.startswith("val/"):
        raise SearchError(f"sweep.metric: expected a validation metric (val/top1, val/loss, "
                          f"val/<head>/<metric>), got {metric!r}")
    if mode not in MODES:
        raise SearchError(f"sweep.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    return metric, mode


def _name(sweep: dict, key: str, default: str) -> str:
    section = sweep.get(key)
    if section is None:
        return default
    if not isinstance(section, dict) or "name" not in section:
        raise SearchError(f"sweep.{key}: expected a mapping with a name, e.g. {{name: {default}}}, got {section!r}")
    return section["name"]


def _section(sweep: dict, key: str, choices: tuple[str, ...]) -> tuple[str, dict]:
    """``sweep.<key>``'s name (one of ``choices``; the first, the default, takes no
    options) and its options."""
    name = _name(sweep, key, choices[0])
    if name not in choices:
        raise SearchError(f"sweep.{key}.name: expected one of {', '.join(choices)}, got {name!r}")
    options = {k: v for k, v in (sweep.get(key) or {}).items() if k != "name"}
    if name == choices[0] and options:
        raise SearchError(f"sweep.{key}: {name} takes no options, got {sorted(options)}")
    return name, options


def searcher(sweep: dict, goal: tuple[str, str] | None, concurrent: int):
    """Tune's search algorithm for ``sweep.search`` (None: Tune's random/grid variant
    generator). Optuna and HyperOpt cannot expand a grid: with them the space is
    ``sample:`` only."""
    name, options = _section(sweep, "search", SEARCHERS)
    if name == "random":
        return None
    if sweep.get("grid") or sweep.get("cases"):
        raise SearchError(f"sweep.search: {name} searches the sample: section only; move the grid and cases "
                          "into fixed config values, or use search: {name: random}")
    metric, mode = goal
    if name == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        if not logging.getLogger("gblend_ray").isEnabledFor(logging.INFO):  # not --verbose
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study and trial

        algo = OptunaSearch(metric=metric, mode=mode, **options)
    else:
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
        except ImportError as err:  # pragma: no cover - the extra is not installed in the suite
            raise SearchError("sweep.search.name: hyperopt needs pip install 'gblend-ray[hyperopt]'") from err
        algo = HyperOptSearch(metric=metric, mode=mode, **options)
    # a model-based searcher learns from finished trials: only as many at once as run at once
    return tune.search.ConcurrencyLimiter(algo, max_concurrent=concurrent)


def scheduler(sweep: dict, goal: tuple[str, str] | None, epochs: int):
    """Tune's trial scheduler for ``sweep.scheduler`` (None: FIFO, every trial to the end).
    ASHA stops trials on the epoch count (``max_t`` defaults to ``train.epochs``)."""
    name, options = _section(sweep, "scheduler", SCHEDULERS)
    if name == "fifo":
        return None
    unknown = set(options) - set(_ASHA_KEYS)
    if unknown:
        raise SearchError(f"sweep.scheduler: unknown ASHA option(s) {sorted(unknown)}; "
                          f"expected {', '.join(_ASHA_KEYS)}")
    for key, value in options.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1):
            raise SearchError(f"sweep.scheduler.{key}: expected a number >= 1, got {value!r}")
    metric, mode = goal
    return tune.schedulers.ASHAScheduler(time_attr="epoch", metric=metric, mode=mode,
                                         **{"max_t": epochs, "grace_period": 1, **options})


def epoch_metrics(record: dict, prediction_head: str) -> dict[str, float]:
    """What a trial tells Tune about one epoch: its validation metrics per head, the
    prediction head's also as ``val/<metric>``, and the weights in force."""
    out: dict[str, float] = {"epoch": int(record["epoch"])}
    for key, value in record.items():
        if key.startswith(("val/", "weights/")) and isinstance(value, (int, float)):
            out[key] = float(value)
            head, _, metric = key[4:].partition("/")
            if key.startswith("val/") and head == prediction_head:
                out[f"val/{metric}"] = float(value)
    return out


def final_test_metrics(results: dict) -> dict[str, float]:
    """A finished run's test metrics, once: ``test/top1``, ``test/loss``, ..."""
    return {f"test/{k}": float(v) for k, v in results["test"].items()}


def best_trial(rows: list[dict], goal: tuple[str, str]) -> dict | None:
    """The finished trial with the best value of the sweep's metric at its last epoch."""
    metric, mode = goal
    done = [r for r in rows if r["status"] == "ok" and _finite(r.get(metric))]
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda r: r[metric])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

"""Joining a Ray cluster and checking, before anything starts, that a run fits in it.

``connect`` joins the cluster in ``RAY_ADDRESS`` or starts a local one (the embedded
default), sized in logical CPUs so that the run's trainer workers and probe trials all
fit (the OS shares the physical cores among them). ``check_resources`` fails at once,
with what is needed, what the cluster has and which setting to change, instead of
letting Ray wait forever for resources that cannot come.
"""

from __future__ import annotations

import math
import os

import ray

from ..core.spec import RunSpec


class ResourceError(ValueError):
    """The run asks for more than the cluster has: a setting to change, not a crash."""


def trainer_resources(spec: RunSpec) -> dict[str, float]:
    t = spec.trainer
    per_worker = dict(t.resources_per_worker)
    if t.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    return {k: v * t.num_workers for k, v in per_worker.items() if v > 0}


def probe_resources(spec: RunSpec, trials: int) -> dict[str, float]:
    return {k: v * trials for k, v in spec.probes.resources.items() if v > 0}


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


def connect(cpus_wanted: float = 0.0) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one with at least ``cpus_wanted``
    logical CPUs. A no-op when Ray is already initialised (tests, notebooks)."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    cpus = max(os.cpu_count() or 1, math.ceil(cpus_wanted))
    ray.init(num_cpus=cpus, include_dashboard=False)


def probe_trials_that_fit(spec: RunSpec, wanted: int, available: dict[str, float] | None = None) -> int:
    """How many of ``wanted`` long-lived probe trials fit beside the trainer workers.

    The trials hold their resources for the whole run, so more of them than fit would
    take what the trainer needs and the run would wait forever; fewer share the round's
    probe queue and still finish every round."""
    if wanted == 0:
        return 0
    have = dict(ray.cluster_resources() if available is None else available)
    left = {k: have.get(k, 0.0) - v for k, v in trainer_resources(spec).items()}
    fits = wanted
    for k, per_trial in spec.probes.resources.items():
        if per_trial > 0:
            fits = min(fits, int((left.get(k, have.get(k, 0.0)) + 1e-9) // per_trial))
    return max(fits, 0)


def check_resources(spec: RunSpec, probe_trials: int, available: dict[str, float] | None = None) -> None:
    """Fail unless the trainer workers plus one probe trial (when the run has probe
    trials) fit in the cluster's total resources."""
    have = dict(ray.cluster_resources() if available is None else available)
    need = _add(trainer_resources(spec), probe_resources(spec, 1 if probe_trials else 0))
    short = {k: v for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
    if not short:
        return
    t, p = spec.trainer, spec.probes
    parts = ", ".join(f"{v:g} {k}" for k, v in sorted(need.items()))
    has = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in sorted(need))
    fixes = [f"trainer.num_workers (now {t.num_workers})",
             f"trainer.resources_per_worker (now {dict(t.resources_per_worker)})"]
    if probe_trials:
        fixes += [f"probes.resources (now {dict(p.resources)}; fractions such as 0.5 are allowed)",
                  "probes.mode=inline (probes inside the trainer)"]
    if t.use_gpu:
        fixes.append("trainer.use_gpu=false")
    raise ResourceError(
        f"this run needs {parts} at once (trainer: {t.num_workers} worker(s) x {dict(t.resources_per_worker)}"
        + (f"{' + 1 GPU each' if t.use_gpu and 'GPU' not in t.resources_per_worker else ''}"
           f"; probes: at least one trial x {dict(p.resources)}" if probe_trials else "")
        + f"), but the cluster has {has} in all. Lower " + ", ".join(fixes)
        + ", or add nodes to the cluster."
    )

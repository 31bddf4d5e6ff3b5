"""Joining a Ray cluster and checking, before anything starts, that a run fits in it.

``connect`` joins the cluster in ``RAY_ADDRESS`` or starts a local one (the embedded
default), sized in logical CPUs so that the run's trainer workers and probe trials all
fit (the OS shares the physical cores among them). ``check_resources`` fails at once,
with what is needed, what the cluster has and which setting to change, instead of
letting Ray wait forever for resources that cannot come.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
import uuid

import ray

from ..core.spec import RunSpec
from .reaper import MARK_ENV

logger = logging.getLogger("gblend_ray.cluster")


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


STABLE = "gblend_stable"
"""A custom resource that marks the cluster's nodes that are not preemptible (the head,
on-demand nodes): sweep trials, which drive nested runs, and coordinator actors are
placed on them when the cluster has any (``launch/`` declares it on the head)."""

_LOCAL = {"started": False}
"""Whether ``connect`` started this process's cluster itself (no autoscaler to wait for)."""


def stable_resources() -> dict[str, float]:
    """What a driver-like actor asks for so it lands on a non-preemptible node."""
    return {STABLE: 0.001} if ray.cluster_resources().get(STABLE, 0.0) > 0 else {}


def local_cpus(cpus_wanted: float, cores: int | None = None, runs: int = 1) -> int:
    """Logical CPUs of a local cluster for ``runs`` runs at once that ask for
    ``cpus_wanted`` together: at least the machine's cores; more, for one run, only with
    a warning that names the settings (runs at once share the cores by design)."""
    cores = cores or os.cpu_count() or 1
    cpus = max(cores, math.ceil(cpus_wanted))
    if cpus_wanted / max(runs, 1) > cores:
        logger.warning("this run asks for %g logical CPUs (trainer.num_workers x trainer.resources_per_worker.CPU "
                       "+ a probe trial per head x probes.resources.CPU) on a machine with %d cores: the local "
                       "cluster gets %d logical CPUs and they share the cores; lower those settings (fractions such "
                       "as probes.resources.CPU=0.25 are allowed)", cpus_wanted, cores, cpus)
    return cpus


def connect(cpus_wanted: float = 0.0, runs: int = 1) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one with at least ``cpus_wanted``
    logical CPUs (for ``runs`` runs at once). A no-op when Ray is already initialised
    (tests, notebooks).

    A local cluster's processes are marked, and a reaper (``reaper.py``) ends them when
    this process dies, however it dies: nothing of the run outlives its driver. On a
    cluster that was already running, Ray itself ends a dead driver's actors and tasks."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    cpus = local_cpus(cpus_wanted, runs=runs)
    mark = uuid.uuid4().hex
    os.environ[MARK_ENV] = mark  # inherited by every process the local cluster starts
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    subprocess.Popen([sys.executable, "-m", "gblend_ray.distributed.reaper", str(os.getpid()), mark], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    _LOCAL["started"] = True


def on_own_local_cluster() -> bool:
    """Whether this process runs (or ``connect`` will start) a local cluster of its own:
    not one it joined through ``RAY_ADDRESS``, nor one its caller had initialised."""
    return _LOCAL["started"] or (not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"))


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


def check_resources(spec: RunSpec, probe_trials: int, available: dict[str, float] | None = None,
                    wait_s: float | None = None) -> None:
    """Fail unless the trainer workers plus one probe trial (when the run has probe
    trials) fit in the cluster's total resources. On a cluster this process joined (one
    that may autoscale), what is missing is first asked of the autoscaler
    (``ray.autoscaler.sdk.request_resources``) and waited for, at most ``wait_s``
    (``trainer.resource_wait_s``; default 600 s there, 0 on a local cluster), with a
    message that says what it waits for."""
    need = _add(trainer_resources(spec), probe_resources(spec, 1 if probe_trials else 0))
    have = dict(ray.cluster_resources() if available is None else available)
    if _fits(need, have):
        return
    if wait_s is None:
        wait_s = spec.trainer.resource_wait_s
    if wait_s is None:  # only a cluster this command joined may grow; one it started or was given cannot
        joined = bool(os.environ.get("RAY_ADDRESS")) and not _LOCAL["started"]
        wait_s = 600.0 if joined and available is None else 0.0
    if wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=_bundles(spec, probe_trials))
        logger.warning("the cluster has %s; waiting up to %g s (trainer.resource_wait_s) for the autoscaler to add "
                       "%s", _listing(have, need), wait_s, _listing(need, need))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.1, wait_s / 20)))
            have = dict(ray.cluster_resources())
            if _fits(need, have):
                return
        request_resources(bundles=[])  # withdrawn: the run gives up, the cluster need not grow for it
    raise ResourceError(_shortfall(spec, need, have, probe_trials, wait_s))


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _listing(amounts: dict[str, float], keys: dict[str, float]) -> str:
    return ", ".join(f"{amounts.get(k, 0.0):g} {k}" for k in sorted(keys))


def _bundles(spec: RunSpec, probe_trials: int) -> list[dict[str, float]]:
    """The run's shape for the autoscaler: a bundle per trainer worker and per probe trial."""
    t = spec.trainer
    worker = {k: v for k, v in {**t.resources_per_worker, **({"GPU": 1.0} if t.use_gpu and "GPU" not in
                                                               t.resources_per_worker else {})}.items() if v > 0}
    probe = {k: v for k, v in spec.probes.resources.items() if v > 0}
    return [worker] * t.num_workers + ([probe] * max(probe_trials, 1) if probe_trials else [])


def _shortfall(spec: RunSpec, need: dict[str, float], have: dict[str, float], probe_trials: int,
               waited_s: float) -> str:
    t, p = spec.trainer, spec.probes
    parts = ", ".join(f"{v:g} {k}" for k, v in sorted(need.items()))
    fixes = [f"trainer.num_workers (now {t.num_workers})",
             f"trainer.resources_per_worker (now {dict(t.resources_per_worker)})"]
    if probe_trials:
        fixes += [f"probes.resources (now {dict(p.resources)}; fractions such as 0.5 are allowed)",
                  "probes.mode=inline (probes inside the trainer)"]
    if t.use_gpu:
        fixes.append("trainer.use_gpu=false")
    return (
        f"this run needs {parts} at once (trainer: {t.num_workers} worker(s) x {dict(t.resources_per_worker)}"
        + (f"{' + 1 GPU each' if t.use_gpu and 'GPU' not in t.resources_per_worker else ''}"
           f"; probes: at least one trial x {dict(p.resources)}" if probe_trials else "")
        + f"), but the cluster has {_listing(have, need)} in all"
        + (f" after waiting {waited_s:g} s for the autoscaler (trainer.resource_wait_s)" if waited_s > 0 else "")
        + ". Lower " + ", ".join(fixes) + ", or add nodes to the cluster."
    )

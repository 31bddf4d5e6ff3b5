"""Joining a Ray cluster and checking, before anything starts, that a run fits in it.

``connect`` joins the cluster in ``RAY_ADDRESS`` or starts a local one (the embedded
default), sized in logical CPUs so that the run's trainer workers and probe trials all
fit (the OS shares the physical cores among them). ``check_resources`` fails at once,
with what is needed, what the cluster has and which setting to change, instead of
letting Ray wait forever for resources that cannot come.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import ray

from ..core.spec import RunSpec
from ..storage.location import Location
from .reaper import MARK_ENV


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
    logical CPUs. A no-op when Ray is already initialised (tests, notebooks).

    A local cluster's processes are marked, and a reaper (``reaper.py``) ends them when
    this process dies, however it dies: nothing of the run outlives its driver. On a
    cluster that was already running, Ray itself ends a dead driver's actors and tasks."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    cpus = max(os.cpu_count() or 1, math.ceil(cpus_wanted))
    mark = uuid.uuid4().hex
    os.environ[MARK_ENV] = mark  # inherited by every process the local cluster starts
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    subprocess.Popen([sys.executable, "-m", "gblend_ray.distributed.reaper", str(os.getpid()), mark], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    ray.init(num_cpus=cpus, include_dashboard=False)


@contextlib.contextmanager
def ray_output(log: Location | None) -> Iterator[None]:
    """Send Ray's own output — the workers' forwarded stdout and stderr (their logs and
    tracebacks) and the driver-side ``ray`` loggers — to the file ``log`` (appended)
    instead of the terminal, for the time of the block; ``log=None`` leaves it on the
    terminal (``--verbose``). The product's own lines are printed by the driver and are
    not affected."""
    if log is None:
        yield
        return
    local = log.local_path
    staged = Path(tempfile.mkstemp(prefix="gblend-ray-", suffix=".log")[1]) if local is None else local
    staged.parent.mkdir(parents=True, exist_ok=True)
    sink = open(staged, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    swapped = []
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        olds = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        for h in olds:
            logger.removeHandler(h)
        logger.addHandler(handler)
        swapped.append((logger, olds))
    dispatcher, printers = _worker_log_dispatcher(), []
    if dispatcher is not None:
        with dispatcher._lock:
            printers = [pair for pair in dispatcher.handlers if pair[0] == "ray_print_logs"]
            dispatcher.handlers = [pair for pair in dispatcher.handlers if pair[0] != "ray_print_logs"]
        dispatcher.add_handler("gblend_run_log", functools.partial(_write_worker_lines, sink))
    try:
        yield
    except BaseException:
        # The command ends on its error line: what the workers still print as the run is
        # torn down goes to the log too, never after that line on the terminal.
        if local is None:
            log.write_bytes(staged.read_bytes())
        raise
    if dispatcher is not None:
        dispatcher.remove_handler("gblend_run_log")
        with dispatcher._lock:
            dispatcher.handlers.extend(printers)
    for logger, olds in swapped:
        logger.removeHandler(handler)
        for h in olds:
            logger.addHandler(h)
    sink.close()
    if local is None:
        log.write_bytes(staged.read_bytes())
        staged.unlink(missing_ok=True)


def _worker_log_dispatcher():
    """Where the driver's log-forwarding thread hands each batch of worker output (a
    private Ray object: without it, worker output stays on the terminal)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    ok = all(hasattr(global_worker_stdstream_dispatcher, a) for a in ("handlers", "_lock", "add_handler"))
    return global_worker_stdstream_dispatcher if ok else None


def _write_worker_lines(sink, data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or "worker"
    prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
    try:
        sink.write("".join(prefix + line + "\n" for line in data.get("lines", ())))
        sink.flush()
    except ValueError:  # closed: output that arrives after the block ends
        pass


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

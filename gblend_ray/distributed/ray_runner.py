"""One run on Ray: a coordinator actor, probe trials on Ray Tune, a Ray Train trainer.

The same plan, engine and round decisions as the in-process runner
(``training/runner.py``); with one worker, the same seed and config give the same
trajectory. The driver (this process) records the run: it takes rank 0's epoch records
and the coordinator's rounds from the coordinator's event queue and hands them to its
observer (tracker, progress), and writes ``results.json``; the workers write nothing of
their own, so no file depends on a worker's working directory or node.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time

import ray

from ..core.plan import heads_of
from ..core.spec import RunSpec
from ..data.loading import AnyDataset, ensure_dataset, run_splits, select_modalities
from ..storage.rundir import RAY, RunDir
from ..training.assembly import RunObserver, extensions, method_of, write_run
from ..training.checkpoint import load_checkpoint
from .cluster import (
    check_resources,
    connect,
    probe_resources,
    probe_trials_that_fit,
    stable_resources,
    trainer_resources,
)
from .coordinator import Coordinator
from .probe_trials import run_trials
from .trainer import build_trainer, resume_state

logger = logging.getLogger("gblend_ray.ray_runner")


def probe_trial_count(spec: RunSpec, has_rounds: bool, num_heads: int) -> int:
    """Long-lived probe trials for this run: one per head unless capped; none without
    rounds or with ``probes.mode: inline``."""
    if not has_rounds or spec.probes.mode == "inline":
        return 0
    return min(num_heads, spec.probes.max_concurrent or num_heads)


def resources_for(spec: RunSpec, num_heads: int) -> dict[str, float]:
    """What one run holds at once with a probe trial per head: its trainer workers and
    probe trials, per resource (CPU, GPU, custom)."""
    trials = probe_trial_count(spec, True, num_heads)
    need = dict(trainer_resources(spec))
    for k, v in probe_resources(spec, trials).items():
        need[k] = need.get(k, 0.0) + v
    return need


def cpus_for(spec: RunSpec, num_heads: int) -> float:
    """Logical CPUs a local cluster needs for this run with a probe trial per head."""
    return resources_for(spec, num_heads).get("CPU", 0.0)


def coordinator_name(run: RunDir) -> str:
    """Named after the run directory, so the run's workers (and a restarted one) find it."""
    return f"gblend-{run.location.name}-{hashlib.sha1(run.uri.encode()).hexdigest()[:8]}"


class EventRelay:
    """A driver thread that hands the coordinator's events (rank 0's epochs, the rounds)
    to the run's observer, in order, as they come."""

    def __init__(self, coord, observer: RunObserver | None):
        self.coord, self.observer = coord, observer
        self._cursor = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gblend-events", daemon=True)
        if observer is not None:
            self._thread.start()

    def _deliver(self, wait_s: float) -> None:
        self._cursor, events = ray.get(self.coord.events.remote(self._cursor, wait_s))
        for kind, record in events:
            (self.observer.on_epoch if kind == "epoch" else self.observer.on_round)(record)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._deliver(1.0)
            except Exception as err:  # the coordinator is gone (the run ended or failed)
                logger.debug("event relay stopped: %s", err)
                return

    def close(self, drain: bool = True) -> None:
        """Stop the thread; with ``drain``, deliver what the coordinator still holds first."""
        if self.observer is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        if drain:
            self._deliver(0.0)


def _fit(trainer):
    """``trainer.fit()`` in a thread of its own. On the main thread Ray Train installs a
    SIGINT handler that aborts the run and exits the process with an arbitrary status;
    here Ctrl-C stays a ``KeyboardInterrupt`` in the main thread, which the command turns
    into its interrupted line and exit code 130 (the cluster then ends the run's actors)."""
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread as it is
            box["error"] = err

    thread = threading.Thread(target=fit, name="gblend-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_on_ray(spec: RunSpec, out_dir: str | RunDir, dataset: AnyDataset | None = None,
               observer: RunObserver | None = None, *, resume: bool = False) -> dict:
    """Train one run on the Ray cluster; write and return its results (with trajectory).
    ``resume`` continues the run in ``out_dir`` from its last boundary checkpoint, with
    the rounds and trained weights it recorded."""
    return fit_on_ray(spec, out_dir, dataset, observer, resume=resume)[0]


def fit_on_ray(spec: RunSpec, out_dir: str | RunDir, dataset: AnyDataset | None = None,
               observer: RunObserver | None = None, *, resume: bool = False) -> tuple[dict, ray.train.Result]:
    """``run_on_ray``, also returning Ray Train's ``Result`` of the run (its final
    checkpoint, its path, and the final report's metrics: test metrics and the
    per-epoch validation history)."""
    began = time.perf_counter()
    run = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
    dataset = select_modalities(dataset or ensure_dataset(spec), spec.data.modalities)
    method = method_of(spec, dataset)
    run_splits(spec, dataset)  # an unusable split fails here, before any worker starts
    heads = heads_of(list(dataset.modalities))
    wanted = probe_trial_count(spec, method.kind == "gblend", len(heads))
    connect(cpus_wanted=cpus_for(spec, len(heads)))
    check_resources(spec, wanted)
    trials = probe_trials_that_fit(spec, wanted)
    if trials < wanted:
        logger.warning("room for %d of %d probe trials beside the trainer; a round's probes share them",
                       trials, wanted)

    # The checkpoint a resume starts from, read here first (as data: weights_only), so that
    # a bad one fails the run before any worker starts.
    state = resume_state(run) if resume else None
    # Loaded and checked once, here: every worker and probe trial reads this copy instead
    # of loading the arrays again or re-checking every media file of the manifest.
    dataset_ref = ray.put(dataset)
    name = coordinator_name(run)
    namespace = ray.get_runtime_context().namespace
    coord = ray.remote(Coordinator).options(
        name=name, namespace=namespace, get_if_exists=True, num_cpus=0, max_concurrency=4 * len(heads) + 16,
        resources=stable_resources(),  # on a node that is not preemptible, where the cluster marks them
    ).remote(spec, method, heads, run, resume)
    if state is not None and observer is not None:  # what the tracker missed before the interruption
        observer.on_resume(state.epoch, state.history, [r for r in ray.get(coord.trajectory.remote())
                                                        if r["epoch"] <= state.epoch])
    if trials:
        ray.get(coord.start_probes.remote(
            functools.partial(run_trials, spec, name, namespace, trials, run / RAY, dataset_ref, extensions(spec))))
    relay = EventRelay(coord, observer)
    try:
        result = _fit(build_trainer(spec, run, name, namespace, dataset_ref))
    except BaseException:
        relay.close(drain=False)
        ray.kill(coord)  # its probe trials end with it
        raise
    relay.close()
    failure = ray.get(coord.failure.remote())
    trajectory = ray.get(coord.finish.remote())
    ray.kill(coord)
    if failure is not None:  # the loop ended on its own config's failure (it diverged)
        raise FloatingPointError(failure)
    with result.checkpoint.as_directory() as d:
        results = load_checkpoint(d).results
    results["seconds"] = time.perf_counter() - began
    write_run(run, results, trajectory)
    if observer is not None:
        observer.on_end(results)
    return {**results, "trajectory": trajectory}, result

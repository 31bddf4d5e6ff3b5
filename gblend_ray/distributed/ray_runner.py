"""One run on Ray: a coordinator actor, probe trials on Ray Tune, a Ray Train trainer.

The same plan, engine and round decisions as the in-process runner (``training/runner.py``);
with one worker, the same seed and config give the same trajectory.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path

import ray

from ..core.plan import heads_of
from ..core.spec import RunSpec
from ..data.loading import AnyDataset, ensure_dataset, select_modalities
from ..training.assembly import RunObserver, method_of, write_run
from ..training.checkpoint import load_checkpoint
from .cluster import check_resources, connect, probe_resources, probe_trials_that_fit, trainer_resources
from .coordinator import Coordinator
from .probe_trials import run_trials
from .trainer import build_trainer

logger = logging.getLogger("gblend_ray.ray_runner")


def probe_trial_count(spec: RunSpec, has_rounds: bool, num_heads: int) -> int:
    """Long-lived probe trials for this run: one per head unless capped; none without
    rounds or with ``probes.mode: inline``."""
    if not has_rounds or spec.probes.mode == "inline":
        return 0
    return min(num_heads, spec.probes.max_concurrent or num_heads)


def cpus_for(spec: RunSpec, num_heads: int) -> float:
    """Logical CPUs a local cluster needs for this run with a probe trial per head."""
    trials = probe_trial_count(spec, True, num_heads)
    return trainer_resources(spec).get("CPU", 0.0) + probe_resources(spec, trials).get("CPU", 0.0)


def coordinator_name(run_dir: Path) -> str:
    """Named after the run directory, so the run's workers (and a restarted one) find it."""
    return f"gblend-{run_dir.name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"


def run_on_ray(spec: RunSpec, out_dir: str | Path, dataset: AnyDataset | None = None,
               observer: RunObserver | None = None) -> dict:
    """Train one run on the Ray cluster; write and return its results (with trajectory).
    ``observer`` goes to rank 0, which trains, measures the test split and tells it."""
    began = time.perf_counter()
    dataset = select_modalities(dataset or ensure_dataset(spec), spec.data.modalities)
    method = method_of(spec, dataset)
    heads = heads_of(list(dataset.modalities))
    wanted = probe_trial_count(spec, method.kind == "gblend", len(heads))
    connect(cpus_wanted=cpus_for(spec, len(heads)))
    check_resources(spec, wanted)
    trials = probe_trials_that_fit(spec, wanted)
    if trials < wanted:
        logger.warning("room for %d of %d probe trials beside the trainer; a round's probes share them",
                       trials, wanted)

    # Loaded and checked once, here: every worker and probe trial reads this copy instead
    # of loading the arrays again or re-checking every media file of the manifest.
    dataset_ref = ray.put(dataset)
    run_dir = Path(out_dir).resolve()
    name = coordinator_name(run_dir)
    namespace = ray.get_runtime_context().namespace
    coord = ray.remote(Coordinator).options(
        name=name, namespace=namespace, get_if_exists=True, num_cpus=0, max_concurrency=4 * len(heads) + 16,
    ).remote(spec, method, heads, str(run_dir))
    if trials:
        ray.get(coord.start_probes.remote(
            functools.partial(run_trials, spec, name, namespace, trials, str(run_dir / "ray"), dataset_ref)))
    try:
        result = build_trainer(spec, run_dir, name, namespace, dataset_ref, observer).fit()
    finally:
        trajectory = ray.get(coord.finish.remote())
        ray.kill(coord)
    with result.checkpoint.as_directory() as d:
        results = load_checkpoint(d).results
    results["seconds"] = time.perf_counter() - began
    write_run(run_dir, results, trajectory)
    return {**results, "trajectory": trajectory}

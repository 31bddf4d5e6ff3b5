"""G-Blend probes as long-lived Ray Tune trials.

A run starts one Tune experiment with ``max_concurrent`` trials (default: one per head,
so a round's k+1 probes run at once). Each trial loads the data once, then loops: take a
probe task from the coordinator, restore the round's checkpoint, run the probe
(``assembly.run_head_probe``, the engine's training loop), hand the result back and
``tune.report`` it. A round thus costs an actor call and a checkpoint load rather than a
fresh Tune run (DESIGN §4, "Fast rounds"); Tune keeps the trials' results and restarts
a trial that dies (its task is re-queued by the coordinator).
"""

from __future__ import annotations

import dataclasses

import ray
from ray import tune

from ..core.spec import RunSpec
from ..storage.location import Location
from ..training.assembly import adopt_extensions, assemble, run_head_probe
from ..training.checkpoint import load_checkpoint
from .errors import describe_failure


def probe_trial(config: dict, spec: RunSpec, coordinator: str, namespace: str, dataset,
                ext: dict | None = None) -> None:
    """Body of one probe trial (slot ``config["slot"]``); ``dataset`` is the run's data set
    as the driver loaded it (``data.Dataset`` or ``media.MediaDataset``); ``ext`` the
    driver's user-registered encoders and fusions."""
    adopt_extensions(ext)
    slot = config["slot"]
    coord = ray.get_actor(coordinator, namespace=namespace)
    # A probe trial holds the resources in probes.resources: a GPU only if it asked for one;
    # with a share of one (GPU: 0.25), Ray shows it that GPU alone, as cuda:0.
    device = "cuda" if spec.probes.resources.get("GPU", 0) > 0 else "cpu"
    a = assemble(spec, dataset, device)
    done = 0
    while True:
        task = ray.get(coord.next_task.remote(slot))
        if task is None:
            return
        if task == "idle":
            continue
        with task.checkpoint.as_directory() as where:  # the boundary's checkpoint, from any storage
            a.model.load_state_dict(load_checkpoint(where).model)  # the probe trains it in place
        result = run_head_probe(spec, a.model, a.data, task.head, head_index=task.head_index, epoch=task.epoch,
                                probe_epochs=task.probe_epochs)
        ray.get(coord.submit.remote(slot, task, result))
        done += 1
        tune.report({"probes_done": done, "epoch": task.epoch, "head_index": task.head_index,
                     **dataclasses.asdict(result.measurement), "probe_seconds": result.seconds})


def run_trials(spec: RunSpec, coordinator: str, namespace: str, num_trials: int, storage: Location,
               dataset: ray.ObjectRef, ext: dict | None = None) -> None:
    """The Tune experiment of ``num_trials`` probe trials; returns when they all end.
    ``dataset`` is the run's loaded data set in the object store; ``tune.with_parameters``
    hands each trial the object itself; ``ext`` the driver's ``assembly.extensions()`` (this
    runs in the coordinator, which has only the package's own)."""
    trainable = tune.with_resources(
        tune.with_parameters(probe_trial, spec=spec, coordinator=coordinator, namespace=namespace,
                             dataset=dataset, ext=ext),
        dict(spec.probes.resources),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"slot": tune.grid_search(list(range(num_trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=num_trials),
        run_config=tune.RunConfig(name="probes", storage_path=storage.path, storage_filesystem=storage.fs, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    results = tuner.fit()
    # the root cause's line (a probe's GPUMemoryError names its head), not Ray's wrappers
    errors = [describe_failure(r.error) for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} probe trial(s) failed: {errors[0]}")

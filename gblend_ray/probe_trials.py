"""G-Blend probes as long-lived Ray Tune trials.

A run starts one Tune experiment with ``max_concurrent`` trials (default: one per head,
so a round's k+1 probes run at once). Each trial loads the data once, then loops: take a
probe task from the coordinator, restore the round's checkpoint, run the probe
(``probe.run_probe``, the engine's training loop), hand the result back and
``tune.report`` it. A round thus costs an actor call and a checkpoint load rather than a
fresh Tune run (DESIGN §4, "Fast rounds"); Tune keeps the trials' results and restarts
a trial that dies (its task is re-queued by the coordinator).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ray
import torch
from ray import tune

from .probe import probe_seed, run_probe
from .runner import lr_schedule, new_model, prepare_data
from .spec import RunSpec

STATE_FILE = "state.pt"


def load_state(checkpoint_dir: str | Path) -> dict:
    """A checkpoint written by the trainer: a plain dict (model, optimizer, epoch, ...)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def probe_trial(config: dict, spec: RunSpec, coordinator: str, namespace: str, dataset) -> None:
    """Body of one probe trial (slot ``config["slot"]``); ``dataset`` is the run's data set
    as the driver loaded it (``data.Dataset`` or ``media.MediaDataset``)."""
    slot = config["slot"]
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    coord = ray.get_actor(coordinator, namespace=namespace)
    # A probe trial holds the resources in probes.resources: a GPU only if it asked for one.
    device = "cuda" if spec.probes.resources.get("GPU", 0) > 0 else "cpu"
    data = prepare_data(spec, dataset, device=device)
    template = new_model(spec, data.dataset).to(device)
    done = 0
    while True:
        task = ray.get(coord.next_task.remote(slot))
        if task is None:
            return
        if task == "idle":
            continue
        model = template
        model.load_state_dict(load_state(task.checkpoint_dir)["model"])
        result = run_probe(
            model, task.head, train=data.train, train_subset=data.train_subset, heldout=data.heldout,
            optim=spec.optim, epochs=task.probe_epochs, start_epoch=task.epoch,
            seed=probe_seed(spec.seed, task.epoch, task.head_index), metric=spec.blend.metric,
            batch_size=spec.train.batch_size, lr_at=lr_schedule(spec),
        )
        ray.get(coord.submit.remote(slot, task, result))
        done += 1
        tune.report({"probes_done": done, "epoch": task.epoch, "head_index": task.head_index,
                     **dataclasses.asdict(result.measurement), "probe_seconds": result.seconds})


def run_trials(spec: RunSpec, coordinator: str, namespace: str, num_trials: int, storage_path: str,
               dataset: ray.ObjectRef) -> None:
    """The Tune experiment of ``num_trials`` probe trials; returns when they all end.
    ``dataset`` is the run's loaded data set in the object store; ``tune.with_parameters``
    hands each trial the object itself."""
    trainable = tune.with_resources(
        tune.with_parameters(probe_trial, spec=spec, coordinator=coordinator, namespace=namespace,
                             dataset=dataset),
        dict(spec.probes.resources),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"slot": tune.grid_search(list(range(num_trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=num_trials),
        run_config=tune.RunConfig(name="probes", storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    results = tuner.fit()
    errors = [str(r.error) for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} probe trial(s) failed: {errors[0]}")

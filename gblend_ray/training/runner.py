"""The in-process runner: one whole run without Ray.

It sets the run up with ``assembly.assemble``, walks the method's plan with
``assembly.train_plan``, and runs each G-Blend round's probes one after another in this
process. It is the reference the Ray engine is tested against (same seed and config →
same weights) and the ``--inline`` mode.

With a run directory (a local path or a storage URI) it checkpoints at every G-Blend
boundary (``checkpoints/``, the last two kept) and writes ``trajectory.json`` after every round, as the Ray engine
does, so an interrupted run resumes (``resume=True``) from its last boundary with the
rounds it recorded and ends with the files an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from ..core.plan import Segment, fixed_weights
from ..core.spec import RunSpec
from ..data.loading import AnyDataset
from ..storage.location import Location
from ..storage.rundir import CHECKPOINTS, PRETRAINED, TRAJECTORY, RunDir
from .assembly import RunObserver, assemble, decide, epoch_metrics, final_results, run_probes, train_plan, write_run
from .checkpoint import STATE_FILE, TrainingState, load_checkpoint, save_checkpoint

logger = logging.getLogger("gblend_ray.runner")

KEEP_CHECKPOINTS = 2

INLINE_OVERLAP = ("probes.overlap: the in-process engine runs each round's probes in its own process, one after "
                  "another, so nothing could train meanwhile; overlapped rounds need the Ray engine (no --inline) "
                  "with probes.mode: tune, or set probes.overlap: false")


def _boundary(run: RunDir, epoch: int) -> Location:
    return run / CHECKPOINTS / f"epoch_{epoch:04d}"


def _save_boundary(run: RunDir, a, epoch: int, history: list[dict]) -> None:
    """The boundary's checkpoint, written through the run directory's filesystem (staged
    on the local disk first for object storage); older ones but the last
    ``KEEP_CHECKPOINTS`` go."""
    target = _boundary(run, epoch)
    if target.local_path is not None:
        save_checkpoint(target.local_path, a.model, a.optimizer, epoch, None, history, scaler=a.scaler)
    else:
        with tempfile.TemporaryDirectory(prefix="gblend-ckpt-") as staged:
            target.upload_from(save_checkpoint(staged, a.model, a.optimizer, epoch, None, history, scaler=a.scaler))
    for old in run.checkpoint_epochs()[:-KEEP_CHECKPOINTS]:
        _boundary(run, old).remove()


def _load_boundary(run: RunDir, epoch: int) -> TrainingState:
    target = _boundary(run, epoch)
    if target.local_path is not None:
        return load_checkpoint(target.local_path)
    with tempfile.TemporaryDirectory(prefix="gblend-ckpt-") as staged:
        return load_checkpoint(target.download_to(Path(staged)))


def run_inline(spec: RunSpec, out_dir: str | Path | RunDir | None = None, dataset: AnyDataset | None = None,
               observer: RunObserver | None = None, *, resume: bool = False) -> dict:
    """Run one experiment in this process; with ``out_dir``, checkpoint at its boundaries
    and write ``results.json`` and ``trajectory.json`` there (``resume``: go on from the
    last checkpoint in it). Returns the results (with the trajectory under its key)."""
    if spec.probes.overlap and spec.method.partition(":")[0] == "gblend":
        raise ValueError(INLINE_OVERLAP)
    began = time.perf_counter()
    run = None if out_dir is None else out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
    a = assemble(spec, dataset, spec.train.device)
    trajectory: list[dict] = []
    history: list[dict] = []
    start = 0
    if run is not None and resume:
        epochs = [e for e in run.checkpoint_epochs(STATE_FILE) if (_boundary(run, e) / STATE_FILE).is_file()]
        if epochs:
            state = _load_boundary(run, epochs[-1])
            a.model.load_state_dict(state.model)
            a.optimizer.load_state_dict(state.optimizer)
            if a.scaler is not None and state.scaler:
                a.scaler.load_state_dict(state.scaler)
            torch.set_rng_state(state.rng)
            history, start = state.history, state.epoch
        trajectory = [r for r in run.read_json(TRAJECTORY, []) if r["epoch"] <= start]
        logger.info("resuming %s from epoch %d with %d recorded round(s)", run, start, len(trajectory))
        if observer is not None:
            observer.on_resume(start, history, trajectory)

    def weights_for(segment: Segment) -> dict[str, float]:
        if not segment.estimates:
            return fixed_weights(a.method, a.model.modalities, segment.phase)
        record = next((r for r in trajectory if r["epoch"] == segment.start), None)
        if record is None:
            if run is not None:
                _save_boundary(run, a, segment.start, history)
            previous = trajectory[-1]["weights"] if trajectory else None
            # Probes draw no random number from the run's stream: the run continues the same
            # whether its rounds ran here or were replayed from the record on a resume.
            with torch.random.fork_rng():
                results = run_probes(spec, a.model, a.data, segment)
            _, record = decide(spec, a.method, segment, results, previous)
            trajectory.append(record)
            if run is not None:
                run.write_json(TRAJECTORY, trajectory)
            logger.info("epoch %d: weights %s", segment.start, {h: round(w, 3) for h, w in record["weights"].items()})
        if observer is not None:
            observer.on_round(record)
        return record["weights"]

    def on_epoch(record: dict) -> None:
        history.append(record)
        if observer is not None:
            observer.on_epoch(record)

    with tempfile.TemporaryDirectory(prefix="gblend-pretrained-") as scratch:
        local = run.location.local_path if run is not None else None
        pretrained = local / PRETRAINED if local is not None else Path(scratch)
        train_plan(a, a.model, weights_for, segments=[s for s in a.segments if s.start >= start],
                   monitor=lambda: epoch_metrics(a.model, a.data, a.compute), on_epoch=on_epoch,
                   pretrained_dir=pretrained)
        if run is not None and local is None and any(pretrained.iterdir()):
            (run / PRETRAINED).upload_from(pretrained)
    results = final_results(a, trajectory, history, time.perf_counter() - began)
    if run is not None:
        write_run(run, results, trajectory)
    if observer is not None:
        observer.on_end(results)
    return {**results, "trajectory": trajectory}

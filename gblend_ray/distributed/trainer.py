"""The Ray Train worker loop: DDP training of the multi-head network under G-Blend.

Every rank sets the run up with ``assembly.assemble`` and walks the same plan with
``assembly.train_plan`` (the engine's training loop, shard ``rank`` of each epoch). At a G-Blend boundary rank 0 writes the checkpoint
(model, optimizer, epoch, weights, history, RNG) and every rank reports it to Ray Train
(a barrier); rank 0 asks the coordinator for the round's weights and broadcasts them, so
every rank trains the super-epoch under the same weights. A restarted worker group, or a
run resumed by a new driver, starts from the last boundary checkpoint; the coordinator
answers that boundary's round from its record. Rank 0 posts each epoch's record to the
coordinator, from which the driver records it: workers write no run file themselves.
With ``probes.overlap`` the ranks do not wait for a round: they train on and switch to
its weights at the same step when they arrive (``overlap.py``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.collective  # explicit: the submodule is not imported by ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..core.plan import Segment, fixed_weights, heads_of
from ..core.rounds import applied_at, warmup_weights
from ..core.spec import RunSpec
from ..storage.rundir import PRETRAINED, RAY, RunDir
from ..training.assembly import (
    adopt_extensions,
    assemble,
    epoch_metrics,
    extensions,
    final_results,
    run_probes,
    train_plan,
)
from ..training.checkpoint import STATE_FILE, TrainingState, load_checkpoint, save_checkpoint
from .overlap import OverlappedRounds

KEEP_CHECKPOINTS = 2
"""Boundary checkpoints kept: the latest one is all that a round or a resume reads; the
one before stays until the newer is committed."""

HEALTH_CHECK_INTERVAL_S = "0.5"
"""How often Ray Train's controller polls its workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
which a user's own setting overrides). A run's end is seen at the next poll: at Ray's
default of 2 s a tiny run took 3.7–4.7 s from its last report to ``fit()`` returning, at
0.5 s 1.6 s (2 cores, by hand: marks in a patched ``train_loop``, three runs at 2 s, one
at 0.5 s)."""

RUN_NAME = "train"
"""Ray Train's run name; its ``storage_path`` is the run directory's ``ray/``."""


def checkpoint_name(epoch: int, final: bool = False) -> str:
    return f"epoch_{epoch:04d}" + ("_final" if final else "")


def persisted(run: RunDir, name: str) -> Checkpoint:
    """The checkpoint ``name`` where Ray Train persists it (``RUN_DIR/ray/train/<name>``),
    on the run directory's filesystem: a probe trial on any node restores it from there."""
    where = run / RAY / RUN_NAME / name
    return Checkpoint(where.path, filesystem=where.fs)


def latest_state(run: RunDir) -> TrainingState | None:
    """The last boundary checkpoint Ray Train persisted for the run, read on the driver."""
    epochs = [e for e in run.checkpoint_epochs(STATE_FILE)
              if (run / RAY / RUN_NAME / checkpoint_name(e) / STATE_FILE).is_file()]
    if not epochs:
        return None
    with persisted(run, checkpoint_name(epochs[-1])).as_directory() as d:
        return load_checkpoint(d)


def resume_state(run: RunDir) -> TrainingState | None:
    """The checkpoint a resumed run goes on from, read on the driver: the final one where
    Ray Train persisted it, else the last boundary's (``latest_state``). A driver stopped
    after the last epoch but before it wrote the results leaves a final checkpoint; Ray
    Train restores that one, so the workers train (and post) no epoch again, and the
    driver's record of the run must come from it whole."""
    where = run / RAY / RUN_NAME
    finals = sorted(n for n in where.listdir() if n.endswith("_final") and (where / n / STATE_FILE).is_file())
    if not finals:
        return latest_state(run)
    with persisted(run, finals[-1]).as_directory() as d:
        return load_checkpoint(d)


def parameter_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of every parameter's bytes, in order: equal on two ranks exactly when their
    parameters are identical (buffers such as batch-norm statistics are rank-local under DDP
    and left out)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_digests(model: torch.nn.Module, world: int) -> list[str]:
    """Every rank's ``parameter_digest``, by rank (a collective: every rank calls it)."""
    digest = parameter_digest(model)
    if world == 1:
        return [digest]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, digest)
    return gathered


def train_loop(config: dict) -> None:
    spec: RunSpec = config["spec"]
    run: RunDir = config["run"]
    adopt_extensions(config.get("extensions"))  # the user's registered encoders and fusions
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if spec.trainer.use_gpu else torch.device("cpu")
    # Every rank measures V itself for early stopping (same parameters, same V), so all
    # stop at one epoch without a broadcast.
    a = assemble(spec, ray.get(config["dataset"]), device)
    model, optimizer, data, method = a.model, a.optimizer, a.data, a.method
    coord = ray.get_actor(config["coordinator"], namespace=config["namespace"])
    began = time.perf_counter()

    history: list[dict] = []
    start = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if a.scaler is not None and state.scaler:
            a.scaler.load_state_dict(state.scaler)
        torch.set_rng_state(state.rng)
        history, start = state.history, state.epoch
    ddp = model
    if world > 1:
        # Heads with weight 0 are not computed, so some parameters get no gradient.
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    rounds = None
    if spec.probes.overlap and method.kind == "gblend":
        # An overlapped run's boundary checkpoint holds the weights in force there.
        in_force = (state.weights if restored is not None and state.weights else
                    warmup_weights(spec.blend, heads_of(model.modalities), method.prediction_head))
        rounds = OverlappedRounds(coord, rank, world, in_force)

    def report(epoch: int, weights, final: bool = False, results: dict | None = None) -> Checkpoint:
        """Every rank calls this equally often (``ray.train.report`` is a barrier). Each
        report's metrics (rank 0's are the ones Ray Train keeps) hold its epoch's
        validation metrics; the final one also the test metrics and every epoch's
        validation metrics and weights (``history``), so that the run's
        ``ray.train.Result`` carries them: Ray Train v2 keeps only the metrics of
        checkpointed reports, and a checkpoint per epoch would cost a model's upload."""
        name = checkpoint_name(epoch, final)
        ckpt = None
        if rank == 0:
            # Staged on this node's local disk, uploaded synchronously, then deleted: one copy
            # of each checkpoint in the run directory (a video backbone's is hundreds of MB).
            staged = save_checkpoint(tempfile.mkdtemp(prefix="gblend-ckpt-"), model, optimizer, epoch, weights,
                                     history, results, scaler=a.scaler)
            ckpt = Checkpoint.from_directory(str(staged))
        # the epoch's validation metrics and weights in force: every checkpoint in
        # ``Result.best_checkpoints`` carries its epoch's (``val/<head>/top1``, ...)
        last = history[-1] if history and history[-1].get("epoch") == epoch else {}
        metrics = {"epoch": epoch, "final": final,
                   **{k: v for k, v in last.items() if k.startswith(("val/", "weights/"))}}
        if results is not None:
            metrics.update({f"test/{k}": v for k, v in results["test"].items()})
            metrics["history"] = [{k: v for k, v in r.items() if k == "epoch" or k.startswith(("val/", "weights/"))}
                                  for r in history]
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name,
                         delete_local_checkpoint_after_upload=True)
        return persisted(run, name)

    def weights_for(segment: Segment) -> dict[str, float]:
        boundary_began = time.perf_counter()
        if rounds is not None and segment.estimates:
            return overlapped_boundary(segment, boundary_began)
        if not segment.estimates:
            weights = fixed_weights(method, model.modalities, segment.phase)
        else:
            resumed_here = restored is not None and segment.start == start
            where = persisted(run, checkpoint_name(segment.start)) if resumed_here else report(segment.start, None)
            weights = None
            if rank == 0:
                inline = run_probes(spec, model, data, segment) if spec.probes.mode == "inline" else None
                weights = ray.get(coord.round.remote(segment, where, inline))["weights"]
            weights = ray.train.collective.broadcast_from_rank_zero(weights)
        ray.get(coord.record_training.remote(rank, segment.start, weights, os.getpid(),
                                             time.perf_counter() - boundary_began, applied_at(segment.start, 0)))
        return weights

    def overlapped_boundary(segment: Segment, boundary_began: float) -> dict[str, float]:
        """Overlapped rounds: the previous round, if still in flight, is waited for (in force
        from here); then the boundary's checkpoint, holding those weights, and the round is
        submitted; training goes on with the weights in force until its answer arrives."""
        rounds.wait(segment.start)
        resumed_here = restored is not None and segment.start == start
        where = (persisted(run, checkpoint_name(segment.start)) if resumed_here
                 else report(segment.start, rounds.in_force))
        rounds.submit(segment, where, time.perf_counter() - boundary_began)
        return rounds.in_force

    def on_epoch(record: dict) -> None:
        history.append(record)
        if rank == 0:  # the driver records it (tracker, progress): nothing is written here
            ray.get(coord.post.remote("epoch", record))

    local_run = run.location.local_path
    pretrained = (local_run / PRETRAINED if local_run is not None else Path(tempfile.mkdtemp(prefix="gblend-pre-")))
    pretrained = pretrained / (f"rank_{rank}" if rank else "")
    # Rank 0 measures the curves on the unwrapped model: a forward through DDP on one
    # rank alone would leave DDP's gradient reducer waiting for the others.
    try:
        train_plan(a, ddp, weights_for, segments=[s for s in a.segments if s.start >= start], rank=rank,
                   world_size=world, on_epoch=on_epoch,
                   monitor=(lambda: epoch_metrics(model, data, a.compute)) if rank == 0 else None,
                   pretrained_dir=pretrained, switch=rounds.poll if rounds is not None else None)
        if rounds is not None:
            rounds.finish()
    except FloatingPointError as err:
        # A run that diverges fails for its own config: ending the loop normally (every rank
        # diverges at the same epoch) with the cause at the coordinator keeps Ray Train from
        # restarting the worker group (trainer.max_failures is for lost nodes) only to
        # diverge again, and leaves no checkpoint of the diverged model to resume from.
        if rank == 0:
            ray.get(coord.fail.remote(str(err)))
        return
    if rank == 0 and local_run is None and pretrained.is_dir() and any(pretrained.iterdir()):
        (run / PRETRAINED).upload_from(pretrained)  # rank 0's encoders, like a local run's
    digests = rank_digests(model, world)  # the ranks must have trained the same model
    trajectory = ray.get(coord.trajectory.remote())
    results = final_results(a, trajectory, history, time.perf_counter() - began) if rank == 0 else None
    if results is not None:
        results["rank_parameters"] = digests
        if rounds is not None:  # the weights the last steps trained with (the last round may not have arrived)
            results["final_weights"] = dict(rounds.in_force)
    report(spec.train.epochs, results["final_weights"] if results else None, final=True, results=results)


def build_trainer(spec: RunSpec, run: RunDir, coordinator: str, namespace: str, dataset: ray.ObjectRef) -> TorchTrainer:
    """The run's TorchTrainer; ``dataset`` is the driver's loaded data set, in the object
    store. Its storage is the run directory's ``ray/`` on the run directory's filesystem,
    so the same ``RunConfig`` again (``--resume``) restores the run's last checkpoint."""
    t = spec.trainer
    storage = run / RAY
    # read by TorchTrainer.fit() from this process's environment and passed to its controller
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "run": run, "coordinator": coordinator, "namespace": namespace,
                           "dataset": dataset, "extensions": extensions(spec)},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=dict(t.resources_per_worker)),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage.path, storage_filesystem=storage.fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                             failure_config=FailureConfig(max_failures=t.max_failures)),
    )

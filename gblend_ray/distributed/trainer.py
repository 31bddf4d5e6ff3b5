"""The Ray Train worker loop: DDP training of the multi-head network under G-Blend.

Every rank sets the run up with ``assembly.assemble`` and walks the same plan with
``assembly.train_plan`` (the engine's training loop, shard ``rank`` of each epoch). At a G-Blend boundary rank 0 writes the checkpoint
(model, optimizer, epoch, weights, history, RNG) and every rank reports it to Ray Train
(a barrier); rank 0 asks the coordinator for the round's weights and broadcasts them, so
every rank trains the super-epoch under the same weights. A restarted worker group
resumes from the last boundary checkpoint; the coordinator answers that boundary's
round from its record.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import ray
import ray.train
import ray.train.collective  # explicit: the submodule is not imported by ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..core.plan import Segment, fixed_weights
from ..core.spec import RunSpec
from ..training.assembly import assemble, epoch_metrics, final_results, run_probes, train_plan
from ..training.checkpoint import load_checkpoint, save_checkpoint


STAGING = "checkpoint_staging"
"""Rank 0 writes a checkpoint here; Ray Train moves it to ``persisted_dir``."""
KEEP_CHECKPOINTS = 2
"""Boundary checkpoints kept: the latest one is all that a round or a resume reads; the
one before stays until the newer is committed."""


STORAGE, RUN_NAME = "ray", "train"
"""Ray Train's ``storage_path`` under the run directory and its run name."""


def persisted_dir(run_dir: Path, name: str) -> Path:
    """``RUN_DIR/ray/train/<name>``, where Ray Train persists the checkpoint ``name``."""
    return run_dir / STORAGE / RUN_NAME / name


def train_loop(config: dict) -> None:
    spec: RunSpec = config["spec"]
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if spec.trainer.use_gpu else torch.device("cpu")
    # Every rank measures V itself for early stopping (same parameters, same V), so all
    # stop at one epoch without a broadcast.
    a = assemble(spec, ray.get(config["dataset"]), device)
    model, optimizer, data, method = a.model, a.optimizer, a.data, a.method
    coord = ray.get_actor(config["coordinator"], namespace=config["namespace"])
    observer = config["observer"] if rank == 0 else None
    began = time.perf_counter()

    history: list[dict] = []
    start = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        torch.set_rng_state(state.rng)
        history, start = state.history, state.epoch
    ddp = model
    if world > 1:
        # Heads with weight 0 are not computed, so some parameters get no gradient.
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    def checkpoint_dir(epoch: int, final: bool = False) -> Path:
        """Where Ray Train persists a boundary's checkpoint: the probes read it there."""
        return persisted_dir(run_dir, f"epoch_{epoch:04d}" + ("_final" if final else ""))

    def report(epoch: int, weights, final: bool = False, results: dict | None = None) -> Path:
        """Every rank calls this equally often (``ray.train.report`` is a barrier)."""
        where = checkpoint_dir(epoch, final)
        ckpt = None
        if rank == 0:
            staged = save_checkpoint(run_dir / STAGING / where.name, model, optimizer, epoch, weights, history, results)
            ckpt = Checkpoint.from_directory(str(staged))
        # Synchronous upload, then the staged copy goes: one copy of each checkpoint on disk
        # (a video backbone's checkpoint is hundreds of MB).
        ray.train.report({"epoch": epoch, "final": final}, checkpoint=ckpt, checkpoint_dir_name=where.name,
                         delete_local_checkpoint_after_upload=True)
        return where

    def weights_for(segment: Segment) -> dict[str, float]:
        boundary_began = time.perf_counter()
        if not segment.estimates:
            weights = fixed_weights(method, model.modalities, segment.phase)
        else:
            resumed_here = restored is not None and segment.start == start
            where = checkpoint_dir(segment.start) if resumed_here else report(segment.start, None)
            weights = None
            if rank == 0:
                inline = run_probes(spec, model, data, segment) if spec.probes.mode == "inline" else None
                answer = ray.get(coord.round.remote(segment, str(where), inline))
                if observer is not None and not answer["replayed"]:
                    observer.on_round(answer["record"])
                weights = answer["weights"]
            weights = ray.train.collective.broadcast_from_rank_zero(weights)
        ray.get(coord.record_training.remote(rank, segment.start, weights, os.getpid(),
                                             time.perf_counter() - boundary_began))
        return weights

    def on_epoch(record: dict) -> None:
        history.append(record)
        if observer is not None:
            observer.on_epoch(record)

    # Rank 0 measures the curves on the unwrapped model: a forward through DDP on one
    # rank alone would leave DDP's gradient reducer waiting for the others.
    train_plan(a, ddp, weights_for, segments=[s for s in a.segments if s.start >= start], rank=rank,
               world_size=world, on_epoch=on_epoch, monitor=(lambda: epoch_metrics(model, data)) if rank == 0 else None,
               pretrained_dir=run_dir / "pretrained" / (f"rank_{rank}" if rank else ""))
    trajectory = ray.get(coord.trajectory.remote())
    results = None
    if rank == 0:
        results = final_results(a, trajectory, history, time.perf_counter() - began)
        if observer is not None:
            observer.on_end(results)
    report(spec.train.epochs, results["final_weights"] if results else None, final=True, results=results)
    if rank == 0:
        with contextlib.suppress(OSError):  # emptied by the uploads; left if anything remains
            (run_dir / STAGING).rmdir()


def build_trainer(spec: RunSpec, run_dir: Path, coordinator: str, namespace: str, dataset: ray.ObjectRef,
                  observer=None) -> TorchTrainer:
    """The run's TorchTrainer; ``dataset`` is the driver's loaded data set, in the object store."""
    t = spec.trainer
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "run_dir": str(run_dir), "coordinator": coordinator,
                           "namespace": namespace, "observer": observer, "dataset": dataset},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=dict(t.resources_per_worker)),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(run_dir / STORAGE),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                             failure_config=FailureConfig(max_failures=t.max_failures)),
    )


"""Overlapped G-Blend rounds (``probes.overlap``): the trainer trains on while a round's
probes run, and every rank switches to the round's weights at the same step.

Algorithm 3 stops the trainer at each boundary until the round's weights come back. With
``probes.overlap`` the worker loop (``trainer.py``) instead submits the round and keeps
training with the weights in force; before every step it asks ``poll`` whether they have
arrived. Rank 0 alone holds the round's ``ObjectRef`` and looks at it without blocking
(``ray.wait(timeout=0)``, at most every ``POLL_INTERVAL_S``); with several ranks its answer
is broadcast every step while a round is in flight (one 1-element gloo broadcast, beside
DDP's all-reduce of every gradient), so all ranks switch at the same step. With one worker
there is no collective, and with no round in flight ``poll`` does nothing at all.

At most one round is in flight: at the next boundary a round that has not arrived is
waited for (``wait``) and takes effect at that boundary's first step, before the boundary's
checkpoint is written, so a checkpoint's weights are the ones in force there. Before the
warm-up round arrives the run trains with ``rounds.warmup_weights`` (uniform; floored
under ``safeguard: floor``). Where each round took effect goes to the coordinator (``record_training``:
``trained_weights.json`` per rank, ``applied`` in the round's ``trajectory.json`` record).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import ray
import ray.train.collective  # explicit: the submodule is not imported by ray.train
import torch

from ..core.plan import Segment
from ..core.rounds import applied_at

POLL_INTERVAL_S = 0.02
"""How often rank 0 looks at a round in flight: a ``ray.wait`` costs ~70 µs on a 2-core
machine, a few % of a small model's step, and 20 ms delays a switch by a few steps at most."""


class OverlappedRounds:
    """The round in flight, if any, and the weights in force, on every rank.

    Every rank calls ``submit``, ``poll``, ``wait`` and ``finish`` at the same points (they
    all walk the same plan and steps), so whether a round is in flight is known on every
    rank without a message; only whether it has arrived is rank 0's to say."""

    def __init__(self, coordinator, rank: int, world: int, in_force: dict[str, float],
                 clock: Callable[[], float] = time.monotonic):
        self.coord, self.rank, self.world = coordinator, rank, world
        self.in_force = dict(in_force)
        self._clock = clock
        self._segment: Segment | None = None
        self._ref: ray.ObjectRef | None = None  # rank 0's answer to come
        self._boundary_seconds: float | None = None
        self._looked = float("-inf")
        # Gloo, even under NCCL: a flag broadcast on the GPU would synchronise the host with
        # the device at every step; made here, on every rank (new_group is collective).
        self._group = None
        if world > 1 and torch.distributed.get_backend() != "gloo":
            self._group = torch.distributed.new_group(backend="gloo")

    @property
    def in_flight(self) -> bool:
        return self._segment is not None

    def submit(self, segment: Segment, checkpoint, boundary_seconds: float) -> None:
        """Ask the coordinator for ``segment``'s round from ``checkpoint`` without waiting."""
        if self._segment is not None:
            raise RuntimeError(f"the round at epoch {self._segment.start} is still in flight")
        self._segment, self._boundary_seconds = segment, boundary_seconds
        if self.rank == 0:
            self._ref = self.coord.round.remote(segment, checkpoint, None)
            self._looked = self._clock()

    def poll(self, epoch: int, step: int) -> dict[str, float] | None:
        """Before step ``step`` of ``epoch`` (0-based): the round's weights if they arrived
        (they train this step on), else None."""
        if self._segment is None:
            return None
        ready = False
        if self.rank == 0 and self._clock() - self._looked >= POLL_INTERVAL_S:
            self._looked = self._clock()
            ready = bool(ray.wait([self._ref], timeout=0)[0])
        if self.world > 1:
            flag = torch.tensor([int(ready)], dtype=torch.int32)
            torch.distributed.broadcast(flag, src=0, group=self._group)
            ready = bool(flag.item())
        return self._take(epoch, step, blocking=False) if ready else None

    def wait(self, epoch: int) -> dict[str, float] | None:
        """At the boundary ``epoch``: the round still in flight, waited for; its weights
        take effect at this epoch's first step. None when no round is in flight."""
        if self._segment is None:
            return None
        return self._take(epoch, 0, blocking=True)

    def finish(self) -> None:
        """The run's last round, if still in flight when training ended: rank 0 waits for it
        so that the trajectory holds every boundary's round; no step trained with it (its
        ``applied`` stays null)."""
        if self._segment is not None and self.rank == 0:
            ray.get(self._ref)
        self._segment = self._ref = None

    def _take(self, epoch: int, step: int, blocking: bool) -> dict[str, float]:
        weights = ray.get(self._ref)["weights"] if self.rank == 0 else None
        if self.world > 1:
            if blocking:  # rank 0 may wait a whole round here: Ray's broadcast has no gloo timeout
                weights = ray.train.collective.broadcast_from_rank_zero(weights)
            else:
                box = [weights]
                torch.distributed.broadcast_object_list(box, src=0, group=self._group)
                weights = box[0]
        segment, self._segment, self._ref = self._segment, None, None
        self.in_force = dict(weights)
        ray.get(self.coord.record_training.remote(self.rank, segment.start, weights, os.getpid(),
                                                  self._boundary_seconds, applied_at(epoch, step)))
        return weights

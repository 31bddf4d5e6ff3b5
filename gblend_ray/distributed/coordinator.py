"""The coordinator actor: a run's G-Blend rounds, weights, trajectory and progress events.

One per run, named after it so that a restarted trainer worker finds it. At a boundary
rank 0 calls ``round(segment, checkpoint)``; the coordinator puts the round's k+1 probe
tasks on a queue, the long-lived probe trials (``probe_trials.py``, Ray Tune) take them,
run them and hand back their results, and the coordinator decides the weights
(``assembly.decide``), appends the round to the trajectory, writes ``trajectory.json``
and answers rank 0. A round asked for again (a worker group that restarted from the
boundary checkpoint, or a run resumed by a new driver) gets the recorded weights: no
round is lost or repeated.

Its state is persisted after every change — ``trajectory.json`` (the rounds) and
``trained_weights.json`` (which weights every rank trained each segment with, and from
which processes) — and reloaded when a run resumes, so a resumed run writes the files an
uninterrupted one would.

It is also the run's event queue: rank 0 posts each epoch's record, the coordinator adds
each round's, and the driver takes them in order (``events``) for its tracker and
progress lines. Nothing that records a run lives on a worker.

State (trajectory, queue, results, events) is kept apart from the I/O (the Tune thread,
``_write``) so that a test can drive the class directly, without Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.plan import Method, Segment
from ..core.spec import RunSpec
from ..storage.rundir import TRAINED, TRAJECTORY, RunDir
from ..training.assembly import decide
from ..training.probe import ProbeResult

logger = logging.getLogger("gblend_ray.coordinator")

_POLL_S = 1.0


@dataclass(frozen=True)
class ProbeTask:
    """One probe of one round: which head, from which checkpoint, for how long.
    ``checkpoint`` is the boundary's ``ray.train.Checkpoint`` (any storage)."""

    epoch: int
    head: str
    head_index: int
    probe_epochs: int
    checkpoint: Any


class ProbeRoundError(RuntimeError):
    pass


class Coordinator:
    def __init__(self, spec: RunSpec, method: Method, heads: list[str], run_dir: str | RunDir, resume: bool = False):
        self.spec, self.method, self.heads = spec, method, list(heads)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self._cond = threading.Condition()
        self._trajectory: list[dict] = self.run.read_json(TRAJECTORY, []) if resume else []
        self._trained: list[dict] = self.run.read_json(TRAINED, []) if resume else []
        self._queue: deque[ProbeTask] = deque()
        self._in_flight: dict[int, ProbeTask] = {}
        self._results: dict[tuple[int, str], ProbeResult] = {}
        self._running: set[int] = set()  # epochs of the rounds whose probes are out
        self._events: list[tuple[str, dict]] = []
        self._done = False
        self._failure: str | None = None
        self._probes_error: str | None = None
        self._probes_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- trainer side

    def round(self, segment: Segment, checkpoint: Any, results: dict[str, ProbeResult] | None = None) -> dict:
        """The round for ``segment``: ``{"weights", "record", "replayed"}``. A round that
        already ran is answered from its record (``replayed``); otherwise it runs, on the
        probe trials or from ``results`` that rank 0 computed inline."""
        began = time.perf_counter()
        with self._cond:
            # The same round asked again while its probes run (a worker group restarted from the
            # boundary's checkpoint while an overlapped round was in flight): it waits for that
            # round's record instead of queueing the probes a second time.
            while segment.start in self._running:
                self._cond.wait(_POLL_S)
            for record in self._trajectory:
                if record["epoch"] == segment.start:
                    logger.info("round at epoch %d already recorded; returning its weights", segment.start)
                    self._events.append(("round", dict(record)))
                    self._cond.notify_all()
                    return {"weights": dict(record["weights"]), "record": dict(record), "replayed": True}
            if results is None:
                for index, head in enumerate(self.heads):
                    self._queue.append(ProbeTask(segment.start, head, index, segment.probe_epochs, checkpoint))
                self._running.add(segment.start)
                self._cond.notify_all()
                try:
                    results = self._wait_for(segment.start)
                finally:
                    self._running.discard(segment.start)
                    self._cond.notify_all()
            previous = self._trajectory[-1]["weights"] if self._trajectory else None
            weights, record = decide(self.spec, self.method, segment, {h: results[h] for h in self.heads}, previous)
            record["round_seconds"] = time.perf_counter() - began
            self._trajectory.append(record)
            self._write(TRAJECTORY, self._trajectory)
            self._events.append(("round", dict(record)))
            self._cond.notify_all()
        logger.info("round at epoch %d: weights %s (%.2f s)", segment.start,
                    {h: round(w, 3) for h, w in weights.items()}, record["round_seconds"])
        return {"weights": weights, "record": record, "replayed": False}

    def _wait_for(self, epoch: int) -> dict[str, ProbeResult]:
        keys = [(epoch, h) for h in self.heads]
        while not all(k in self._results for k in keys):
            if self._probes_error is not None:
                raise ProbeRoundError(f"the probe trials failed, so the round at epoch {epoch} cannot finish: "
                                      f"{self._probes_error}")
            self._cond.wait(_POLL_S)
        return {h: self._results.pop((epoch, h)) for h in self.heads}

    def record_training(self, rank: int, epoch: int, weights: dict[str, float], pid: int | None = None,
                        boundary_seconds: float | None = None, applied: dict[str, int] | None = None) -> None:
        """Each rank says which weights it trains the segment at ``epoch`` with, from which
        process, how long the boundary took it (checkpoint, round, broadcast) and where the
        weights took effect (``applied``: the boundary's epoch and step 0, or with
        ``probes.overlap`` the epoch and step it switched at). A rank that trains the
        segment again (a restarted worker group, a resumed run) adds its process to the
        segment's record, whose ``applied`` is then the latest: one record per rank and
        segment. Rank 0's ``applied`` goes into the round's trajectory record."""
        with self._cond:
            record = next((t for t in self._trained if t["rank"] == rank and t["epoch"] == epoch), None)
            if record is None:
                record = {"rank": rank, "epoch": epoch, "weights": dict(weights), "pids": [], "boundary_seconds": []}
                self._trained.append(record)
            elif record["weights"] != weights:
                logger.warning("rank %d trains the segment at epoch %d again with other weights (%s, was %s)",
                               rank, epoch, weights, record["weights"])
                record["weights"] = dict(weights)
            record["pids"].append(pid)
            record["boundary_seconds"].append(boundary_seconds)
            if applied is not None:
                record["applied"] = dict(applied)
            self._write(TRAINED, self._trained)
            round_record = next((r for r in self._trajectory if r["epoch"] == epoch), None)
            if rank == 0 and applied is not None and round_record is not None and round_record.get("applied") != applied:
                round_record["applied"] = dict(applied)
                self._write(TRAJECTORY, self._trajectory)

    def post(self, kind: str, record: dict) -> None:
        """An event for the driver (rank 0 posts ``("epoch", record)`` after every epoch)."""
        with self._cond:
            self._events.append((kind, record))
            self._cond.notify_all()

    def events(self, cursor: int, wait_s: float = 1.0) -> tuple[int, list[tuple[str, dict]]]:
        """The events after the first ``cursor`` (waiting up to ``wait_s`` for one), and the
        cursor to ask from next."""
        with self._cond:
            if len(self._events) <= cursor and not self._done:
                self._cond.wait(wait_s)
            return len(self._events), list(self._events[cursor:])

    def fail(self, cause: str) -> None:
        """Rank 0 says the run failed for its own config (it diverged): the driver raises it."""
        with self._cond:
            self._failure = cause

    def failure(self) -> str | None:
        with self._cond:
            return self._failure

    def finish(self) -> list[dict]:
        """End the run: probe trials stop at their next poll. Returns the trajectory."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        if self._probes_thread is not None:
            self._probes_thread.join(timeout=120)
        return self.trajectory()

    def trajectory(self) -> list[dict]:
        with self._cond:
            return [dict(r) for r in self._trajectory]

    # ---------------------------------------------------------------- probe side

    def next_task(self, slot: int, wait_s: float = 10.0) -> ProbeTask | str | None:
        """A probe task for trial ``slot``; ``"idle"`` if none came within ``wait_s``
        (the trial asks again); None once the run is over. A slot that asks while it
        still holds a task was restarted: that task goes back on the queue first."""
        with self._cond:
            lost = self._in_flight.pop(slot, None)
            if lost is not None and (lost.epoch, lost.head) not in self._results:
                logger.warning("probe trial %d restarted; re-queueing head %r at epoch %d", slot, lost.head, lost.epoch)
                self._queue.appendleft(lost)
            deadline = time.monotonic() + wait_s
            while not self._queue and not self._done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "idle"
                self._cond.wait(remaining)
            if self._done:
                return None
            task = self._queue.popleft()
            self._in_flight[slot] = task
            return task

    def submit(self, slot: int, task: ProbeTask, result: ProbeResult) -> None:
        with self._cond:
            self._in_flight.pop(slot, None)
            self._results[(task.epoch, task.head)] = result
            self._cond.notify_all()

    # ---------------------------------------------------------------- I/O

    def start_probes(self, launch: Callable[[], None]) -> None:
        """Run ``launch`` (the Tune experiment of probe trials) in a background thread;
        if it ends before the run does, rounds waiting on it fail with its error."""

        def target() -> None:
            try:
                launch()
                if not self._done:
                    raise RuntimeError("the probe trials ended before the run did")
            except BaseException as err:  # noqa: BLE001 - any failure must reach the waiting round
                with self._cond:
                    self._probes_error = f"{type(err).__name__}: {err}"
                    self._cond.notify_all()
                logger.error("probe trials failed: %s", self._probes_error)

        self._probes_thread = threading.Thread(target=target, name="probe-trials", daemon=True)
        self._probes_thread.start()

    def _write(self, name: str, payload: list[dict]) -> None:
        self.run.write_json(name, payload)

"""The coordinator actor: a run's G-Blend rounds, weights and trajectory.

One per run, named after it so that a restarted trainer worker finds it. At a boundary
rank 0 calls ``round(epoch, ...)``; the coordinator puts the round's k+1 probe tasks on a
queue, the long-lived probe trials (``probe_trials.py``, Ray Tune) take them, run them
and hand back their results, and the coordinator decides the weights
(``assembly.decide``), appends the round to the trajectory, writes
``trajectory.json`` and answers rank 0. A round asked for again (a worker group that
restarted from the boundary checkpoint) gets the recorded weights: no round is lost
or repeated.

State (trajectory, queue, results) is kept apart from the I/O (the Tune thread,
``_write``) so that a test can drive the class directly, without Ray.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.plan import Method, Segment
from ..core.spec import RunSpec
from ..training.assembly import decide
from ..training.probe import ProbeResult

logger = logging.getLogger("gblend_ray.coordinator")

_POLL_S = 1.0


@dataclass(frozen=True)
class ProbeTask:
    """One probe of one round: which head, from which checkpoint, for how long."""

    epoch: int
    head: str
    head_index: int
    probe_epochs: int
    checkpoint_dir: str


class ProbeRoundError(RuntimeError):
    pass


class Coordinator:
    def __init__(self, spec: RunSpec, method: Method, heads: list[str], run_dir: str):
        self.spec, self.method, self.heads = spec, method, list(heads)
        self.run_dir = Path(run_dir)
        self._cond = threading.Condition()
        self._trajectory: list[dict] = []
        self._queue: deque[ProbeTask] = deque()
        self._in_flight: dict[int, ProbeTask] = {}
        self._results: dict[tuple[int, str], ProbeResult] = {}
        self._trained: list[dict] = []
        self._done = False
        self._probes_error: str | None = None
        self._probes_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- trainer side

    def round(self, segment: Segment, checkpoint_dir: str,
              results: dict[str, ProbeResult] | None = None) -> dict:
        """The round for ``segment``: ``{"weights", "record", "replayed"}``. A round that
        already ran is answered from its record (``replayed``); otherwise it runs, on the
        probe trials or from ``results`` that rank 0 computed inline."""
        began = time.perf_counter()
        with self._cond:
            for record in self._trajectory:
                if record["epoch"] == segment.start:
                    logger.info("round at epoch %d already recorded; returning its weights", segment.start)
                    return {"weights": dict(record["weights"]), "record": dict(record), "replayed": True}
            if results is None:
                for index, head in enumerate(self.heads):
                    self._queue.append(ProbeTask(segment.start, head, index, segment.probe_epochs, checkpoint_dir))
                self._cond.notify_all()
                results = self._wait_for(segment.start)
            previous = self._trajectory[-1]["weights"] if self._trajectory else None
            weights, record = decide(self.spec, self.method, segment, {h: results[h] for h in self.heads}, previous)
            record["round_seconds"] = time.perf_counter() - began
            self._trajectory.append(record)
            self._write("trajectory.json", self._trajectory)
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
                        boundary_seconds: float | None = None) -> None:
        """Each rank says which weights it trains the segment at ``epoch`` with, from which
        process (a restarted worker group shows up) and how long the boundary took it
        (checkpoint, round, broadcast)."""
        with self._cond:
            self._trained.append({"rank": rank, "epoch": epoch, "weights": dict(weights), "pid": pid,
                                  "boundary_seconds": boundary_seconds})
            self._write("trained_weights.json", self._trained)

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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / (name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
        tmp.replace(self.run_dir / name)

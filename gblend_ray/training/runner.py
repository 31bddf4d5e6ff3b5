"""The in-process runner: one whole run without Ray.

It sets the run up with ``assembly.assemble``, walks the method's plan with
``assembly.train_plan``, and runs each G-Blend round's probes one after another in this
process. It is the reference the Ray engine is tested against (same seed and config →
same weights) and the ``--inline`` mode.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from ..core.plan import Segment, fixed_weights
from ..core.spec import RunSpec
from ..data.loading import AnyDataset
from .assembly import RunObserver, assemble, decide, epoch_metrics, final_results, run_probes, train_plan, write_run

logger = logging.getLogger("gblend_ray.runner")


def run_inline(spec: RunSpec, out_dir: str | Path | None = None, dataset: AnyDataset | None = None,
               observer: RunObserver | None = None) -> dict:
    """Run one experiment in this process; write ``results.json`` and ``trajectory.json``
    to ``out_dir`` when given. Returns the results (with the trajectory under its key)."""
    began = time.perf_counter()
    a = assemble(spec, dataset, spec.train.device)
    trajectory: list[dict] = []

    def weights_for(segment: Segment) -> dict[str, float]:
        if not segment.estimates:
            return fixed_weights(a.method, a.model.modalities, segment.phase)
        previous = trajectory[-1]["weights"] if trajectory else None
        weights, record = decide(spec, a.method, segment, run_probes(spec, a.model, a.data, segment), previous)
        trajectory.append(record)
        if observer is not None:
            observer.on_round(record)
        logger.info("epoch %d: weights %s", segment.start, {h: round(w, 3) for h, w in weights.items()})
        return weights

    with tempfile.TemporaryDirectory(prefix="gblend-pretrained-") as scratch:
        history = train_plan(a, a.model, weights_for, monitor=lambda: epoch_metrics(a.model, a.data),
                             on_epoch=observer.on_epoch if observer is not None else None,
                             pretrained_dir=Path(out_dir) / "pretrained" if out_dir is not None else Path(scratch))
    results = final_results(a, trajectory, history, time.perf_counter() - began)
    if observer is not None:
        observer.on_end(results)
    if out_dir is not None:
        write_run(out_dir, results, trajectory)
    return {**results, "trajectory": trajectory}

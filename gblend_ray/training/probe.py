"""A G-Blend probe (Algorithm 1, GB_Estimate, for one head).

From a checkpoint, measure the head on T' and V, train a copy on T with that head's
loss alone for n epochs, and measure again. A uni-modal probe's optimizer holds only
its modality's encoder and head, so nothing else moves (not even through weight decay);
the fused probe trains every encoder, the fusion and the fused head. Training goes
through ``engine.train_epochs``, the same loop as the main run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.blend import Measurement
from ..core.spec import OptimSpec
from ..data.sources import BatchSource
from .compute import FP32, Compute
from .engine import evaluate, make_optimizer, train_epochs
from .model import MultiHeadNet


def _metric_key(metric: str, result: dict[str, float]) -> str:
    """What ``blend.metric`` reads from a head's metrics: its loss, or the task's accuracy
    (top-1 for a multi-class task, mAP for a multi-label one, where top-1 is undefined)."""
    if metric == "loss":
        return "loss"
    return "top1" if "top1" in result else "mAP"


@dataclass(frozen=True)
class ProbeResult:
    head: str
    measurement: Measurement
    seconds: float
    """Compute time of the probe: measuring, training, measuring again."""
    started: float = 0.0
    ended: float = 0.0
    """Wall-clock start and end (``time.time()``), to see probes overlap."""
    train_samples: int = 0
    """Samples of T the probe trained on (all of T unless ``probes.subset`` < 1)."""

    def info(self) -> dict[str, float]:
        return {"probe_seconds": self.seconds, "probe_started": self.started, "probe_ended": self.ended,
                "probe_train_samples": self.train_samples}


def probe_seed(seed: int, epoch: int, head_index: int) -> int:
    """Data-order seed of one probe: fixed by the run's seed, the boundary and the head,
    so that every engine (in-process or Ray) runs the same probe."""
    return seed * 1_000 + epoch * 10 + head_index + 1


def measure(model: MultiHeadNet, head: str, train_subset: BatchSource, heldout: BatchSource,
            metric: str, batch_size: int = 1024, compute: Compute = FP32) -> tuple[float, float]:
    """The head's metric (``loss`` or ``accuracy``: top-1, multi-label mAP) on T' and on V."""
    on_train = evaluate(model, train_subset, [head], batch_size, compute)[head]
    on_val = evaluate(model, heldout, [head], batch_size, compute)[head]
    key = _metric_key(metric, on_train)
    return on_train[key], on_val[key]


def run_probe(
    model: MultiHeadNet,
    head: str,
    *,
    train: BatchSource,
    train_subset: BatchSource,
    heldout: BatchSource,
    optim: OptimSpec,
    epochs: int,
    start_epoch: int,
    seed: int,
    metric: str = "loss",
    batch_size: int = 64,
    lr_at: Callable[[int], float] | None = None,
    compute: Compute = FP32,
) -> ProbeResult:
    """Run one probe on ``model``, which it trains in place: pass a copy of the checkpoint.

    The optimizer is fresh (Algorithm 1 copies the weights, not the optimizer state) and
    of the main run's kind; ``lr_at`` continues the main run's learning-rate schedule
    from ``start_epoch``. ``compute`` is the main run's (``train.precision``,
    ``train.channels_last``): a probe computes as the run it estimates for; with fp16 its
    loss scale starts fresh, as its optimizer does.
    """
    began, started = time.perf_counter(), time.time()
    train_before, val_before = measure(model, head, train_subset, heldout, metric, compute=compute)
    optimizer = make_optimizer(model.parameters_of(head), optim)
    train_epochs(model, train, optimizer, {head: 1.0}, epochs, start_epoch=start_epoch,
                 batch_size=batch_size, seed=seed, lr_at=lr_at, compute=compute)
    train_after, val_after = measure(model, head, train_subset, heldout, metric, compute=compute)
    return ProbeResult(head, Measurement(train_before, val_before, train_after, val_after),
                       time.perf_counter() - began, started, time.time(), len(train))

"""What one G-Blend estimation round decides, and the trajectory record it leaves.

Given the probes' measurements at a boundary, ``decide_round`` computes the weights
(eq. 6, via ``blend.estimate``), applies the prediction-head safeguard, and returns
the weights to train the next super-epoch with and a JSON-ready record of the round.
Pure Python: the in-process runner and the Ray coordinator share it.

The prediction head must learn (DESIGN §2). When its estimated weight falls below
``STARVED`` (typically G ≤ 0: with the loss metric over a long horizon an over-confident
fused probe can end with a higher validation loss while its accuracy rose), the round
is marked ``prediction_head_starved`` and logged, and the configured safeguard acts:

- ``floor`` (default): its weight is raised to ``floor`` and the others scaled to keep
  the sum 1 (whenever it is below ``floor``, starved or not).
- ``head_train``: the prediction head's own parameters always train at full weight on
  detached features, whatever its blend weight; the weights the blend puts on the
  encoders are left as estimated.
- ``none``: nothing; a starved fused head stays untrained (for ablations only).
"""

from __future__ import annotations

import logging
import math

from .blend import Measurement, estimate, floor_weight, ogr
from .spec import SAFEGUARDS, BlendSpec

logger = logging.getLogger("gblend_ray.rounds")

STARVED = 1e-3
"""A prediction-head weight below this counts as starved."""



def decide_round(
    measurements: dict[str, Measurement],
    blend: BlendSpec,
    *,
    epoch: int,
    probe_epochs: int,
    prediction_head: str,
    previous: dict[str, float] | None = None,
    probe_info: dict[str, dict] | None = None,
) -> tuple[dict[str, float], dict]:
    """Return (weights for the next super-epoch, the round's trajectory record).

    ``probe_info`` adds per-head facts to the record (the probe's compute seconds, its
    start and end times)."""
    if blend.safeguard not in SAFEGUARDS:
        raise ValueError(f"blend.safeguard must be one of {SAFEGUARDS}, got {blend.safeguard!r}")
    est = estimate(measurements, metric=blend.metric, eps=blend.eps, previous=previous)
    weights = dict(est.weights)
    starved = weights[prediction_head] < STARVED
    applied = None
    if starved:
        logger.warning(
            "round at epoch %d: the prediction head %r got weight %.3g (G=%.4g); safeguard %r",
            epoch, prediction_head, weights[prediction_head], est.heads[prediction_head].G, blend.safeguard,
        )
        if blend.safeguard != "none":
            applied = blend.safeguard
    if blend.safeguard == "floor" and weights[prediction_head] < blend.floor:
        weights = floor_weight(weights, prediction_head, blend.floor)
        applied = "floor"
    record = {
        "epoch": epoch,
        "probe_epochs": probe_epochs,
        "metric": blend.metric,
        "heads": {
            head: {
                "train_before": m.train_before,
                "val_before": m.val_before,
                "train_after": m.train_after,
                "val_after": m.val_after,
                "G": est.heads[head].G,
                "dO": est.heads[head].dO,
                "ogr": _finite_or_none(ogr(m, blend.metric)),
                "estimated_weight": est.weights[head],
                "weight": weights[head],
                **((probe_info or {}).get(head, {})),
            }
            for head, m in measurements.items()
        },
        "weights": weights,
        "fallback": est.fallback,
        "prediction_head_starved": starved,
        "safeguard": applied,
    }
    return weights, record


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None

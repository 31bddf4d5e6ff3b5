"""Pure-math layer of Gradient-Blending (G-Blend).

Wang, Tran, Feiszli, "What Makes Training Multi-modal Classification Networks
Hard?", CVPR 2020.  This module turns the four numbers measured by one probe of
Algorithm 1 (a metric on the held-out train subset T' and on the validation set
V, before and after n epochs) into overfitting, generalization, the
overfitting-to-generalization ratio (OGR, eq. 3) and the blending weights of
eq. 6 that scale the per-head losses in eq. 7 (L_blend = sum_i w_i L_i).

No torch and no ray here on purpose: everything is plain floats so that the
trainer, the Ray driver and the tests can share one auditable implementation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from .spec import BLEND_METRICS as METRICS

logger = logging.getLogger("gblend_ray.blend")

# Weights arrive from JSON checkpoints and user config, so an exact sum of 1 is
# too strict; anything further off than this is a real bug, not rounding.
_SUM_TOL = 1e-6


@dataclass(frozen=True)
class Measurement:
    """Four numbers of one probe (Algorithm 1): metric on T' and V before and after n epochs."""

    train_before: float
    val_before: float
    train_after: float
    val_after: float


@dataclass(frozen=True)
class HeadEstimate:
    """Per-head intermediate quantities of eq. 6, kept for logging and audits."""

    G: float
    dO: float
    ogr: float
    raw: float
    weight: float


@dataclass(frozen=True)
class Estimate:
    """Result of :func:`estimate`: normalised weights plus how they were reached."""

    weights: dict[str, float]
    heads: dict[str, HeadEstimate]
    fallback: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view; a non-finite OGR (G == 0) becomes None since JSON has no inf."""
        heads = {
            name: {
                "G": h.G,
                "dO": h.dO,
                "ogr": h.ogr if math.isfinite(h.ogr) else None,
                "raw": h.raw,
                "weight": h.weight,
            }
            for name, h in self.heads.items()
        }
        return {"weights": dict(self.weights), "heads": heads, "fallback": self.fallback}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def overfitting(train: float, val: float, metric: str = "loss") -> float:
    """Overfitting O = L_V - L_T for a loss, O = A_T - A_V for an accuracy (Sec. 3.3).

    The accuracy form flips the sign so that, for both metrics, a larger O
    means a wider train/validation gap.
    """
    _check_metric(metric)
    return val - train if metric == "loss" else train - val


def generalization(m: Measurement, metric: str = "loss") -> float:
    """Generalization G = L_V(before) - L_V(after) (loss) or A_V(after) - A_V(before) (accuracy).

    This is the Delta-G of eq. 3; positive means validation improved.
    """
    _check_metric(metric)
    if metric == "loss":
        return m.val_before - m.val_after
    return m.val_after - m.val_before


def overfitting_change(m: Measurement, metric: str = "loss") -> float:
    """Change in overfitting Delta-O = O(after) - O(before), the numerator of eq. 3."""
    return overfitting(m.train_after, m.val_after, metric) - overfitting(
        m.train_before, m.val_before, metric
    )


def ogr(m: Measurement, metric: str = "loss") -> float:
    """Overfitting-to-generalization ratio |Delta-O / Delta-G| (eq. 3).

    Returns ``math.inf`` when G == 0 (including the 0/0 case): a probe that
    did not generalise at all is treated as infinitely overfitting rather than
    raising, because this value is diagnostic only and never enters eq. 6.
    """
    g = generalization(m, metric)
    if g == 0:
        return math.inf
    return abs(overfitting_change(m, metric) / g)


def _check_measurement(head: str, m: Measurement) -> None:
    if not isinstance(m, Measurement):
        raise TypeError(f"probe for head {head!r}: expected Measurement, got {type(m).__name__}")
    # One NaN would silently poison the normalisation of every head's weight.
    for f in dataclasses.fields(m):
        value = getattr(m, f.name)
        if not math.isfinite(value):
            raise ValueError(f"probe for head {head!r}: {f.name} is {value}")


def _check_weights(weights: dict[str, float], what: str) -> None:
    for head, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{what} weight for head {head!r} must be finite and >= 0, got {w}")
    total = sum(weights.values())
    if abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"{what} weights must sum to 1, got {total!r}")


def _check_previous(previous: dict[str, float], heads: list[str]) -> None:
    missing = [h for h in heads if h not in previous]
    extra = [h for h in previous if h not in heads]
    if missing:
        raise ValueError(f"previous weights are missing head(s) {missing}")
    if extra:
        raise ValueError(f"previous weights have extra head(s) {extra} not in measurements")
    _check_weights(previous, "previous")


def estimate(
    measurements: dict[str, Measurement],
    metric: str = "loss",
    eps: float = 1e-8,
    previous: dict[str, float] | None = None,
) -> Estimate:
    """Blending weights w_i = G_i / (Z * Delta-O_i^2) of eq. 6, with Z making them sum to 1.

    The denominator is Delta-O_i^2 + eps so a head whose overfitting did not
    move still gets a finite weight.  Heads with G_i <= 0 get weight 0: eq. 6
    assumes positive generalization, and a negative weight would make eq. 7
    reward the head for getting worse.  When every G_i <= 0 there is nothing to
    normalise, so the weights fall back to ``previous`` (online G-Blend keeps
    the last good estimate) or to uniform 1/k (offline, ``previous=None``).

    Raises ValueError on an empty input, an unknown metric, eps < 0, a
    non-finite probe value, eps == 0 with Delta-O == 0 and G > 0, or invalid
    ``previous`` weights (checked up front even when not needed, so a bad
    config fails on the first probe rather than the first bad one).
    """
    _check_metric(metric)
    if not measurements:
        raise ValueError("measurements is empty: need at least one head")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    heads = list(measurements)
    for head in heads:
        _check_measurement(head, measurements[head])
    if previous is not None:
        _check_previous(previous, heads)

    gs: dict[str, float] = {}
    dos: dict[str, float] = {}
    raws: dict[str, float] = {}
    for head in heads:
        m = measurements[head]
        g = generalization(m, metric)
        do = overfitting_change(m, metric)
        gs[head], dos[head] = g, do
        if g <= 0:
            logger.info("head %r: G=%.6g <= 0, weight set to 0", head, g)
            raws[head] = 0.0
            continue
        denom = do * do + eps
        if denom == 0:
            raise ValueError(
                f"head {head!r}: overfitting change dO is 0 with G={g:.6g} > 0 and eps=0; "
                "set eps > 0 to keep the weight finite"
            )
        raw = g / denom
        if not math.isfinite(raw):
            raise ValueError(f"head {head!r}: raw weight G/(dO^2+eps) overflowed; increase eps")
        raws[head] = raw

    peak = max(raws.values())
    fallback: str | None = None
    if peak > 0:
        # Dividing by the peak first keeps the sum from overflowing when eps is
        # tiny and some dO is 0 (raw can then be ~1e8 * G or far larger).
        scaled = {h: r / peak for h, r in raws.items()}
        total = sum(scaled.values())
        weights = {h: scaled[h] / total for h in heads}
    elif previous is not None:
        fallback = "previous"
        total = sum(previous.values())
        weights = {h: previous[h] / total for h in heads}
        logger.warning("every head has G <= 0 (%s); keeping previous weights %s", gs, weights)
    else:
        fallback = "uniform"
        weights = {h: 1.0 / len(heads) for h in heads}
        logger.warning("every head has G <= 0 (%s); falling back to uniform weights", gs)

    details = {
        h: HeadEstimate(
            G=gs[h], dO=dos[h], ogr=ogr(measurements[h], metric), raw=raws[h], weight=weights[h]
        )
        for h in heads
    }
    logger.debug("G-Blend estimate (%s): %s", metric, weights)
    return Estimate(weights=weights, heads=details, fallback=fallback)


def floor_weight(weights: dict[str, float], head: str, floor: float) -> dict[str, float]:
    """Keep ``head`` (the fused prediction head) at weight >= ``floor`` in eq. 7.

    Eq. 6 can drive the fused head's weight to ~0, which would stop training
    the very head used at inference.  If weights[head] < floor it is raised to
    floor and every other head is scaled by the same factor so the total stays
    1 (their relative proportions from eq. 6 are preserved).  If every other
    head is 0 the head takes all the weight.  Weights already at or above the
    floor are returned unchanged (as a copy).
    """
    if not (0.0 <= floor <= 1.0):
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    if head not in weights:
        raise ValueError(f"head {head!r} not in weights {list(weights)}")
    _check_weights(weights, "input")
    if weights[head] >= floor:
        return dict(weights)
    others = sum(w for h, w in weights.items() if h != head)
    if others == 0:
        return {h: (1.0 if h == head else 0.0) for h in weights}
    scale = (1.0 - floor) / others
    return {h: (floor if h == head else w * scale) for h, w in weights.items()}

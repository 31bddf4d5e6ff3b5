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


def warmup_weights(blend: BlendSpec, heads: list[str], prediction_head: str) -> dict[str, float]:
    """The weights an overlapped run (``probes.overlap``) trains with before the warm-up
    round's estimate arrives: uniform over the heads (the ``aux`` baseline, and what
    ``blend.estimate`` falls back to at a first round), with the ``floor`` safeguard
    applied as a round would apply it (with four or more heads uniform is below 0.3)."""
    weights = {h: 1.0 / len(heads) for h in heads}
    if blend.safeguard == "floor":
        weights = floor_weight(weights, prediction_head, blend.floor)
    return weights


def applied_at(epoch: int, step: int) -> dict[str, int]:
    """Where a round's weights took effect, as its trajectory record says (``applied``):
    the 0-based epoch being trained and the step within it (its steps before ``step`` had
    the previous weights). Algorithm 3 exactly: the round's boundary, step 0."""
    return {"epoch": epoch, "step": step}


def estimation_summary(trajectory: list[dict]) -> dict | None:
    """What a G-Blend run's rounds actually estimated, from its trajectory records; None
    for a run without rounds.

    A round *fell back* when every head had G <= 0 (``blend.estimate`` kept the previous
    weights, or took uniform ones at the first round); the safeguard *rewrote* a round
    when it changed the estimated weights (``safeguard`` set). ``status`` is ``estimated``
    (no round fell back), ``partial`` or ``none`` (every round fell back: the run trained
    with fallback weights throughout, uniform ones being the ``aux`` baseline). ``label``
    says so in one line, for results, the terminal and reports; None when every round
    was estimated and none rewritten."""
    if not trajectory:
        return None
    n = len(trajectory)
    uniform = sum(r.get("fallback") == "uniform" for r in trajectory)
    previous = sum(r.get("fallback") == "previous" for r in trajectory)
    fell = uniform + previous
    rewritten = [r["safeguard"] for r in trajectory if r.get("safeguard")]
    status = "estimated" if fell == 0 else "none" if fell == n else "partial"
    parts = []
    if status == "none":
        heads = len(trajectory[0]["weights"])
        even = all(abs(w - 1 / heads) < 1e-9 for r in trajectory for w in r["weights"].values())
        what = "uniform weights (= aux)" if even else "the fallback weights"
        parts.append(f"no estimate: every G <= 0 in {_rounds(n, n)}; trained with {what}")
    elif status == "partial":
        parts.append(f"{_rounds(fell, n)} fell back (every G <= 0: weights kept)")
    if rewritten:
        kinds = "/".join(sorted(set(rewritten)))
        parts.append(f"safeguard {kinds} rewrote {_rounds(len(rewritten), n)}")
    return {"rounds": n, "estimated": n - fell, "fallback_uniform": uniform, "fallback_previous": previous,
            "safeguard_rewrote": len(rewritten), "status": status, "label": "; ".join(parts) or None}


def _rounds(k: int, n: int) -> str:
    return f"{k} of {n} rounds" if n > 1 else "its round"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None

"""Four modality-balancing methods beside G-Blend: their per-step math as functions on
tensors, and each method as a step rule of the engine's one loop (``OGMRule``, ``PMRRule``,
``AGMRule``, ``MMParetoRule``; ``objective.py``), chosen by ``balancing_rule``.

Each follows the authors' released code (named in its module), not BalanceBenchmark's
re-implementations; where the paper and the code differ the module says which is followed.

- ``ogm``: OGM-GE (Peng et al., CVPR 2022): slows the dominant encoder's gradients, adds noise.
- ``pmr``: PMR (Fan et al., CVPR 2023): a prototype cross-entropy for the weaker modality.
- ``agm``: AGM (Li et al., ICCV 2023): Shapley mono-modal responses, gradient scaling κ^m.
- ``mmpareto``: MMPareto (Wei & Hu, ICML 2024): min-norm combination of each encoder's fused
  and unimodal gradients, rescaled.

Modalities are the keys of dicts, as in ``MultiHeadNet``'s outputs. The authors' code handles two
modalities; for M > 2 every method here compares a modality with the mean of the others, our
extension, which reduces exactly to the official rule for M = 2. Coefficients stay 0-d tensors
on the data's device, so no training step needs a host synchronisation (``Prototypes``' pass over
the data, once an epoch, does).
"""

from ...core.plan import Method
from ...core.spec import RunSpec
from ..objective import StepRule
from ._common import mean_of_others, target_prob_sum
from .agm import (
    AGMRule,
    RunningScores,
    agm_coefficients,
    agm_responses,
    agm_scores,
    clip_if_large_,
    coalitions,
    mask_inputs,
    modulated_output,
    scale_grad,
    shapley_responses,
)
from .mmpareto import GAMMA, MMParetoRule, min_norm_2, mmpareto_gradients, pareto_rescale, pareto_weights
from .ogm import (
    OGMRule,
    linear_modality_logits,
    modulate_gradients_,
    ogm_coefficients,
    ogm_parameters,
    ogm_ratios,
    ogm_scores,
)
from .pmr import PMRRule, Prototypes, pmr_coefficients, prototype_logits, prototype_loss

__all__ = [
    "GAMMA",
    "AGMRule",
    "MMParetoRule",
    "OGMRule",
    "PMRRule",
    "Prototypes",
    "RunningScores",
    "agm_coefficients",
    "agm_responses",
    "agm_scores",
    "balancing_rule",
    "clip_if_large_",
    "coalitions",
    "linear_modality_logits",
    "mask_inputs",
    "mean_of_others",
    "min_norm_2",
    "mmpareto_gradients",
    "modulate_gradients_",
    "modulated_output",
    "ogm_coefficients",
    "ogm_parameters",
    "ogm_ratios",
    "ogm_scores",
    "pareto_rescale",
    "pareto_weights",
    "pmr_coefficients",
    "prototype_logits",
    "prototype_loss",
    "scale_grad",
    "shapley_responses",
    "target_prob_sum",
]


def balancing_rule(spec: RunSpec, method: Method, core, num_classes: int, task: str = "multiclass") -> StepRule | None:
    """The engine's step rule (``objective.py``) for a balancing method, with its settings
    from ``spec.balancing``; None for any other method (G-Blend and the baselines train
    with the engine's ``BlendRule``)."""
    kind, b = method.kind, spec.balancing
    if kind not in ("ogm_ge", "ogm", "pmr", "agm", "mmpareto"):
        return None
    if task != "multiclass":
        raise ValueError(f"method {kind!r} scores the softmax probability of each sample's class, so it needs a "
                         f"multiclass data set; this one is {task}")
    if kind in ("ogm_ge", "ogm"):
        o = b.ogm
        return OGMRule(core, alpha=o.alpha, ge=kind == "ogm_ge", starts=o.modulation_starts, ends=o.modulation_ends,
                       scores=o.scores, params=o.params)
    if kind == "pmr":
        p = b.pmr
        return PMRRule(core, num_classes, alpha=p.alpha, momentum=p.momentum, fraction=p.prototype_fraction,
                       starts=p.modulation_starts, ends=p.modulation_ends)
    if kind == "agm":
        return AGMRule(core, alpha=b.agm.alpha, starts=b.agm.modulation_starts, ends=b.agm.modulation_ends)
    return MMParetoRule(core, gamma=b.mmpareto.gamma)

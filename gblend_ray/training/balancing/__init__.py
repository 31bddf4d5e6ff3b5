"""The per-step math of four modality-balancing methods beside G-Blend, as functions on tensors.

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

from ._common import mean_of_others, target_prob_sum
from .agm import (
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
from .mmpareto import GAMMA, min_norm_2, mmpareto_gradients, pareto_rescale, pareto_weights
from .ogm import (
    linear_modality_logits,
    modulate_gradients_,
    ogm_coefficients,
    ogm_parameters,
    ogm_ratios,
    ogm_scores,
)
from .pmr import Prototypes, pmr_coefficients, prototype_logits, prototype_loss

__all__ = [
    "GAMMA",
    "Prototypes",
    "RunningScores",
    "agm_coefficients",
    "agm_responses",
    "agm_scores",
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

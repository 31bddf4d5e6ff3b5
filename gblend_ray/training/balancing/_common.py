"""What OGM-GE, PMR and AGM share: a modality's score on a batch and the mean of the
other modalities' scores (our extension of the two-modality ratios to M > 2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def check_class_targets(targets: torch.Tensor, method: str) -> None:
    """The balancing scores are softmax probabilities of a class index: refuse 0/1 multi-label targets."""
    if targets.dtype.is_floating_point:
        raise ValueError(f"{method} scores a softmax probability of the true class, so it needs class-index "
                         f"targets; got {targets.dtype} targets (multi-label 0/1 targets are not supported)")


def target_prob_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``s = Σ_i softmax(z_i)[y_i]``, a 0-d tensor cut from the graph.

    OGM-GE's score (official ``main.py``, ``train_epoch``: ``score_a = sum(softmax(out_a)[i][label[i]])``)
    and PMR's, on prototype logits (``main_Prototype_grad.py``: ``score_a_p``). Both only read it
    to choose coefficients, so no gradient flows through it."""
    check_class_targets(targets, "this score")
    # fp32 under autocast too: a sum of a batch's probabilities in bf16 keeps 2-3 digits
    probs = torch.softmax(logits.detach().float(), dim=1)
    return probs.gather(1, targets.long().view(-1, 1)).sum()


def mean_of_others(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``mean_{j≠m} v^j`` for every modality m. With two modalities it is the other one's
    value itself (no subtraction from a total, so the M = 2 ratios are exactly the official ones)."""
    if len(values) < 2:
        raise ValueError(f"balancing compares modalities and needs at least two; got {list(values)}")
    return {m: torch.stack([torch.as_tensor(v) for j, v in values.items() if j != m]).mean(dim=0) for m in values}

"""PMR: prototypical modal rebalance (Fan et al., CVPR 2023).

Official code: fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py`` (``EU_dist``,
``train_epoch``, ``calculate_prototype``). Each modality's features are classified by their
distance to class prototypes; the modality whose prototype classification is worse gets a
prototype cross-entropy ``α · CE(−d, y)`` added to the fused loss. It reads encoder features
only, so it works with any fusion.

Implemented as released: the paper's entropy regulariser on the prototype distribution is
not in the official code and not here.

For M > 2 (ours): ``ρ^m = s^m / mean_{j≠m} s^j`` and every modality with ``ρ^m < 1`` gets the
prototype loss at weight α. With two modalities this is exactly the official rule (the weaker
one gets α, neither at equality).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ._common import check_class_targets, mean_of_others


class Prototypes:
    """One modality's class prototypes ``c_k`` (class-k mean of the features), smoothed across
    recomputations: ``c ← (1 − μ) c_new + μ c_old`` (official ``calculate_prototype``, μ =
    ``momentum_coef`` = 0.2).

    ``add`` the features of some batches (the official code: eval mode, no gradients, the
    first ~10% of the training batches), then ``update``. ``value`` (classes × dim) is the
    prototypes in use, None before the first ``update``.
    """

    def __init__(self, num_classes: int, momentum: float = 0.2):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"prototype momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.value: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate a batch's features (batch × dim) under its class labels."""
        check_class_targets(labels, "PMR")
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        if self._sums is None:
            self._sums = features.new_zeros(self.num_classes, features.shape[1])
            self._counts = features.new_zeros(self.num_classes)
        self._sums.index_add_(0, labels, features.detach().to(self._sums.dtype))
        self._counts.index_add_(0, labels, torch.ones_like(labels, dtype=self._counts.dtype))

    @torch.no_grad()
    def update(self) -> torch.Tensor:
        """Turn the accumulated features into class means, smooth them into ``value`` and start
        a new accumulation. The first update takes the means as they are.

        A class with no sample keeps its previous prototype (the official code divides by a
        zero count: NaN); with no previous prototype that is an error."""
        if self._sums is None:
            raise ValueError("no features were added since the last prototype update")
        seen = self._counts > 0
        new = self._sums / self._counts.clamp_min(1).unsqueeze(1)
        if self.value is None:
            if not bool(seen.all()):
                missing = (~seen).nonzero().flatten().tolist()
                raise ValueError(f"classes {missing} have no sample among the features added, so they have no "
                                 "prototype; add more batches (e.g. a larger share of the training set)")
            value = new
        else:
            smoothed = (1 - self.momentum) * new + self.momentum * self.value.to(new)
            value = torch.where(seen.unsqueeze(1), smoothed, self.value.to(new))
        self.value, self._sums, self._counts = value, None, None
        return value


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``−‖φ_i − c_k‖₂`` (batch × classes): softmax over k is PMR's prototype probability p_i
    (official ``audio_sim = -EU_dist(a, audio_proto)``, a square-rooted Euclidean distance).

    Differentiable in the features (the prototype loss trains the encoder); the prototypes are
    constants. ``torch.cdist``'s gradient at a zero distance is 0, where ``sqrt`` of a dot
    product (the official code) gives NaN."""
    return -torch.cdist(features, prototypes.detach().to(features), compute_mode="donot_use_mm_for_euclid_dist")


def pmr_coefficients(scores: Mapping[str, torch.Tensor], alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """Each modality's prototype-loss weight from its prototype score ``s^m = Σ_i p^m_i[y_i]``.

    Two modalities (official ``train_epoch``): ``ρ = s^a / s^v``; ``(β, λ) = (0, α)`` if ρ > 1,
    ``(α, 0)`` if ρ < 1, ``(0, 0)`` if ρ = 1: the weaker modality alone gets the loss.
    M > 2 (ours): α for every m whose score is below the mean of the others' (``ρ^m < 1``).
    The comparison is made on the scores, ``s^m < mean_{j≠m} s^j``, which is ``ρ^m < 1``
    without the rounding of a division."""
    others = mean_of_others(scores)
    return {m: torch.where(torch.as_tensor(s) < others[m], alpha, 0.0).to(others[m].dtype)
            for m, s in scores.items()}


def prototype_loss(logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                   coefficients: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """``Σ_m w^m · CE(−d^m, y)``, the term PMR adds to the fused loss (official
    ``loss = CE(out) + beta * loss_proto_a + lam * loss_proto_v``), from each modality's
    ``prototype_logits`` and ``pmr_coefficients``."""
    check_class_targets(targets, "PMR")
    return sum(torch.as_tensor(coefficients[m]) * F.cross_entropy(z, targets) for m, z in logits.items())

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

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...core.plan import FUSED
from ..engine import batch_order, to_device
from ..model import FEATURES
from ..objective import Diagnostics, StepContext, StepRule, head_loss, in_window
from ._common import check_class_targets, mean_of_others, target_prob_sum


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
        if self._sums is None:  # at least fp32: features from an autocast pass are bf16 or fp16
            dtype = torch.promote_types(features.dtype, torch.float32)
            self._sums = features.new_zeros(self.num_classes, features.shape[1], dtype=dtype)
            self._counts = features.new_zeros(self.num_classes, dtype=dtype)
        self._sums.index_add_(0, labels, features.detach().to(self._sums.dtype))
        self._counts.index_add_(0, labels, torch.ones_like(labels, dtype=self._counts.dtype))

    @torch.no_grad()
    def update(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Turn the accumulated features into class means, smooth them into ``value`` and start
        a new accumulation. The first update takes the means as they are. ``reduce`` (under
        DDP: a sum over the ranks) is applied to the per-class sums and counts first, so that
        every rank makes the same prototypes from all ranks' batches.

        A class with no sample keeps its previous prototype (the official code divides by a
        zero count: NaN); with no previous prototype that is an error."""
        if self._sums is None:
            raise ValueError("no features were added since the last prototype update")
        if reduce is not None:
            self._sums, self._counts = reduce(self._sums), reduce(self._counts)
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


class PMRRule(StepRule):
    """PMR as the engine's step rule (``objective.py``): the fused loss plus, in the
    modulation window, ``α · CE(−d^m, y)`` for the modality (or modalities) whose prototype
    score is behind.

    The prototypes are made before the first epoch and after every epoch, in eval mode
    without gradients, from the features of the first ``fraction`` of that epoch's training
    batches; under DDP the per-class sums and counts are summed over the ranks first, and so
    are the batch scores, so every rank has the same prototypes and the same choice. Features
    come from the fused forward pass itself (no extra pass), so the prototype loss trains the
    encoders through DDP's ordinary gradient reduction. Any fusion works: only encoder
    features are read."""

    name = "pmr"

    def __init__(self, core: nn.Module, num_classes: int, *, alpha: float, momentum: float, fraction: float,
                 starts: int, ends: int | None):
        self.alpha, self.fraction, self.starts, self.ends = alpha, fraction, starts, ends
        self.modalities = list(core.modalities)
        self.prototypes = {m: Prototypes(num_classes, momentum) for m in self.modalities}
        self._stats = Diagnostics(self.name)

    @torch.no_grad()
    def refresh(self, ctx: StepContext, epoch: int) -> None:
        """New prototypes from ``fraction`` of ``epoch``'s training batches (official
        ``calculate_prototype``: eval mode, the first ~10% of the train loader's batches)."""
        order = batch_order(len(ctx.data), ctx.batch_size, ctx.seed, epoch, ctx.rank, ctx.world_size)
        order = order[:max(1, math.ceil(self.fraction * len(order)))]
        core, was_training = ctx.core, ctx.core.training
        core.eval()
        try:
            for batch in ctx.data.batches(order, train=True, epoch=epoch):
                inputs, targets = to_device(ctx.device, batch, ctx.compute.channels_last)
                with ctx.autocast():
                    out = core(inputs, heads=[], features=True)
                for m in self.modalities:
                    self.prototypes[m].add(out[m + FEATURES], targets)
        finally:
            core.train(was_training)
        for p in self.prototypes.values():
            p.update(reduce=lambda t: ctx.all_reduce(t, "sum"))

    def begin_epoch(self, ctx: StepContext) -> None:
        if any(p.value is None for p in self.prototypes.values()):
            self.refresh(ctx, ctx.epoch)  # the official code makes them once before training

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        out = ctx.model(inputs, heads=[FUSED], features=True)
        fused = head_loss(out[FUSED], targets)
        logits = {m: prototype_logits(out[m + FEATURES], self.prototypes[m].value) for m in self.modalities}
        local = torch.stack([target_prob_sum(logits[m], targets) for m in self.modalities])
        scores = dict(zip(self.modalities, ctx.all_reduce(local, "sum")))
        on = in_window(ctx.epoch, self.starts, self.ends)
        weights = pmr_coefficients(scores, self.alpha if on else 0.0)
        proto = prototype_loss(logits, targets, weights)
        others = mean_of_others(scores)
        for m in self.modalities:
            self._stats.add(f"rho/{m}", scores[m] / others[m])
            self._stats.add(f"proto_loss/{m}", (weights[m] > 0).float())
        return {FUSED: fused, "total": fused + proto, "blend": fused, "prototype": proto}

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        self.refresh(ctx, ctx.epoch)  # official: recomputed after every epoch
        return self._stats.epoch_means()


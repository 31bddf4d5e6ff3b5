"""AGM: adaptive gradient modulation (Li et al., ICCV 2023).

Official code: lihong2303/AGM_ICCV2023, ``run/CREMAD_main.py`` (``train``) and
``model/CREMAD_net.py`` (``GradMod``). Each modality's mono-modal response is a Shapley value of
the fused model over modality subsets (absent inputs replaced by zeros); its score is the
cross-entropy of that response; the gradient flowing into each response is multiplied by
``κ^m``, which grows when a modality's score falls behind its running mean relative to the
other's.

How the official step runs (for whoever wires these functions into a loop): the full pass
``f(a, v)`` in train mode, then the masked passes ``f(a, 0)``, ``f(0, v)`` in eval mode but
with gradients (``GradMod.forward``); the loss is CE on ``Σ_m scale_grad(o^m, κ^m)``, which
equals ``f(a, v)`` in value. The scores' running means are updated on every step, also
outside the modulation epochs, and the clip rule (``clip_if_large_``) runs on every step.

For M > 2 (ours): the responses are the Shapley values over all ``2^M − 1`` masked passes
(``shapley_responses``) and each modality is compared with the mean of the others:
``r^m = exp(mean_{j≠m} s^j − s^m)``, which for M = 2 is the official ``r^a = exp(s^v − s^a)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from ...core.plan import FUSED
from ..objective import Diagnostics, StepContext, StepRule, head_loss, in_window, last_linear
from ._common import check_class_targets, mean_of_others

PROB_FLOOR = 1e-8
"""Smallest true-class probability a score takes the log of (official: ``p < 1e-8`` scores ``−log 1e-8``)."""
RATIO_CAP = 10.0
"""Cap on ``r̄ − r`` in the exponent of κ (official ``min(optimal_ratio_a - ratio_a, 10)``)."""


def agm_responses(f_av: torch.Tensor, f_a0: torch.Tensor, f_0v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-modality responses ``o^a = ½[f(a,v) − f(0,v) + f(a,0)]``, ``o^v = ½[f(a,v) − f(a,0) + f(0,v)]``
    (official ``out_a = 0.5*(total_out - pad_audio_out + pad_visual_out)``), so ``o^a + o^v = f(a,v)``.

    This is the Shapley value of the game ``v(S) = f(x_S, 0)`` with ``v(∅) = 0`` rather than
    ``f(0, 0)``: the official code computes ``zero_padding_out`` and does not use it."""
    return 0.5 * (f_av - f_0v + f_a0), 0.5 * (f_av - f_a0 + f_0v)


def coalitions(modalities: Sequence[str], include_empty: bool = False) -> list[frozenset[str]]:
    """Every subset of ``modalities`` present in a masked pass, largest first (the full pass first)."""
    sizes = range(len(modalities), -1 if include_empty else 0, -1)
    return [frozenset(s) for k in sizes for s in itertools.combinations(modalities, k)]


def mask_inputs(inputs: Mapping[str, torch.Tensor], present: frozenset[str]) -> dict[str, torch.Tensor]:
    """The inputs with every modality not in ``present`` replaced by zeros (official ``pad_audio``/``pad_visual``)."""
    return {m: x if m in present else torch.zeros_like(x) for m, x in inputs.items()}


def shapley_responses(outputs: Mapping[frozenset[str], torch.Tensor], modalities: Sequence[str], *,
                      empty: Literal["zero", "output"] = "zero") -> dict[str, torch.Tensor]:
    """Each modality's Shapley value ``o^m = Σ_{S ⊆ N∖{m}} |S|!(M−|S|−1)!/M! · [v(S ∪ {m}) − v(S)]``
    of the fused model's output, ``v(S) = outputs[S]`` = f with the modalities outside S zeroed.

    ``empty="zero"`` (the official choice, see ``agm_responses``): ``v(∅) = 0``, so the responses
    sum to ``f(all)`` and ``outputs`` needs no entry for the empty set; for M = 2 this is
    ``agm_responses``. ``empty="output"``: ``v(∅) = outputs[frozenset()]``, the textbook value,
    summing to ``f(all) − f(∅)``."""
    if empty not in ("zero", "output"):
        raise ValueError(f"empty must be 'zero' or 'output', got {empty!r}")
    n = len(modalities)
    needed = coalitions(modalities, include_empty=empty == "output")
    missing = [sorted(s) for s in needed if s not in outputs]
    if missing:
        raise KeyError(f"outputs lack the masked passes for the subsets {missing} of {list(modalities)}")

    def value(s: frozenset[str]) -> torch.Tensor | float:
        return outputs[s] if s or empty == "output" else 0.0

    responses = {}
    for m in modalities:
        others = [j for j in modalities if j != m]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in itertools.combinations(others, k):
                s = frozenset(s)
                total = total + weight * (value(s | {m}) - value(s))
        responses[m] = total
    return responses


def agm_scores(responses: Mapping[str, torch.Tensor], targets: torch.Tensor,
               floor: float = PROB_FLOOR) -> dict[str, torch.Tensor]:
    """``s^m = mean_i −log max(softmax(o^m_i)[y_i], 1e-8)``, cut from the graph (official
    ``score_audio``; computed here from ``log_softmax``, which is the same where the official
    ``log(softmax)`` is finite)."""
    check_class_targets(targets, "AGM")
    cap = -math.log(floor)
    index = targets.long().view(-1, 1)
    return {m: (-torch.log_softmax(o.detach().float(), dim=1).gather(1, index)).clamp_max(cap).mean()
            for m, o in responses.items()}


def agm_coefficients(scores: Mapping[str, torch.Tensor], mean_scores: Mapping[str, torch.Tensor], alpha: float,
                     cap: float = RATIO_CAP) -> dict[str, torch.Tensor]:
    """``κ^m = exp(α · min(r̄^m − r^m, 10))`` with ``r^m = exp(mean_{j≠m} s^j − s^m)`` and ``r̄^m`` the same
    on the running means (official ``coeff_a = exp(alpha * min(optimal_ratio_a - ratio_a, 10))``,
    ``ratio_a = exp(score_visual - score_audio)``). A modality whose loss is now lower than the
    others' by more than usual has ``r > r̄`` and is slowed (κ < 1). BalanceBenchmark's
    ``exp(s^a − s^v)`` inverts this."""
    others, mean_others = mean_of_others(scores), mean_of_others(mean_scores)
    out = {}
    for m, s in scores.items():
        r = torch.exp(others[m] - s)
        r_bar = torch.exp(mean_others[m] - torch.as_tensor(mean_scores[m]))
        out[m] = torch.exp(alpha * (r_bar - r).clamp_max(cap))
    return out


class RunningScores:
    """AGM's running mean ``s̄^m`` of every modality's score over all iterations so far
    (official ``train_score_a = train_score_a * (t − 1)/t + score_audio / t``), starting at 0.

    ``mean`` and ``count`` are the whole state (for a checkpoint)."""

    def __init__(self, modalities: Sequence[str]):
        self.mean: dict[str, torch.Tensor] = {m: torch.zeros(()) for m in modalities}
        self.count = 0

    def update(self, scores: Mapping[str, torch.Tensor]) -> None:
        """Fold one iteration's scores into the means (the official code does so on every step)."""
        self.count += 1
        t = self.count
        self.mean = {m: self.mean[m].to(s) * ((t - 1) / t) + s.detach() / t for m, s in scores.items()}

    def step(self, scores: Mapping[str, torch.Tensor], alpha: float, cap: float = RATIO_CAP) -> dict[str, torch.Tensor]:
        """κ from this iteration's scores against the means so far, then the update: the
        official order (κ first, so the first step compares with means of 0)."""
        means = {m: self.mean[m].to(s) for m, s in scores.items()}
        kappa = agm_coefficients(scores, means, alpha, cap)
        self.update(scores)
        return kappa


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (k,) = ctx.saved_tensors
        return grad * k, None


def scale_grad(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``k`` in the backward pass
    (the official ``register_full_backward_hook`` on an identity module, returning ``ginp · scale``)."""
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device).detach()
    return _ScaleGrad.apply(x, k)


def modulated_output(responses: Mapping[str, torch.Tensor],
                     coefficients: Mapping[str, float | torch.Tensor]) -> torch.Tensor:
    """``Σ_m scale_grad(o^m, κ^m)``: the fused logits AGM's loss is taken on (official
    ``GradMod.forward`` returns ``m_a + m_v``); equal to ``f(all)`` with ``empty="zero"``."""
    scaled = [scale_grad(o, coefficients[m]) for m, o in responses.items()]
    return torch.stack(scaled).sum(dim=0)


@torch.no_grad()
def clip_if_large_(fused_weight_grad: torch.Tensor, parameters: Iterable[torch.Tensor], max_norm: float = 1.0,
                   bound: float = 1.0) -> torch.Tensor:
    """If any element of the fused head's weight gradient lies outside ``[−bound, bound]``, clip the
    total gradient norm of ``parameters`` to ``max_norm`` (official: ``grad_max > 1 or grad_min < -1``
    on ``fusion_module.fc_out.weight.grad`` ⇒ ``clip_grad_norm_(model.parameters(), 1.0)``, i.e.
    every parameter, the head's own included).

    Without a host synchronisation: the scale is ``min(1, max_norm / (‖g‖ + 1e-6))`` as in
    ``clip_grad_norm_``, or 1 where the rule does not fire. Returns whether it fired (a 0-d bool)."""
    fired = (fused_weight_grad.abs() > bound).any()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return fired
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(fired.device) for g in grads]))
    scale = torch.where(fired, (max_norm / (total + 1e-6)).clamp_max(1.0), torch.ones_like(total))
    for g in grads:
        g.mul_(scale.to(g.device))
    return fired


class AGMRule(StepRule):
    """AGM as the engine's step rule (``objective.py``).

    A step: the full pass ``f(all)`` in train mode, the ``2^M − 2`` masked passes in eval mode
    with gradients (official ``GradMod``), the Shapley responses, their scores averaged over
    the ranks, ``κ^m`` from the scores against their running means (then the means updated),
    and CE on ``Σ_m scale_grad(o^m, κ^m)``, one backward pass. Several forward passes feed one
    backward pass, which DDP's hooks do not allow, so the step runs under ``no_sync`` and the
    gradients are averaged here before the official clip rule reads the fused head's
    prediction-layer gradient (``fc_out`` there; our fused head's last linear layer). Any
    fusion works: the masked passes zero the inputs, not the features."""

    name = "agm"
    syncs_gradients = True

    def __init__(self, core: nn.Module, *, alpha: float, starts: int, ends: int | None):
        self.alpha, self.starts, self.ends = alpha, starts, ends
        self.modalities = list(core.modalities)
        self.running = RunningScores(self.modalities)
        self._fc_out = last_linear(core.fusion).weight
        self._params = list(core.parameters())
        self._stats = Diagnostics(self.name)

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        model = ctx.model
        # The Shapley sums and κ in fp32 under autocast too: κ reaches e^(α·10), past fp16's range.
        outputs = {frozenset(self.modalities): model(inputs, heads=[FUSED])[FUSED].float()}
        model.eval()
        try:
            for present in coalitions(self.modalities)[1:]:
                outputs[present] = model(mask_inputs(inputs, present), heads=[FUSED])[FUSED].float()
        finally:
            model.train()
        responses = shapley_responses(outputs, self.modalities)
        local = agm_scores(responses, targets)
        scores = dict(zip(self.modalities, ctx.all_reduce(torch.stack([local[m] for m in self.modalities]), "mean")))
        if in_window(ctx.epoch, self.starts, self.ends):
            kappa = self.running.step(scores, self.alpha)
        else:
            self.running.update(scores)
            kappa = {m: torch.ones_like(s) for m, s in scores.items()}
        for m in self.modalities:
            self._stats.add(f"kappa/{m}", kappa[m])
            self._stats.add(f"score/{m}", scores[m])
        fused = head_loss(modulated_output(responses, kappa), targets)
        return {FUSED: fused, "total": fused, "blend": fused}

    def after_backward(self, ctx: StepContext) -> None:
        ctx.average_gradients(self._params)
        fired = clip_if_large_(self._fc_out.grad, self._params) if self._fc_out.grad is not None else False
        self._stats.add("clipped", torch.as_tensor(fired).float())

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        return self._stats.epoch_means()

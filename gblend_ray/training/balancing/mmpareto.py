"""MMPareto: Pareto integration of multimodal and unimodal gradients (Wei & Hu, ICML 2024).

Official code: GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py`` (``train_epoch``) and
``code/min_norm_solvers.py`` (``MinNormSolver``). The model trains ``L = L_fused + Σ_m L_m`` with
separate unimodal heads; each encoder's update is re-made from its two gradients: the fused
loss's ``g1`` and its own unimodal loss's ``g2``, each from its own backward pass (gradients
zeroed in between). Where they conflict (cos ≤ 0) the direction is their min-norm convex
combination, otherwise their mean; the magnitude is rescaled towards the summed gradient's
and multiplied by γ = 1.5. The heads keep the plain summed gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...core.plan import FUSED
from ..objective import Diagnostics, StepContext, StepRule, head_loss

GAMMA = 1.5
"""The official magnitude factor ``gamma``."""


def _floating(v: torch.Tensor | float) -> torch.Tensor:
    v = torch.as_tensor(v)
    return v if v.is_floating_point() else v.to(torch.get_default_dtype())


def min_norm_2(g1g1: torch.Tensor | float, g1g2: torch.Tensor | float, g2g2: torch.Tensor | float) -> torch.Tensor:
    """The weight c of g1 in ``min_c ‖c g1 + (1 − c) g2‖²`` from the three dot products (official
    ``MinNormSolver._min_norm_element_from2``): ``c = (g2·g2 − g1·g2) / ‖g1 − g2‖²``, with first
    ``c = 0.999`` if ``g1·g2 ≥ ‖g1‖²``, then ``c = 0.001`` if ``g1·g2 ≥ ‖g2‖²`` (in that order: where
    both hold, i.e. g1 = g2, c = 0.999)."""
    g1g1, g1g2, g2g2 = (_floating(v) for v in (g1g1, g1g2, g2g2))
    # The interior branch is evaluated everywhere; the clamp only keeps it finite where it is not chosen.
    interior = (g2g2 - g1g2) / (g1g1 + g2g2 - 2 * g1g2).clamp_min(torch.finfo(g1g1.dtype).tiny)
    return torch.where(g1g2 >= g1g1, 0.999, torch.where(g1g2 >= g2g2, 0.001, interior)).to(interior.dtype)


def _weights(g1g1: torch.Tensor, g1g2: torch.Tensor, g2g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # cos(g1, g2) > 0 exactly when g1·g2 > 0; a zero gradient has the official
    # cosine_similarity 0 and a dot product 0, so both tests send it to the solver.
    c = torch.where(g1g2 > 0, 0.5, min_norm_2(g1g1, g1g2, g2g2)).to(g1g2.dtype)
    return c, 1 - c


def pareto_weights(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c1, c2)`` for flat gradients ``g1 = ∇L_fused``, ``g2 = ∇L_m`` of one encoder: ``(½, ½)`` if
    ``cos(g1, g2) > 0``, else ``(c, 1 − c)`` from ``min_norm_2`` (official ``train_epoch``:
    ``audio_k = [0.5, 0.5]`` or ``MinNormSolver.find_min_norm_element``, exact for two tasks)."""
    g1, g2 = g1.flatten(), g2.flatten()
    return _weights(g1 @ g1, g1 @ g2, g2 @ g2)


def pareto_rescale(g1: torch.Tensor, g2: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor],
                   summed: torch.Tensor | None = None, gamma: float = GAMMA) -> torch.Tensor:
    """One parameter tensor's new gradient: ``ĝ = 2(c1 g1 + c2 g2)``, ``n = ‖∇(L_fused + Σ L_m)‖`` of the
    tensor; ``γ (n/‖ĝ‖) ĝ`` if ``n/‖ĝ‖ > 1`` else ``γ ĝ`` (official ``train_epoch``, ``three_norm``,
    ``new_grad``, ``diff``).

    ``summed`` defaults to ``g1 + g2``: the only losses that reach encoder m are ``L_fused`` and
    ``L_m``, so the summed loss's gradient there is the sum of the two (the official code runs a
    further backward pass for it). Where ``ĝ = 0`` the result is 0 (the official ``n / 0`` gives NaN)."""
    c1, c2 = weights
    new = 2 * (c1 * g1 + c2 * g2)
    n = torch.linalg.vector_norm(g1 + g2 if summed is None else summed)
    new_norm = torch.linalg.vector_norm(new)
    ratio = n / new_norm.clamp_min(torch.finfo(new.dtype).tiny)
    return gamma * torch.where(ratio > 1, ratio, torch.ones_like(ratio)) * new


def mmpareto_gradients(fused: Sequence[torch.Tensor | None], unimodal: Sequence[torch.Tensor | None],
                       summed: Sequence[torch.Tensor | None] | None = None,
                       gamma: float = GAMMA) -> list[torch.Tensor | None]:
    """The new gradients of one encoder's parameter tensors, in order, from their gradients under
    ``L_fused`` (``fused``), under ``L_m`` (``unimodal``) and optionally under the summed loss.

    The weights come from the dot products over all the encoder's tensors (the official flattened
    ``grads_audio[...]["concat"]``); the magnitude rule is applied per tensor (``pareto_rescale``).
    A tensor one loss does not reach (None, e.g. a layer after a mid-level fusion's tap) counts as
    a zero gradient under it; a tensor neither reaches stays None."""
    if len(fused) != len(unimodal) or (summed is not None and len(summed) != len(fused)):
        raise ValueError(f"gradient lists differ in length: fused {len(fused)}, unimodal {len(unimodal)}"
                         + (f", summed {len(summed)}" if summed is not None else ""))
    pairs = [(a if a is not None else torch.zeros_like(b), b if b is not None else torch.zeros_like(a))
             if a is not None or b is not None else None for a, b in zip(fused, unimodal)]
    present = [p for p in pairs if p is not None]
    if not present:
        return [None] * len(pairs)
    def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten() @ y.flatten()

    weights = _weights(sum(dot(a, a) for a, _ in present), sum(dot(a, b) for a, b in present),
                       sum(dot(b, b) for _, b in present))
    out: list[torch.Tensor | None] = []
    for i, pair in enumerate(pairs):
        if pair is None:
            out.append(None)
            continue
        a, b = pair
        s = summed[i] if summed is not None else None
        out.append(pareto_rescale(a, b, weights, s, gamma))
    return out


class MMParetoRule(StepRule):
    """MMPareto as the engine's step rule (``objective.py``), on our per-modality heads.

    One forward pass of every head, then two backward passes with the gradients zeroed in
    between: ``L_fused`` (g1 of every encoder) and ``Σ_m L_m`` (g2: encoder m is reached by
    its own ``L_m`` alone, so one pass gives every encoder its unimodal gradient; the official
    code runs one per modality). Under DDP the step runs under ``no_sync`` and each pass's
    gradients are averaged over the ranks before they are compared (the cosine of the
    global batch's gradients, as one process would see it). Encoders get the rescaled
    min-norm combination (``mmpareto_gradients``); the heads keep the summed gradient."""

    name = "mmpareto"
    syncs_gradients = True

    def __init__(self, core: nn.Module, *, gamma: float = GAMMA):
        self.gamma = gamma
        self.modalities = list(core.modalities)
        self._encoders = {m: list(core.encoders[m].parameters()) for m in self.modalities}
        encoder_ids = {id(p) for ps in self._encoders.values() for p in ps}
        self._heads = [p for p in core.parameters() if id(p) not in encoder_ids]
        self._params = list(core.parameters())
        self._stats = Diagnostics(self.name)

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        out = ctx.model(inputs, heads=[*self.modalities, FUSED])
        losses = {h: head_loss(out[h], targets) for h in (*self.modalities, FUSED)}
        unimodal = sum(losses[m] for m in self.modalities)
        return {**losses, "total": losses[FUSED] + unimodal, "blend": losses[FUSED] + unimodal, "unimodal": unimodal}

    def backward(self, ctx: StepContext, terms: dict[str, torch.Tensor]) -> None:
        # With fp16 both passes carry the one loss scale S, and the combination is positively
        # homogeneous (the weights are ratios of dot products, the magnitude rule scales with
        # g1 and g2), so it gives S times the true gradients, which the loop then unscales.
        ctx.scaled(terms[FUSED]).backward(retain_graph=True)
        ctx.average_gradients(self._params)
        g1 = {id(p): p.grad.clone() if p.grad is not None else None for p in self._params}
        for p in self._params:
            p.grad = None
        ctx.scaled(terms["unimodal"]).backward()
        ctx.average_gradients(self._params)
        for p in self._heads:  # the heads keep the summed loss's gradient
            a = g1[id(p)]
            if a is not None:
                p.grad = a if p.grad is None else p.grad + a
        for m, params in self._encoders.items():
            fused = [g1[id(p)] for p in params]
            uni = [p.grad for p in params]
            _, g1g2, _, cos = _dots(fused, uni)
            weights = pareto_weights_from(fused, uni)
            self._stats.add(f"cos/{m}", cos)
            self._stats.add(f"w_fused/{m}", weights[0])
            self._stats.add(f"conflict/{m}", (g1g2 <= 0).float())
            for p, g in zip(params, mmpareto_gradients(fused, uni, gamma=self.gamma)):
                p.grad = g

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        return self._stats.epoch_means()


def _dots(fused: Sequence[torch.Tensor | None], unimodal: Sequence[torch.Tensor | None]):
    """(g1·g1, g1·g2, g2·g2, cos) over an encoder's tensors, a missing gradient counting as 0."""
    def flat(gs: Sequence[torch.Tensor | None], others: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([(g if g is not None else torch.zeros_like(o)).reshape(-1)
                          for g, o in zip(gs, others) if g is not None or o is not None])

    g1, g2 = flat(fused, unimodal), flat(unimodal, fused)
    g1g1, g1g2, g2g2 = g1 @ g1, g1 @ g2, g2 @ g2
    cos = g1g2 / (g1g1.sqrt() * g2g2.sqrt()).clamp_min(1e-12)
    return g1g1, g1g2, g2g2, cos


def pareto_weights_from(fused: Sequence[torch.Tensor | None],
                        unimodal: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pareto_weights`` of an encoder's per-tensor gradient lists (a missing one counts as 0)."""
    g1g1, g1g2, g2g2, _ = _dots(fused, unimodal)
    return _weights(g1g1, g1g2, g2g2)

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

"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

Official code: GeWu-Lab/OGM-GE_CVPR2022, ``main.py``, ``train_epoch``. One step: back-propagate the
fused loss alone; score each modality by the summed true-class probability of its share of the fused
head's logits; slow the dominant modality's encoder by ``k = 1 − tanh(α·ρ)`` and (GE) add Gaussian
noise scaled like each gradient tensor to every encoder's gradients.

For M > 2 (ours, not in the paper or code): ``ρ^m = s^m / mean_{j≠m} s^j``; for M = 2 this is
``ρ^a = s^a / s^v``, the official ratio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from ...core.plan import FUSED
from ..model import DETACHED, FEATURES
from ..objective import Diagnostics, StepContext, StepRule, generator_for, head_loss, in_window
from ._common import mean_of_others, target_prob_sum

GE_EPS = 1e-8
"""Added to the gradient's standard deviation for the noise's scale, as in the official code."""


def linear_modality_logits(layer: nn.Linear, dims: Mapping[str, int],
                           features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's share of a linear fused classifier on concatenated features:
    ``z^m = φ^m (W^m)ᵀ + b/M`` with ``W = [W^1 … W^M]`` split by ``dims`` (in concatenation order),
    so ``Σ_m z^m = layer(cat(φ))``. Official ``train_epoch``, ``fusion_method == 'concat'``:
    ``out_a = a @ fc_out.weight[:, :d/2]ᵀ + fc_out.bias / 2``.

    Only a fused head that is one ``nn.Linear`` on the concatenation splits like this (our
    ``ConcatFusion`` is an MLP, whose logits do not)."""
    if sum(dims.values()) != layer.in_features:
        raise ValueError(f"feature dims {dict(dims)} sum to {sum(dims.values())}, "
                         f"but the linear layer takes {layer.in_features} features")
    blocks = layer.weight.split(list(dims.values()), dim=1)
    bias_share = layer.bias / len(dims) if layer.bias is not None else None
    out = {}
    for (m, dim), w in zip(dims.items(), blocks):
        phi = features[m]
        if phi.shape[-1] != dim:
            raise ValueError(f"features of {m!r} have {phi.shape[-1]} dims, {dim} were declared")
        out[m] = phi @ w.T if bias_share is None else phi @ w.T + bias_share
    return out


def ogm_scores(logits: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """``s^m = Σ_{i∈B} softmax(z^m_i)[y_i]`` per modality (official ``score_a``, ``score_v``)."""
    return {m: target_prob_sum(z, targets) for m, z in logits.items()}


def ogm_ratios(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ρ^m = s^m / mean_{j≠m} s^j``: for two modalities the official ``ratio_a = s^a / s^v``."""
    others = mean_of_others(scores)
    return {m: torch.as_tensor(s) / others[m] for m, s in scores.items()}


def ogm_coefficients(scores: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``k^m = 1 − tanh(α·ρ^m)`` if ``ρ^m > 1`` else 1 (paper eq. 10; the code uses tanh(α·ρ),
    not tanh(α·(ρ − 1)), so k jumps from 1 to 1 − tanh(α) as ρ crosses 1).

    At exactly ``ρ = 1`` both coefficients are 1, as eq. 10 says; the official code's ``else``
    branch would instead slow audio by ``1 − tanh(α)`` there."""
    return {m: torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
            for m, rho in ogm_ratios(scores).items()}


def ogm_parameters(params: Iterable[torch.Tensor], which: Literal["conv", "weights"] = "conv") -> list[torch.Tensor]:
    """The tensors of one encoder whose gradients OGM modulates.

    - ``"conv"``: convolution kernels, every tensor of 3 or more dimensions. The official code
      takes the 4-D ones (``len(parms.grad.size()) == 4``), which are all the kernels of its 2-D
      ResNets; the 3-D video ResNets' kernels are 5-D and would be left out by a literal 4-D test.
    - ``"weights"``: every tensor of 2 or more dimensions, i.e. the kernels and the Linear
      weight matrices: what an MLP encoder has (it has no kernels). Biases and norm scales
      (1-D) are never modulated, as in the official code.
    """
    if which not in ("conv", "weights"):
        raise ValueError(f"which must be 'conv' or 'weights', got {which!r}")
    least = 3 if which == "conv" else 2
    chosen = [p for p in params if p.dim() >= least]
    if not chosen:
        raise ValueError(f"no tensor of {least}+ dimensions to modulate (which={which!r}); an encoder "
                         "without convolutions (an MLP) needs which='weights'")
    return chosen


def modulate_gradients_(params: Iterable[torch.Tensor], coefficient: float | torch.Tensor, *, ge: bool = True,
                        generator: torch.Generator | None = None) -> None:
    """In place on each tensor's ``.grad``: ``g ← k·g + ε``, ``ε ~ N(0, (std(g) + 1e-8)²)``
    element-wise with GE, ``g ← k·g`` without (official ``train_epoch``, ``OGM_GE`` / ``OGM``).

    Call it on every encoder after the fused loss's backward pass, also where ``k = 1``: GE's
    noise goes to every encoder. ``std(g)`` is the unscaled gradient's (unbiased, as
    ``Tensor.std``); a one-element tensor has none and gets noise of scale 1e-8 (the official
    code's would be NaN). The noise is drawn from ``generator`` on its own device and moved to
    the gradient's, so a generator on the gradients' device avoids a copy."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        if ge:
            std = g.std() if g.numel() > 1 else g.new_zeros(())
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype,
                                device=generator.device if generator is not None else g.device)
            g.mul_(coefficient).add_(noise.to(g.device) * (std + GE_EPS))
        else:
            g.mul_(coefficient)


class OGMRule(StepRule):
    """OGM-GE (``ge=True``) or OGM as the engine's step rule (``objective.py``).

    Each step back-propagates the fused loss (and, with ``scores="heads"``, each modality's
    head on detached features, which trains those heads only), reads the scores, sums them
    over the ranks (the official score is a sum over the batch: here over the global batch),
    and in the modulation window modulates every encoder's chosen gradient tensors with
    ``k^m`` (and GE's noise). The gradients are DDP's averaged ones and the noise comes from a
    stream seeded by (seed, epoch), so every rank makes the same update.

    ``scores="linear"`` is the official reading, ``z^m = W^m φ^m + b/M`` of a linear fused
    head; ``"heads"`` maps the method onto a fused MLP, whose logits do not split by modality.
    """

    def __init__(self, core: nn.Module, *, alpha: float, ge: bool, starts: int, ends: int | None,
                 scores: Literal["heads", "linear"] = "heads", params: Literal["auto", "conv", "weights"] = "auto"):
        self.name = "ogm_ge" if ge else "ogm"
        self.alpha, self.ge, self.starts, self.ends, self.scores = alpha, ge, starts, ends, scores
        self.modalities = list(core.modalities)
        if scores == "linear":
            net = getattr(core.fusion, "net", None)
            layer = net[0] if isinstance(net, nn.Sequential) and len(net) == 1 else None
            if not isinstance(layer, nn.Linear) or getattr(core.fusion, "uses_intermediate", True):
                raise ValueError("balancing.ogm.scores 'linear' needs a linear late-fusion head "
                                 "(model.fusion: concat, model.fusion_hidden_dim: 0)")
            self._layer = layer
            self._dims = {m: core.encoders[m].feature_dim for m in core.fusion.modalities}
        self._params = {m: ogm_parameters(core.encoders[m].parameters(), _which(core.encoders[m], params))
                        for m in self.modalities}
        self._stats = Diagnostics(self.name)
        self._scores: dict[str, torch.Tensor] = {}
        self._generator: torch.Generator | None = None

    def begin_epoch(self, ctx: StepContext) -> None:
        self._generator = generator_for(ctx.seed, ctx.epoch, ctx.device)

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        heads = self.scores == "heads"
        out = ctx.model(inputs, heads=[FUSED], detached=self.modalities if heads else (), features=not heads)
        fused = head_loss(out[FUSED], targets)
        terms = {FUSED: fused}
        if heads:
            logits = {m: out[m + DETACHED] for m in self.modalities}
            head_train = sum(head_loss(z, targets) for z in logits.values())
            terms.update({"total": fused + head_train, "blend": fused, "head_train": head_train})
        else:
            features = {m: out[m + FEATURES].detach() for m in self._dims}
            logits = linear_modality_logits(self._layer, self._dims, features)
            terms.update({"total": fused, "blend": fused})
        scores = ogm_scores(logits, targets)
        summed = ctx.all_reduce(torch.stack([scores[m] for m in self.modalities]), "sum")
        self._scores = dict(zip(self.modalities, summed))
        return terms

    def after_backward(self, ctx: StepContext) -> None:
        ratios = ogm_ratios(self._scores)
        k = ogm_coefficients(self._scores, self.alpha)
        on = in_window(ctx.epoch, self.starts, self.ends)
        for m in self.modalities:
            self._stats.add(f"ratio/{m}", ratios[m])
            self._stats.add(f"k/{m}", k[m] if on else 1.0)
            self._stats.add(f"slowed/{m}", (k[m] < 1).float() if on else 0.0)
            if on:
                modulate_gradients_(self._params[m], k[m], ge=self.ge, generator=self._generator)

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        return self._stats.epoch_means()


def _which(encoder: nn.Module, params: str) -> Literal["conv", "weights"]:
    """``auto``: an encoder's kernels if it has any (the official 4-D test), else its weight matrices."""
    if params != "auto":
        return params  # type: ignore[return-value]
    return "conv" if any(p.dim() >= 3 for p in encoder.parameters()) else "weights"

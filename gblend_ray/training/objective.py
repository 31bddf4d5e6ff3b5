"""The engine's extension point: a step rule says what one training step computes and how
its gradients are made, and the one loop (``engine.train_epochs``) calls it.

A step of the loop is, top to bottom::

    rule.begin_epoch(ctx)                    # once an epoch (PMR's prototypes)
    optimizer.zero_grad()
    terms = rule.losses(ctx, inputs, targets)  # named loss terms; "total" is trained
    rule.backward(ctx, terms)                # one backward pass, or several (MMPareto)
    rule.after_backward(ctx)                 # gradient surgery (OGM-GE, AGM's clip)
    optimizer.step()
    ...
    record.update(rule.end_epoch(ctx))       # the epoch's diagnostics, "<rule>/<name>"

``BlendRule`` is G-Blend's ``L_blend = Σ_i w_i L_i`` (eq. 7) with the baselines' fixed
weights, uncertainty weighting and the prediction-head safeguard; the balancing methods
(``balancing/``) are rules beside it. Under DDP every rank runs the same rule on its shard:
what a rule reads from its batch to choose coefficients goes through ``ctx.all_reduce``
first, so every rank applies the same ones. A rule that needs several forward or backward
passes per step sets ``syncs_gradients``: the loop then runs its step under DDP's
``no_sync`` and the rule averages the gradients itself (``ctx.average_gradients``), at the
point its method needs them averaged.

Under ``train.precision`` bf16 or fp16 the loop runs ``rule.losses`` inside autocast, and
with fp16 a rule's backward passes differentiate ``ctx.scaled(loss)``; the loop unscales the
gradients before ``after_backward``. A rule that changes gradients inside ``backward``
(MMPareto) thus works on gradients times one loss scale S, which is sound only for
surgery that is positively homogeneous in them (f(S·g) = S·f(g)); anything else belongs in
``after_backward``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sources import BatchSource
from .compute import FP32, Compute
from .model import DETACHED, LOG_VAR


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices; binary cross-entropy for multi-label 0/1 targets.
    Taken in fp32 whatever the logits' dtype (autocast's bf16 or fp16; fp32 logits are used as they are)."""
    logits = logits.float()
    if targets.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def _distributed(world_size: int) -> bool:
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclass
class StepContext:
    """What a rule may use of the loop: the model as trained (``model``, the DDP wrapper
    under DDP) and unwrapped (``core``, the ``MultiHeadNet``), the epoch, the step within
    it, this rank's place, the run's seed, the training data (for a pass of its own), and
    how the loop computes (``compute``; ``scaler``, fp16's ``GradScaler``, else None)."""

    model: nn.Module
    core: nn.Module
    data: BatchSource
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compute: Compute = FP32
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        """The loop's autocast, for a rule's forward passes outside ``losses`` (PMR's prototypes)."""
        return self.compute.autocast(self.device)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """What a backward pass differentiates: ``loss`` times fp16's loss scale; ``loss`` itself otherwise."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def all_reduce(self, value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``value`` summed (``op="sum"``) or averaged (``"mean"``) over the ranks; itself in
        one process. Every rank must call it the same number of times."""
        if op not in ("sum", "mean"):
            raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
        if not _distributed(self.world_size):
            return value
        out = value.detach().clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out / self.world_size if op == "mean" else out

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``params``' gradients over the ranks in place, in one all-reduce (what DDP
        does in backward, for a rule whose step runs under ``no_sync``). A parameter without a
        gradient is left out; every rank must leave out the same ones."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads or not _distributed(self.world_size):
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class StepRule:
    """The default hooks: one backward pass of ``terms["total"]``, no gradient surgery, no
    diagnostics. ``name`` is the namespace of the rule's per-epoch diagnostics."""

    name = "blend"
    syncs_gradients = False
    """True: the loop runs the step under DDP's ``no_sync``; the rule averages gradients."""

    def begin_epoch(self, ctx: StepContext) -> None:
        pass

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backward(self, ctx: StepContext, terms: dict[str, torch.Tensor]) -> None:
        ctx.scaled(terms["total"]).backward()

    def after_backward(self, ctx: StepContext) -> None:
        pass

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        return {}


class Diagnostics:
    """Per-step quantities summed on the device and averaged once an epoch (one host
    synchronisation per epoch, not per step), named ``<namespace>/<name>``."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._counts[name] = self._counts.get(name, 0) + 1

    def epoch_means(self) -> dict[str, float]:
        """The epoch's mean of each quantity, then a fresh start."""
        out = {f"{self.namespace}/{k}": v.item() / self._counts[k] for k, v in self._sums.items()}
        self._sums, self._counts = {}, {}
        return out


class BlendRule(StepRule):
    """``L_blend = Σ_i w_i L_i`` (eq. 7) as three named terms, each zero where it does not apply:

    - ``blend``: ``Σ_i w_i L_i`` over the heads with weight > 0 (heads with weight 0 are not
      computed). With learned weights (method ``uncertainty``, a model that returns each
      head's log-variance s_i) head i's term is ``exp(−s_i) w_i L_i``.
    - ``uncertainty_reg``: ``Σ_i s_i / 2``, the other half of Kendall, Gal and Cipolla
      (CVPR 2018) eq. 10 for a classification likelihood with s_i = log σ_i².
    - ``head_train``: ``Σ_h (1 − w_h) L_h`` on features detached from the encoders, for each
      head ``h`` in ``full_heads`` (the prediction-head safeguard): the head's own parameters
      train at full weight, the encoders beneath it see it only through ``w_h``.
    """

    def __init__(self, weights: dict[str, float], full_heads: Sequence[str] = (), learned: bool = False):
        self.weights = dict(weights)
        self.active = [h for h, w in weights.items() if w > 0]
        self.extra = [h for h in full_heads if weights.get(h, 0.0) < 1.0]
        self.learned = learned
        if not self.active and not self.extra:
            raise ValueError(f"every weight is 0 in {weights}: nothing would train")

    def losses(self, ctx: StepContext, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        active, extra, learned, weights = self.active, self.extra, self.learned, self.weights
        zero = torch.zeros((), device=targets.device)
        out = ctx.model(inputs, heads=active, detached=extra, **({"log_vars": True} if learned else {}))
        losses = {h: head_loss(out[h], targets) for h in active}
        scale = {h: torch.exp(-out[h + LOG_VAR]) * weights[h] if learned else weights[h] for h in active}
        blend = sum((scale[h] * losses[h] for h in active), zero)
        uncertainty_reg = sum((out[h + LOG_VAR] / 2 for h in active), zero) if learned else zero
        head_train = sum(((1.0 - weights.get(h, 0.0)) * head_loss(out[h + DETACHED], targets) for h in extra), zero)
        return {**losses, "total": blend + uncertainty_reg + head_train, "blend": blend,
                **({"uncertainty_reg": uncertainty_reg} if learned else {}),
                **({"head_train": head_train} if extra else {})}


def in_window(epoch: int, starts: int, ends: int | None) -> bool:
    """Whether ``epoch`` (0-based) lies in a method's modulation window ``[starts, ends]``
    (official: ``modulation_starts <= epoch <= modulation_ends``); ``ends`` None: no end."""
    return epoch >= starts and (ends is None or epoch <= ends)


def last_linear(module: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a module: a fused head's prediction layer (AGM's ``fc_out``)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear layer")
    return linears[-1]


def generator_for(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A random stream seeded by (seed, epoch) alone: every rank draws the same numbers
    (OGM-GE's noise must be the same on every rank, or their parameters part)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))

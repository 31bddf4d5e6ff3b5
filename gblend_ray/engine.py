"""The engine: the one training loop and the one evaluation of the code base.

``train_epochs`` trains a model for n epochs under a weight vector over its heads
(eq. 7, ``L_blend = Σ_i w_i L_i``); ``evaluate`` measures every head. The in-process
runner, the Ray Train worker loop and every G-Blend probe call these two functions,
so a probe trains exactly as the main run does.

Data lives in memory as tensors (``TensorData``); ``batch_order`` gives each rank its
shard of a seeded permutation per epoch, like ``DistributedSampler``, so the order
depends only on (seed, epoch, rank, world size) and a 1-worker Ray run sees the same
batches as the in-process runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import DETACHED
from .spec import OptimSpec


@dataclass
class TensorData:
    """Inputs per modality and targets, indexed on the first axis."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_arrays(cls, modalities: dict[str, np.ndarray], labels: np.ndarray, indices: np.ndarray,
                    device: str | torch.device = "cpu") -> TensorData:
        idx = np.asarray(indices, dtype=np.int64)
        inputs = {m: torch.as_tensor(a[idx], dtype=torch.float32, device=device) for m, a in modalities.items()}
        dtype = torch.float32 if labels.ndim > 1 else torch.int64
        return cls(inputs, torch.as_tensor(labels[idx], dtype=dtype, device=device))

    def take(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {m: x[index] for m, x in self.inputs.items()}, self.targets[index]


def batch_order(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """This rank's batches of one epoch: a permutation seeded by (seed, epoch), padded by
    wrapping so every rank gets the same number of samples (DDP needs equal step counts),
    then strided by rank."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    per_rank = math.ceil(n / world_size)
    if per_rank * world_size > n:
        order = torch.cat([order, order[: per_rank * world_size - n]])
    mine = order[rank::world_size]
    return list(torch.split(mine, batch_size))


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices; binary cross-entropy for multi-label 0/1 targets."""
    if targets.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def make_optimizer(params: Iterable[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
    params = list(params)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adagrad":
        return torch.optim.Adagrad(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}: expected sgd, adam or adagrad")


def train_epochs(
    model: nn.Module,
    data: TensorData,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, float],
    epochs: int,
    *,
    start_epoch: int = 0,
    batch_size: int = 64,
    seed: int = 0,
    lr_at: Callable[[int], float] | None = None,
    full_heads: Sequence[str] = (),
    rank: int = 0,
    world_size: int = 1,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``epochs`` epochs from ``start_epoch`` on ``L_blend = Σ_i w_i L_i`` (eq. 7).

    Heads with weight 0 are not computed. Each head in ``full_heads`` has its own
    parameters trained at full weight on detached features (the prediction-head
    safeguard), while the encoders beneath it see it only through its blend weight.
    Returns one record per epoch: the epoch, its learning rate and the mean per-head
    losses of the blend.
    """
    active = [h for h, w in weights.items() if w > 0]
    extra = [h for h in full_heads if weights.get(h, 0.0) < 1.0]
    if not active and not extra:
        raise ValueError(f"every weight is 0 in {weights}: nothing would train")
    model.train()
    history = []
    for epoch in range(start_epoch, start_epoch + epochs):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
        totals = dict.fromkeys(active, 0.0)
        steps = 0
        for index in batch_order(len(data), batch_size, seed, epoch, rank, world_size):
            inputs, targets = data.take(index)
            logits = model(inputs, heads=active, detached=extra)
            losses = {h: head_loss(logits[h], targets) for h in active}
            detached = {h: head_loss(logits[h + DETACHED], targets) for h in extra}
            loss = sum(weights[h] * losses[h] for h in active) + sum((1.0 - weights.get(h, 0.0)) * detached[h] for h in extra)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for h in active:
                totals[h] += losses[h].item()
            steps += 1
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"loss/{h}": totals[h] / max(steps, 1) for h in active})
        if not all(math.isfinite(v) for v in totals.values()):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1}: per-head losses {record}; lower optim.lr")
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, heads: Sequence[str] | None = None,
             batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Mean loss, top-1 and top-5 accuracy of each head (eval mode) on ``data``."""
    was_training = model.training
    model.eval()
    sums: dict[str, dict[str, float]] = {}
    try:
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            inputs, targets = data.take(index)
            logits = model(inputs, heads=heads)
            for head, out in logits.items():
                s = sums.setdefault(head, {"loss": 0.0, "top1": 0.0, "top5": 0.0})
                n = len(index)
                s["loss"] += head_loss(out, targets).item() * n
                if not targets.dtype.is_floating_point:
                    top = out.topk(min(5, out.shape[1]), dim=1).indices
                    hits = top == targets[:, None]
                    s["top1"] += hits[:, 0].float().sum().item()
                    s["top5"] += hits.any(dim=1).float().sum().item()
    finally:
        model.train(was_training)
    return {h: {k: v / len(data) for k, v in s.items()} for h, s in sums.items()}


@torch.no_grad()
def per_class_top1(model: nn.Module, data: TensorData, num_classes: int,
                   batch_size: int = 1024) -> dict[str, list[float | None]]:
    """Top-1 accuracy of each head on each class (None for a class absent from ``data``):
    what the report's per-class gains and losses (the paper's Fig. 6) are made of."""
    was_training = model.training
    model.eval()
    hits: dict[str, torch.Tensor] = {}
    counts = torch.zeros(num_classes)
    try:
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            inputs, targets = data.take(index)
            counts += torch.bincount(targets.cpu(), minlength=num_classes).float()
            for head, out in model(inputs).items():
                right = (out.argmax(dim=1) == targets).float().cpu()
                hits[head] = hits.get(head, torch.zeros(num_classes)) + torch.bincount(
                    targets.cpu(), weights=right, minlength=num_classes)
    finally:
        model.train(was_training)
    return {h: [float(x / n) if n > 0 else None for x, n in zip(v, counts)] for h, v in hits.items()}

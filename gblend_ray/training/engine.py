"""The engine: the one training loop and the one evaluation of the code base.

``train_epochs`` trains a model for n epochs under a weight vector over its heads
(eq. 7, ``L_blend = Σ_i w_i L_i``); ``evaluate`` measures every head. The in-process
runner, the Ray Train worker loop and every G-Blend probe call these two functions,
so a probe trains exactly as the main run does.

Data is a ``BatchSource`` (``data/sources.py``): arrays in memory (``TensorData``) or
clips decoded from video files by worker processes (``MediaData``). ``batch_order`` gives each rank
its shard of a seeded permutation per epoch, like ``DistributedSampler``, so the order
depends only on (seed, epoch, rank, world size) and a 1-worker Ray run sees the same
batches as the in-process runner.

``compute`` (``compute.py``) is ``train.precision`` and ``train.channels_last``: the step's
forward pass and losses, and evaluation's forward pass, run under its autocast; with fp16
a ``GradScaler`` scales the backward pass and is unscaled before the step rule's gradient
surgery, so a balancing method reads and changes true gradients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.metrics import mean_auc, mean_average_precision
from ..core.spec import OPTIMIZERS, OptimSpec
from ..data.sources import Batch, BatchSource
from .compute import FP32, Compute
from .compute import to_device as _tensor_to_device
from .objective import BlendRule, StepContext, StepRule, head_loss


def sequential_order(n: int, batch_size: int) -> list[torch.Tensor]:
    """Every sample once, in order: how evaluation walks a source."""
    return [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def to_device(device: torch.device, batch: Batch, channels_last: bool = False) -> Batch:
    """A batch on ``device`` (``compute.to_device``: asynchronous to a GPU; 4-D and 5-D
    inputs channels-last with ``channels_last``)."""
    inputs, targets = batch
    return ({m: _tensor_to_device(device, x, channels_last) for m, x in inputs.items()},
            _tensor_to_device(device, targets))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


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


def make_optimizer(params: Iterable[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
    """``optim.name`` (one of ``spec.OPTIMIZERS``) over ``params``; momentum is SGD's alone."""
    params = list(params)
    if spec.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec.name!r}: expected one of {OPTIMIZERS}")
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    kind = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[spec.name]
    return kind(params, lr=spec.lr, weight_decay=spec.weight_decay)


def train_epochs(
    model: nn.Module,
    data: BatchSource,
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
    on_epoch: Callable[[dict], bool | None] | None = None,
    rule: StepRule | None = None,
    compute: Compute = FP32,
    scaler: torch.amp.GradScaler | None = None,
    switch_weights: Callable[[int, int], dict[str, float] | None] | None = None,
) -> list[dict]:
    """Train ``epochs`` epochs from ``start_epoch``; each step is ``rule``'s (``objective.py``:
    its losses, its backward pass(es), its gradient surgery), by default ``BlendRule``:
    ``L_blend = Σ_i w_i L_i`` (eq. 7) under ``weights``, with learned weights when the model
    has them (``uncertainty``) and the ``full_heads`` safeguard. A balancing method passes its
    own ``rule``; ``weights`` then only label the epochs.

    Returns one record per epoch: the epoch, its learning rate, the mean of every loss term
    the rule names (``loss/<head>``, ``loss/total``, ``loss/blend``, ``loss/uncertainty_reg``,
    ``loss/head_train``, ...), with learned weights ``learned/<head>`` = exp(−s_i), and the
    rule's own per-epoch diagnostics (``<rule>/...``). ``on_epoch`` gets each record; a true
    return stops training (early stopping).

    ``compute`` sets autocast and channels-last; with fp16, ``scaler`` is the run's
    ``GradScaler`` (its scale carries over from segment to segment), a fresh one if None.

    ``switch_weights(epoch, step)``, when given, is asked before every step; weights it
    returns replace ``weights`` from that step on (overlapped G-Blend rounds, whose estimate
    arrives between steps). A loss term is averaged over the steps that computed it.
    """
    if switch_weights is not None and rule is not None:
        raise ValueError("switch_weights changes the blend's weights; a balancing rule's steps do not use them")
    core = getattr(model, "module", model)  # under DDP, the MultiHeadNet
    learned = getattr(core, "log_vars", None) is not None
    if rule is None:
        rule = BlendRule(weights, full_heads, learned)
    model.train()
    device = _device_of(model)
    zero = torch.zeros((), device=device)
    if scaler is None:
        scaler = compute.grad_scaler(device)
    # A rule with several passes per step averages its gradients itself (DDP's hooks expect
    # one backward pass per forward pass).
    step_scope = (model.no_sync if rule.syncs_gradients and hasattr(model, "no_sync") else contextlib.nullcontext)
    ctx = StepContext(model, core, data, batch_size, seed=seed, rank=rank, world_size=world_size, device=device,
                      compute=compute, scaler=scaler)
    history = []
    for epoch in range(start_epoch, start_epoch + epochs):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
        ctx.epoch, ctx.step = epoch, 0
        rule.begin_epoch(ctx)
        sums: dict[str, torch.Tensor] = {}  # on the device: one synchronisation per epoch, not per step
        counts: dict[str, int] = {}  # steps per term: a switch of weights can start or end a head's term
        steps = 0
        order = batch_order(len(data), batch_size, seed, epoch, rank, world_size)
        for batch in data.batches(order, train=True, epoch=epoch):
            if switch_weights is not None and (switched := switch_weights(epoch, ctx.step)) is not None:
                rule = BlendRule(switched, full_heads, learned)
            inputs, targets = to_device(device, batch, compute.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with step_scope():
                with compute.autocast(device):  # the backward pass runs outside, as autocast wants
                    terms = rule.losses(ctx, inputs, targets)
                rule.backward(ctx, terms)
            if scaler is not None:
                # before the rule's surgery: OGM-GE's noise and AGM's clip threshold are
                # sized for true gradients, not for gradients times the loss scale
                scaler.unscale_(optimizer)
            rule.after_backward(ctx)
            if scaler is not None:
                scaler.step(optimizer)  # skipped when a gradient overflowed; the scale backs off
                scaler.update()
            else:
                optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, zero) + value.detach()
                counts[name] = counts.get(name, 0) + 1
            steps += 1
            ctx.step = steps
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"loss/{name}": total.item() / counts[name] for name, total in sums.items()})
        if learned:
            record.update({f"learned/{h}": w for h, w in core.learned_weights().items()})
        if not _all_finite([record[f"loss/{name}"] for name in sums], world_size):
            losses_text = {k.removeprefix("loss/"): v for k, v in record.items()
                           if k.startswith("loss/") and k.removeprefix("loss/") in core.head_names}
            raise FloatingPointError(f"training diverged at epoch {epoch + 1}: per-head losses {losses_text}"
                                     + (" (on this rank; another rank's were not finite)"
                                        if all(math.isfinite(v) for v in losses_text.values()) else "")
                                     + "; lower optim.lr"
                                     + (f", or try train.precision: fp32 (this ran under {compute.precision} "
                                        "autocast)" if compute.precision != "fp32" else ""))
        record.update(rule.end_epoch(ctx))
        history.append(record)
        if on_epoch is not None and on_epoch(record):
            break
    return history


def _all_finite(values: list[float], world_size: int) -> bool:
    """Whether every rank's epoch losses are finite: under DDP the ranks agree (one
    all-reduce), so they all stop at the same epoch instead of one of them leaving the
    others waiting at the next collective."""
    finite = all(math.isfinite(v) for v in values)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([0.0 if finite else 1.0])
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        finite = flag.item() == 0.0
    return finite


@dataclass
class Predictions:
    """One head's outputs over a source: per-sample scores (class probabilities, softmax
    or sigmoid, averaged over the sample's clips), the targets, and clip-level sums."""

    scores: torch.Tensor
    targets: torch.Tensor
    loss_sum: float = 0.0
    clips: int = 0
    clip_top1: float = 0.0
    clip_top5: float = 0.0


@torch.no_grad()
def predict(model: nn.Module, data: BatchSource, heads: Sequence[str] | None = None,
            batch_size: int = 1024, compute: Compute = FP32) -> dict[str, Predictions]:
    """Run ``model`` (eval mode) over every sample of ``data``; average each sample's
    ``data.clips_per_sample`` clips into one prediction (the paper's video-level
    evaluation over K uniformly spaced clips). The forward pass runs under ``compute``'s
    autocast; losses and scores are taken in fp32."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    k = data.clips_per_sample
    batch_size = min(batch_size, getattr(data, "eval_batch_size", batch_size))
    parts: dict[str, list] = {}
    sums: dict[str, list[float]] = {}
    target_parts = []
    try:
        for batch in data.batches(sequential_order(len(data), batch_size), train=False, epoch=0):
            inputs, targets = to_device(device, batch, compute.channels_last)
            clip_targets = targets.repeat_interleave(k, dim=0) if k > 1 else targets
            target_parts.append(targets.cpu())
            with compute.autocast(device):
                outputs = model(inputs, heads=heads)
            for head, out in outputs.items():
                out = out.float()  # the same tensor in fp32
                s = sums.setdefault(head, [0.0, 0.0, 0.0, 0.0])
                s[0] += head_loss(out, clip_targets).item() * len(out)
                s[1] += len(out)
                if targets.dtype.is_floating_point:
                    probs = torch.sigmoid(out)
                else:
                    probs = torch.softmax(out, dim=1)
                    top = out.topk(min(5, out.shape[1]), dim=1).indices
                    hits = top == clip_targets[:, None]
                    s[2] += hits[:, 0].float().sum().item()
                    s[3] += hits.any(dim=1).float().sum().item()
                parts.setdefault(head, []).append(probs.view(len(targets), k, -1).mean(dim=1).cpu())
    finally:
        model.train(was_training)
    targets = torch.cat(target_parts)
    return {h: Predictions(torch.cat(p), targets, *sums[h]) for h, p in parts.items()}


def metrics_of(p: Predictions, clips_per_sample: int = 1) -> dict[str, float]:
    """A head's metrics: mean loss over clips; multiclass: clip top-1 and top-5 and, with
    several clips per sample, video-level ``video_top1``/``video_top5``; multi-label:
    mAP and mAUC of the (clip-averaged) scores."""
    out = {"loss": p.loss_sum / max(p.clips, 1)}
    if p.targets.dtype.is_floating_point:
        out["mAP"] = mean_average_precision(p.scores.numpy(), p.targets.numpy())
        out["mAUC"] = mean_auc(p.scores.numpy(), p.targets.numpy())
        return out
    out["top1"], out["top5"] = p.clip_top1 / max(p.clips, 1), p.clip_top5 / max(p.clips, 1)
    if clips_per_sample > 1:
        top = p.scores.topk(min(5, p.scores.shape[1]), dim=1).indices
        hits = top == p.targets[:, None]
        out["video_top1"] = hits[:, 0].float().mean().item()
        out["video_top5"] = hits.any(dim=1).float().mean().item()
    return out


def evaluate(model: nn.Module, data: BatchSource, heads: Sequence[str] | None = None,
             batch_size: int = 1024, compute: Compute = FP32) -> dict[str, dict[str, float]]:
    """Every head's metrics (``metrics_of``) on ``data``, in eval mode."""
    return {h: metrics_of(p, data.clips_per_sample)
            for h, p in predict(model, data, heads, batch_size, compute).items()}


def per_class_top1(predictions: dict[str, Predictions], num_classes: int) -> dict[str, list[float | None]]:
    """Top-1 accuracy of each head on each class (None for a class absent from the data):
    what the report's per-class gains and losses (the paper's Fig. 6) are made of."""
    out = {}
    for head, p in predictions.items():
        counts = torch.bincount(p.targets, minlength=num_classes).float()
        right = (p.scores.argmax(dim=1) == p.targets).float()
        hits = torch.bincount(p.targets, weights=right, minlength=num_classes)
        out[head] = [float(x / n) if n > 0 else None for x, n in zip(hits, counts)]
    return out

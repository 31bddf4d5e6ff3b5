"""The training plan of a method: which heads train, under which weights, and when
G-Blend re-estimates them.

Pure Python (no torch, no Ray): the in-process runner and the Ray trainer both walk
the same plan, so they cannot disagree about where a super-epoch starts.

Methods (DESIGN §2, the paper's baselines):

- ``uni:<modality>``: that modality's encoder and head alone; predicts with its head.
- ``naive``: naive late fusion, the fused head's loss alone.
- ``aux``: auxiliary losses, every head at equal weight ``1/(k+1)``.
- ``dropout``: naive late fusion with dropout on the concatenated features
  (``baselines.dropout``).
- ``pretrain``: every encoder first trained uni-modally (its own head's loss), then
  loaded into the fused model, which is fine-tuned with the fused head's loss.
- ``uncertainty``: every head with a learned weight, uncertainty weighting (Kendall,
  Gal and Cipolla, CVPR 2018).
- ``early_stop``: naive late fusion stopped when the fused head's loss on V stops
  improving (``baselines.patience``); the best epoch's model is kept.
- ``ogm_ge``, ``ogm``, ``pmr``, ``agm``, ``mmpareto``: the modality-balancing methods
  (``training/balancing``), each its own step rule inside the engine's one loop. They train
  the fused head's loss (MMPareto: every head's, at weight 1) and need two or more modalities.
- ``gblend:offline``: Algorithm 2, one estimate at epoch 0 over the whole run.
- ``gblend:online``: Algorithm 3, a warm-up super-epoch then super-epochs of fixed
  length, each re-estimated at its first epoch from the current checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import LR_SCHEDULES, SCHEDULES

FUSED = "fused"
"""Name of the fused (prediction) head, h_{k+1} in the paper."""

BALANCING = ("ogm_ge", "ogm", "pmr", "agm", "mmpareto")
"""The modality-balancing methods G-Blend is compared with (OGM-GE, OGM, PMR, AGM, MMPareto)."""
_KINDS = ("uni", "naive", "aux", "dropout", "pretrain", "uncertainty", "early_stop", *BALANCING, "gblend")
PRETRAIN, FINETUNE = "pretrain", "finetune"
"""Phases of a ``pretrain`` run's segments."""


@dataclass(frozen=True)
class Method:
    kind: str
    modality: str | None = None
    schedule: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "uni":
            return f"uni:{self.modality}"
        if self.kind == "gblend":
            return f"gblend:{self.schedule}"
        return self.kind

    @property
    def prediction_head(self) -> str:
        return self.modality if self.kind == "uni" else FUSED


def parse_method(text: str, modalities: list[str], default_schedule: str = "online") -> Method:
    """Parse a method name; ``modalities`` are the dataset's, for checking ``uni:<m>``."""
    kind, _, arg = text.partition(":")
    if kind not in _KINDS:
        raise ValueError(
            f"unknown method {text!r}: expected one of uni:<modality>, naive, aux, dropout, "
            "pretrain, uncertainty, early_stop, ogm_ge, ogm, pmr, agm, mmpareto, gblend, gblend:offline, "
            "gblend:online"
        )
    if kind == "uni":
        if arg not in modalities:
            raise ValueError(
                f"method {text!r} names modality {arg!r}, which the dataset lacks; "
                f"its modalities are {modalities}"
            )
        return Method("uni", modality=arg)
    if kind == "gblend":
        schedule = arg or default_schedule
        if schedule not in SCHEDULES:
            raise ValueError(f"method {text!r}: schedule must be offline or online, not {schedule!r}")
        return Method("gblend", schedule=schedule)
    if arg:
        raise ValueError(f"method {text!r}: {kind} takes no argument")
    if kind in BALANCING and len(modalities) < 2:
        raise ValueError(f"method {text!r} balances modalities against each other and needs at least two; "
                         f"the run has {modalities}")
    return Method(kind)


def heads_of(modalities: list[str]) -> list[str]:
    """Every head of the multi-head network: one per modality, then the fused head."""
    return [*modalities, FUSED]


def fixed_weights(method: Method, modalities: list[str], phase: str = "") -> dict[str, float] | None:
    """The loss weights of a method that does not estimate them; None for G-Blend.

    ``uncertainty`` and ``mmpareto`` compute every head at weight 1; the engine scales each loss by its
    learned weight. A ``pretrain`` run's first phase trains every uni-modal head at
    weight 1: each encoder gets gradient from its own head's loss only, so this is each
    uni-modal model trained on its own, on the same batches."""
    heads = heads_of(modalities)
    if method.kind == "uni":
        return {h: float(h == method.modality) for h in heads}
    if method.kind == "pretrain" and phase == PRETRAIN:
        return {h: float(h != FUSED) for h in heads}
    if method.kind in ("naive", "dropout", "early_stop", "pretrain", "ogm_ge", "ogm", "pmr", "agm"):
        return {h: float(h == FUSED) for h in heads}
    if method.kind == "aux":
        return {h: 1.0 / len(heads) for h in heads}
    if method.kind in ("uncertainty", "mmpareto"):
        return dict.fromkeys(heads, 1.0)
    return None


@dataclass(frozen=True)
class Segment:
    """A stretch of epochs trained under one weight vector.

    ``probe_epochs > 0`` marks a G-Blend boundary: the weights for this segment are
    estimated from the checkpoint at ``start`` with probes of that many epochs.
    """

    start: int
    epochs: int
    probe_epochs: int = 0
    phase: str = ""
    """``pretrain`` or ``finetune`` in a ``pretrain`` run; empty otherwise."""

    @property
    def end(self) -> int:
        return self.start + self.epochs

    @property
    def estimates(self) -> bool:
        return self.probe_epochs > 0


def plan_segments(
    method: Method,
    epochs: int,
    warmup_epochs: int = 10,
    super_epoch: int = 5,
    probe_epochs: int | None = None,
    pretrain_epochs: int | None = None,
) -> list[Segment]:
    """Cut ``epochs`` into segments.

    Offline G-Blend (Algorithm 2) estimates once at epoch 0 with n = the whole run (or
    ``probe_epochs``). A ``pretrain`` run is ``pretrain_epochs`` (default ``epochs``) of
    uni-modal training, then ``epochs`` of fine-tuning. Online G-Blend (Algorithm 3) estimates at 0, ``warmup_epochs``,
    ``warmup_epochs + super_epoch``, ...; each probe's horizon defaults to the length of
    the super-epoch it estimates, the last one possibly shorter.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if method.kind == "pretrain":
        pre = pretrain_epochs or epochs
        return [Segment(0, pre, phase=PRETRAIN), Segment(pre, epochs, phase=FINETUNE)]
    if method.kind != "gblend":
        return [Segment(0, epochs)]
    if method.schedule == "offline":
        return [Segment(0, epochs, probe_epochs or epochs)]
    if warmup_epochs < 1 or super_epoch < 1:
        raise ValueError(
            f"online G-Blend needs warmup_epochs >= 1 and super_epoch >= 1, "
            f"got {warmup_epochs} and {super_epoch}"
        )
    segments = []
    start, length = 0, warmup_epochs
    while start < epochs:
        length = min(length, epochs - start)
        segments.append(Segment(start, length, probe_epochs or length))
        start += length
        length = super_epoch
    return segments


def lr_at(epoch: float, base_lr: float, schedule: str, total_epochs: int) -> float:
    """Learning rate at a (fractional) epoch of the main run; probes use the same curve."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(max(epoch / total_epochs, 0.0), 1.0)
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}: expected one of {LR_SCHEDULES}")

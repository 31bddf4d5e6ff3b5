"""What the engine trains and evaluates on: a ``BatchSource``, and the in-memory one.

Arrays live in memory as ``TensorData``; a media manifest's clips are decoded by worker
processes (``media.dataset.MediaData``). Both hand the engine one ``(inputs, targets)``
per index tensor of an order it chooses, so the engine does not know which it has.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class BatchSource(Protocol):
    """What the engine trains and evaluates on.

    ``batches(order, train=, epoch=)`` yields one ``(inputs, targets)`` per index tensor
    of ``order``, in that order: ``inputs[m]`` holds ``len(index) * clips_per_sample``
    samples (the clips of one sample are consecutive), ``targets`` one row per sample.
    ``train`` asks for training-time augmentation, seeded by ``epoch``. A source may cap
    the samples of an evaluation batch with an ``eval_batch_size`` attribute (video clips
    are far larger than feature vectors).
    """

    clips_per_sample: int

    def __len__(self) -> int: ...

    def batches(self, order: Sequence[torch.Tensor], *, train: bool, epoch: int) -> Iterator[Batch]: ...


@dataclass
class SubsetSource:
    """The samples at ``positions`` of ``parent``, as a source of their own (the probes'
    part of T with ``probes.subset`` < 1): position i of an order is ``positions[i]`` of
    the parent, so augmentation and clip decoding are the parent's."""

    parent: BatchSource
    positions: torch.Tensor

    @property
    def clips_per_sample(self) -> int:
        return self.parent.clips_per_sample

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, order: Sequence[torch.Tensor], *, train: bool, epoch: int) -> Iterator[Batch]:
        return self.parent.batches([self.positions[index] for index in order], train=train, epoch=epoch)


def seeded_subset(source: BatchSource, fraction: float, seed: int) -> BatchSource:
    """``fraction`` of ``source``'s samples (at least one), drawn by ``seed``; the source
    itself when ``fraction`` is 1."""
    if fraction >= 1.0:
        return source
    n = len(source)
    keep = max(1, math.ceil(fraction * n))
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep]
    return SubsetSource(source, torch.sort(picked).values)


@dataclass
class TensorData:
    """Inputs per modality and targets, indexed on the first axis; with
    ``clips_per_sample`` k > 1, ``inputs`` hold k consecutive rows per target."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    clips_per_sample: int = 1

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_arrays(cls, modalities: dict[str, np.ndarray], labels: np.ndarray, indices: np.ndarray,
                    device: str | torch.device = "cpu") -> TensorData:
        idx = np.asarray(indices, dtype=np.int64)
        inputs = {m: torch.as_tensor(a[idx], dtype=torch.float32, device=device) for m, a in modalities.items()}
        dtype = torch.float32 if labels.ndim > 1 else torch.int64
        return cls(inputs, torch.as_tensor(labels[idx], dtype=dtype, device=device))

    def take(self, index: torch.Tensor) -> Batch:
        k = self.clips_per_sample  # inputs hold k consecutive rows (clips) per sample
        rows = index if k == 1 else (index[:, None] * k + torch.arange(k, device=index.device)).reshape(-1)
        return {m: x[rows] for m, x in self.inputs.items()}, self.targets[index]

    def batches(self, order: Sequence[torch.Tensor], *, train: bool, epoch: int) -> Iterator[Batch]:
        return (self.take(index) for index in order)

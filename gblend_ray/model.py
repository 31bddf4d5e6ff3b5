"""The multi-head network: an encoder and a classifier head per modality, and the
fused head on all of their features (the paper's Fig. 3, late fusion).

``forward`` returns logits for every head asked for, by name (the fused head is
``"fused"``); only the encoders those heads need are run, so a uni-modal model or a
uni-modal probe pays for its own branch alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .encoders import build_encoder
from .fusion import build_fusion
from .plan import FUSED
from .spec import ModelSpec

DETACHED = "/detached"
"""Suffix of a head's logits computed on features cut from the encoders' graph."""


class MultiHeadNet(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        if set(encoders) != set(heads):
            raise ValueError(f"encoders {sorted(encoders)} and heads {sorted(heads)} must name the same modalities")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(heads)
        self.fusion = fusion

    @property
    def head_names(self) -> list[str]:
        return [*self.modalities, FUSED]

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        heads: Iterable[str] | None = None,
        detached: Iterable[str] = (),
    ) -> dict[str, torch.Tensor]:
        """Logits of ``heads`` (default: all). For each head in ``detached`` also return
        ``"<head>/detached"``: the same head on features detached from the encoders, so
        a loss on it trains that head's own parameters and nothing beneath them."""
        heads = list(self.head_names if heads is None else heads)
        detached = list(detached)
        needed = self.modalities if FUSED in heads or FUSED in detached else [m for m in self.modalities if m in heads or m in detached]
        features = {m: self.encoders[m](inputs[m]) for m in needed}
        out = {}
        for head in heads:
            out[head] = self._head(head, features)
        for head in detached:
            out[head + DETACHED] = self._head(head, {m: f.detach() for m, f in features.items()})
        return out

    def _head(self, head: str, features: dict[str, torch.Tensor]) -> torch.Tensor:
        if head == FUSED:
            return self.fusion(features)
        return self.heads[head](features[head])

    def own_parameters(self, head: str) -> list[nn.Parameter]:
        """The head's classifier alone (for the fused head: the fusion module)."""
        self._check_head(head)
        return list((self.fusion if head == FUSED else self.heads[head]).parameters())

    def parameters_of(self, head: str) -> list[nn.Parameter]:
        """Every parameter that ``head``'s loss reaches: what its probe trains."""
        self._check_head(head)
        modalities = self.modalities if head == FUSED else [head]
        params = [p for m in modalities for p in self.encoders[m].parameters()]
        return params + self.own_parameters(head)

    def _check_head(self, head: str) -> None:
        if head not in self.head_names:
            raise ValueError(f"unknown head {head!r}: the model's heads are {self.head_names}")


def build_model(spec: ModelSpec, shapes: dict[str, tuple[int, ...]], num_classes: int) -> MultiHeadNet:
    """Build the network for a dataset's modality shapes from the encoder and fusion registries."""
    unknown = set(spec.encoders) - set(shapes)
    if unknown:
        raise ValueError(f"model.encoders names {sorted(unknown)}, which the dataset lacks; its modalities are {list(shapes)}")
    encoders = {m: build_encoder(spec.encoders.get(m, spec.encoder), shape, spec) for m, shape in shapes.items()}
    dims = {m: e.feature_dim for m, e in encoders.items()}
    heads = {m: nn.Linear(d, num_classes) for m, d in dims.items()}
    return MultiHeadNet(encoders, heads, build_fusion(spec.fusion, dims, num_classes, spec))

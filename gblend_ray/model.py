"""The multi-head network: an encoder and a classifier head per modality, and the
fused head on all of their features (the paper's Fig. 3, late fusion).

``forward`` returns logits for every head asked for, by name (the fused head is
``"fused"``); only the encoders those heads need are run, so a uni-modal model or a
uni-modal probe pays for its own branch alone.

A fusion with ``uses_intermediate = True`` (mid-level fusion) is fed each encoder's
intermediate representation; the per-modality heads still read each encoder's final
features, and every encoder's trunk runs once (intermediate, then the rest).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .encoders import INTERMEDIATE_API, build_encoder
from .fusion import build_fusion, fusion_uses_intermediate
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
        self.uses_intermediate = bool(getattr(fusion, "uses_intermediate", False))
        if self.uses_intermediate:
            _require_intermediate(encoders, type(fusion).__name__)

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
        if self.uses_intermediate:
            # The fusion reads intermediates; the uni heads read final features,
            # finished from the same intermediates (each trunk runs once).
            fused_in = {m: self.encoders[m].intermediate(inputs[m]) for m in needed}
            features = {m: self.encoders[m].from_intermediate(fused_in[m])
                        for m in needed if m in heads or m in detached}
        else:
            features = {m: self.encoders[m](inputs[m]) for m in needed}
            fused_in = features
        out = {}
        for head in heads:
            out[head] = self._head(head, features, fused_in)
        for head in detached:
            out[head + DETACHED] = self._head(head, {m: f.detach() for m, f in features.items()},
                                              {m: f.detach() for m, f in fused_in.items()})
        return out

    def _head(self, head: str, features: dict[str, torch.Tensor], fused_in: dict[str, torch.Tensor]) -> torch.Tensor:
        if head == FUSED:
            return self.fusion(fused_in)
        return self.heads[head](features[head])

    def own_parameters(self, head: str) -> list[nn.Parameter]:
        """The head's classifier alone (for the fused head: the fusion module)."""
        self._check_head(head)
        return list((self.fusion if head == FUSED else self.heads[head]).parameters())

    def parameters_of(self, head: str) -> list[nn.Parameter]:
        """Every parameter that ``head``'s loss reaches: what its probe trains."""
        self._check_head(head)
        if head == FUSED:
            if self.uses_intermediate:
                params = [p for m in self.modalities for p in self.encoders[m].intermediate_parameters()]
            else:
                params = [p for m in self.modalities for p in self.encoders[m].parameters()]
        else:
            params = list(self.encoders[head].parameters())
        return params + self.own_parameters(head)

    def _check_head(self, head: str) -> None:
        if head not in self.head_names:
            raise ValueError(f"unknown head {head!r}: the model's heads are {self.head_names}")


def _require_intermediate(encoders: dict[str, nn.Module], fusion: str, names: dict[str, str] | None = None) -> None:
    """A mid-level fusion needs every encoder to expose an intermediate representation."""
    for m, encoder in encoders.items():
        missing = [a for a in INTERMEDIATE_API if not hasattr(encoder, a)]
        if missing:
            name = (names or {}).get(m, type(encoder).__name__)
            raise ValueError(f"fusion {fusion!r} fuses intermediate features, but encoder {name!r} "
                             f"(modality {m!r}) has no intermediate representation (lacks {missing})")


def build_model(spec: ModelSpec, shapes: dict[str, tuple[int, ...]], num_classes: int) -> MultiHeadNet:
    """Build the network for a dataset's modality shapes from the encoder and fusion registries."""
    unknown = set(spec.encoders) - set(shapes)
    if unknown:
        raise ValueError(f"model.encoders names {sorted(unknown)}, which the dataset lacks; its modalities are {list(shapes)}")
    names = {m: spec.encoders.get(m, spec.encoder) for m in shapes}
    encoders = {m: build_encoder(names[m], shape, spec) for m, shape in shapes.items()}
    dims = {m: e.feature_dim for m, e in encoders.items()}
    heads = {m: nn.Linear(d, num_classes) for m, d in dims.items()}
    fusion_dims = dims
    if fusion_uses_intermediate(spec.fusion):
        _require_intermediate(encoders, spec.fusion, names)
        fusion_dims = {m: e.intermediate_dim for m, e in encoders.items()}
    return MultiHeadNet(encoders, heads, build_fusion(spec.fusion, fusion_dims, num_classes, spec))

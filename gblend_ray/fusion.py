"""Fusion modules: the fused (prediction) head on every modality's features, by name.

A fusion takes ``{modality: features (batch, dim)}`` and returns logits; its parameters
are the fused head's own. Late concatenation is the paper's default (§3.1); further
variants (mid-level concatenation, SE gating, LMF) join this registry later.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .spec import ModelSpec

FusionBuilder = Callable[[dict[str, int], int, ModelSpec], nn.Module]

_REGISTRY: dict[str, FusionBuilder] = {}


def register_fusion(name: str) -> Callable[[FusionBuilder], FusionBuilder]:
    def add(builder: FusionBuilder) -> FusionBuilder:
        if name in _REGISTRY:
            raise ValueError(f"fusion {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return add


def fusion_names() -> list[str]:
    return sorted(_REGISTRY)


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown fusion {name!r}: registered fusions are {fusion_names()}")
    return _REGISTRY[name](dict(feature_dims), num_classes, spec)


class ConcatFusion(nn.Module):
    """Late fusion: concatenated features → two FC layers → prediction layer (paper §3.1)."""

    def __init__(self, feature_dims: dict[str, int], hidden_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(feature_dims)
        self.net = nn.Sequential(
            nn.Linear(sum(feature_dims.values()), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat([features[m] for m in self.modalities], dim=1))


@register_fusion("concat")
def concat(feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return ConcatFusion(feature_dims, spec.fusion_hidden_dim, num_classes, spec.dropout)

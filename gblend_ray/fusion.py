"""Fusion modules: the fused (prediction) head on every modality's features, by name.

A fusion takes ``{modality: features (batch, dim)}`` and returns logits; its parameters
are the fused head's own. Late concatenation is the paper's default (§3.1); further
variants (mid-level concatenation, SE gating, LMF) join this registry later.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import Registry
from .spec import ModelSpec

FusionBuilder = Callable[[dict[str, int], int, ModelSpec], nn.Module]

_FUSIONS: Registry[FusionBuilder] = Registry("fusion")
register_fusion = _FUSIONS.register
fusion_names = _FUSIONS.names


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return _FUSIONS.get(name)(dict(feature_dims), num_classes, spec)


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

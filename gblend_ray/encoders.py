"""Per-modality encoders, registered by name.

An encoder maps one modality's input ``(batch, *shape)`` to features ``(batch, dim)``.
A builder takes the modality's per-sample shape and the model spec and returns the
module with its ``feature_dim`` attribute set; adding a backbone is one registered
builder (video and audio backbones join this registry later).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .spec import ModelSpec

EncoderBuilder = Callable[[tuple[int, ...], ModelSpec], nn.Module]

_REGISTRY: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    def add(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return add


def encoder_names() -> list[str]:
    return sorted(_REGISTRY)


def build_encoder(name: str, input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}: registered encoders are {encoder_names()}")
    encoder = _REGISTRY[name](tuple(input_shape), spec)
    if not isinstance(getattr(encoder, "feature_dim", None), int):
        raise TypeError(f"encoder builder {name!r} must set an int feature_dim on its module")
    return encoder


class MLPEncoder(nn.Module):
    """Feature-vector encoder: flatten → Linear → ReLU → Linear → ReLU."""

    def __init__(self, in_dim: int, hidden_dim: int, feature_dim: int, dropout: float = 0.0):
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.net(x)


@register_encoder("mlp")
def mlp(input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    return MLPEncoder(math.prod(input_shape), spec.hidden_dim, spec.feature_dim, spec.dropout)

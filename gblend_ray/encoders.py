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

from .registry import Registry
from .spec import ModelSpec

EncoderBuilder = Callable[[tuple[int, ...], ModelSpec], nn.Module]

_ENCODERS: Registry[EncoderBuilder] = Registry("encoder")
register_encoder = _ENCODERS.register
encoder_names = _ENCODERS.names


def build_encoder(name: str, input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    encoder = _ENCODERS.get(name)(tuple(input_shape), spec)
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

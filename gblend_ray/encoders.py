"""Per-modality encoders, registered by name.

An encoder maps one modality's input ``(batch, *shape)`` to features ``(batch, dim)``.
A builder takes the modality's per-sample shape and the model spec and returns the
module with its ``feature_dim`` attribute set; adding a backbone is one registered
builder (video and audio backbones join this registry later).

An encoder may also expose an intermediate representation for mid-level fusion:
``intermediate(x)`` (batch, intermediate_dim), ``from_intermediate(h)`` finishing the
encoder (``forward(x) == from_intermediate(intermediate(x))``), an int
``intermediate_dim`` and ``intermediate_parameters()``, the parameters that
``intermediate`` uses (see ``INTERMEDIATE_API``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .registry import Registry
from .spec import ModelSpec

EncoderBuilder = Callable[[tuple[int, ...], ModelSpec], nn.Module]

INTERMEDIATE_API = ("intermediate", "from_intermediate", "intermediate_dim", "intermediate_parameters")
"""What an encoder must have for a fusion that fuses intermediate features."""

_ENCODERS: Registry[EncoderBuilder] = Registry("encoder")
register_encoder = _ENCODERS.register
encoder_names = _ENCODERS.names


def build_encoder(name: str, input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    encoder = _ENCODERS.get(name)(tuple(input_shape), spec)
    if not isinstance(getattr(encoder, "feature_dim", None), int):
        raise TypeError(f"encoder builder {name!r} must set an int feature_dim on its module")
    return encoder


class MLPEncoder(nn.Module):
    """Feature-vector encoder: flatten → Linear → ReLU → Linear → ReLU.

    Its intermediate representation is the first hidden layer's activation."""

    _SPLIT = 3
    """``net[:_SPLIT]`` (flatten → Linear → ReLU) computes the intermediate representation."""

    def __init__(self, in_dim: int, hidden_dim: int, feature_dim: int, dropout: float = 0.0):
        super().__init__()
        self.feature_dim = feature_dim
        self.intermediate_dim = hidden_dim
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

    def intermediate(self, x):
        """The first hidden layer's activation (batch, hidden_dim)."""
        return self.net[: self._SPLIT](x)

    def from_intermediate(self, h):
        """Finish the encoder from ``intermediate``'s output."""
        return self.net[self._SPLIT :](h)

    def intermediate_parameters(self) -> list[nn.Parameter]:
        """The parameters ``intermediate`` uses (the first Linear layer)."""
        return list(self.net[: self._SPLIT].parameters())


@register_encoder("mlp")
def mlp(input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    return MLPEncoder(math.prod(input_shape), spec.hidden_dim, spec.feature_dim, spec.dropout)

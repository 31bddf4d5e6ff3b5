"""Per-modality encoders, registered by name.

An encoder maps one modality's input ``(batch, *shape)`` to features ``(batch, dim)``.
A builder takes the modality's per-sample shape and the model spec and returns the
module with its ``feature_dim`` attribute set; adding a backbone is one registered
builder. Registered:

- ``mlp``: flatten → two FC layers, for feature vectors (``spec.hidden_dim``,
  ``spec.feature_dim``).
- ``r3d_18``, ``r2plus1d_18``, ``mc3_18``: torchvision video ResNets for clips shaped
  (C, T, H, W), C=3 for RGB or 2 for optical flow; feature_dim 512.
- ``resnet18``, ``resnet50``: torchvision 2-D ResNets for log-Mel audio shaped
  (1, n_mels, frames) (any C); feature_dim 512 / 2048.

The torchvision backbones are built randomly initialised (``weights=None``: nothing is
downloaded) and without their classifier ``fc``, so ``spec.hidden_dim`` and
``spec.feature_dim`` do not apply to them; pretrained weights come from a local file
through ``model.weights`` (see ``model.load_encoder_weights``). A stem whose input
channels differ from the modality's C is replaced by a fresh one taking C channels.

An encoder may also expose an intermediate representation for mid-level fusion:
``intermediate(x)``, ``from_intermediate(h)`` finishing the encoder
(``forward(x) == from_intermediate(intermediate(x))``), an int ``intermediate_dim`` and
``intermediate_parameters()``, the parameters that ``intermediate`` uses (see
``INTERMEDIATE_API``). The intermediate is (batch, intermediate_dim) for ``mlp``, and
for the ResNets ``layer3``'s feature map (batch, intermediate_dim, *spatial), which a
mid-level fusion pools.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..core.registry import Registry
from ..core.spec import ModelSpec

EncoderBuilder = Callable[[tuple[int, ...], ModelSpec], nn.Module]

INTERMEDIATE_API = ("intermediate", "from_intermediate", "intermediate_dim", "intermediate_parameters")
"""What an encoder must have for a fusion that fuses intermediate features."""

_ENCODERS: Registry[EncoderBuilder] = Registry("encoder")
register_encoder = _ENCODERS.register
encoder_names = _ENCODERS.names
user_encoders = functools.partial(_ENCODERS.extra, "gblend_ray")
"""The encoders registered by a user's code, to hand to worker processes."""
adopt_encoders = _ENCODERS.adopt


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


class ResNetEncoder(nn.Module):
    """A torchvision ResNet (2-D or video) without its classifier: stem → layer1..4 →
    global average pool → (batch, fc.in_features).

    The submodules keep torchvision's names, so the encoder's state dict is the
    torchvision model's without ``fc.*`` and a full torchvision checkpoint loads into it.
    The intermediate representation is ``layer3``'s feature map, so that a mid-level
    fusion's head reaches the stem..layer3 and leaves ``layer4`` to the uni-modal head."""

    def __init__(self, backbone: nn.Module, stem: tuple[str, ...]):
        super().__init__()
        self._trunk_names = (*stem, "layer1", "layer2", "layer3")
        for name in (*self._trunk_names, "layer4"):
            self.add_module(name, getattr(backbone, name))
        self.feature_dim = backbone.fc.in_features
        self.intermediate_dim = _out_channels(self.layer3)

    def _trunk(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self._trunk_names]

    def forward(self, x):
        return self.from_intermediate(self.intermediate(x))

    def intermediate(self, x):
        """``layer3``'s feature map (batch, intermediate_dim, *spatial)."""
        for module in self._trunk():
            x = module(x)
        return x

    def from_intermediate(self, h):
        """``layer4`` → global average pool → (batch, feature_dim)."""
        return self.layer4(h).flatten(2).mean(2)

    def intermediate_parameters(self) -> list[nn.Parameter]:
        """The stem's and ``layer1``..``layer3``'s parameters."""
        return [p for module in self._trunk() for p in module.parameters()]


def _out_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet layer: its last batch norm's width."""
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return norms[-1].num_features


def _with_in_channels(conv: nn.Module, channels: int) -> nn.Module:
    """A freshly initialised copy of ``conv`` taking ``channels`` input channels."""
    return type(conv)(channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None)


def _torchvision(module: str, name: str) -> nn.Module:
    """The torchvision model ``name``, randomly initialised. Imported on use, so that
    importing the registry (every worker does) does not import torchvision."""
    return getattr(importlib.import_module(module), name)(weights=None)


@dataclass(frozen=True)
class _BackboneKind:
    module: str
    """Where torchvision defines the models."""
    input: str
    """The per-sample shape the models take, in words."""
    others: str
    """What to use for the other shapes, for the error message."""
    ndim: int
    stem: tuple[str, ...]
    """The stem's submodules, in order."""
    first_conv: str
    """The stem's first convolution (replaced to take the modality's channels)."""


_VIDEO = _BackboneKind("torchvision.models.video", "video clips shaped (C, T, H, W) (C=3 for RGB, 2 for optical flow)",
                       "'resnet18' or 'resnet50' for (1, n_mels, frames) audio", 4, ("stem",), "stem.0")
_AUDIO = _BackboneKind("torchvision.models", "log-Mel spectrograms shaped (C, n_mels, frames) (C=1 for audio)",
                       "'r3d_18', 'r2plus1d_18' or 'mc3_18' for (C, T, H, W) video", 3,
                       ("conv1", "bn1", "relu", "maxpool"), "conv1")


def _backbone_builder(name: str, kind: _BackboneKind) -> EncoderBuilder:
    def build(input_shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
        if len(input_shape) != kind.ndim:
            raise ValueError(
                f"encoder {name!r} takes {kind.input}, but the modality's per-sample shape is {input_shape}; "
                f"give this modality an encoder for its shape in model.encoders ({kind.others}, "
                "'mlp' for feature vectors)")
        backbone = _torchvision(kind.module, name)
        first = backbone.get_submodule(kind.first_conv)
        if input_shape[0] != first.in_channels:
            parent, _, attr = kind.first_conv.rpartition(".")
            setattr(backbone.get_submodule(parent), attr, _with_in_channels(first, input_shape[0]))
        return ResNetEncoder(backbone, kind.stem)

    return build


VIDEO_BACKBONES = ("r3d_18", "r2plus1d_18", "mc3_18")
"""torchvision.models.video backbones, for (C, T, H, W) clips."""
AUDIO_BACKBONES = ("resnet18", "resnet50")
"""torchvision 2-D ResNets, for (C, n_mels, frames) log-Mel spectrograms."""

for _name in VIDEO_BACKBONES:
    register_encoder(_name)(_backbone_builder(_name, _VIDEO))
for _name in AUDIO_BACKBONES:
    register_encoder(_name)(_backbone_builder(_name, _AUDIO))

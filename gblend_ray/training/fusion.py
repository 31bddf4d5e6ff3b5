"""Fusion modules: the fused (prediction) head on every modality's features, by name.

A fusion takes ``{modality: features (batch, dim)}`` and returns logits; its parameters
are the fused head's own. Late concatenation is the paper's default (§3.1); the other
registered variants are squeeze-and-excitation gating (``se``), low-rank multimodal
fusion (``lmf``, Liu et al. 2018) and mid-level concatenation (``mid_concat``).

A fusion whose module has ``uses_intermediate = True`` (and whose builder carries the
same attribute, see ``fusion_uses_intermediate``) is given each encoder's intermediate
representation (``encoder.intermediate(x)``) instead of its final features; its builder
receives the encoders' ``intermediate_dim`` as ``feature_dims``. An intermediate may be
a conv encoder's feature map (batch, intermediate_dim, *spatial); ``mid_concat`` pools it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ..core.registry import Registry
from ..core.spec import ModelSpec

FusionBuilder = Callable[[dict[str, int], int, ModelSpec], nn.Module]

_FUSIONS: Registry[FusionBuilder] = Registry("fusion")
register_fusion = _FUSIONS.register
fusion_names = _FUSIONS.names
user_fusions = functools.partial(_FUSIONS.extra, "gblend_ray")
"""The fusions registered by a user's code, to hand to worker processes."""
adopt_fusions = _FUSIONS.adopt

LMF_RANK = 4
"""Default rank of the low-rank factors of ``lmf`` (not part of ModelSpec)."""
SE_REDUCTION = 4
"""Bottleneck reduction of the ``se`` gate: hidden width = total feature dim // SE_REDUCTION."""


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return _FUSIONS.get(name)(dict(feature_dims), num_classes, spec)


def fusion_uses_intermediate(name: str) -> bool:
    """Whether the registered fusion ``name`` fuses the encoders' intermediate features."""
    return bool(getattr(_FUSIONS.get(name), "uses_intermediate", False))


def _head_mlp(in_dim: int, hidden_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """FC → FC → prediction layer; with ``hidden_dim`` 0 the prediction layer alone (a linear
    late-fusion head, whose logits split into per-modality parts: OGM-GE's official setting)."""
    if hidden_dim == 0:
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, num_classes),
    )


class ConcatFusion(nn.Module):
    """Late fusion: concatenated features → two FC layers → prediction layer (paper §3.1)."""

    uses_intermediate = False

    def __init__(self, feature_dims: dict[str, int], hidden_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(feature_dims)
        self.net = _head_mlp(sum(feature_dims.values()), hidden_dim, num_classes, dropout)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat([features[m] for m in self.modalities], dim=1))


class MidConcatFusion(ConcatFusion):
    """Mid-level fusion: the encoders' intermediate features, concatenated → FC → FC →
    prediction layer. The fused head reaches only the encoders' layers up to their
    intermediate representation.

    A conv encoder's intermediate is a feature map (batch, channels, *spatial) whose
    spatial size differs between modalities; it is global-average-pooled to
    (batch, channels) so that maps of any size concatenate with vectors."""

    uses_intermediate = True

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward({m: h.flatten(2).mean(2) if h.dim() > 2 else h for m, h in features.items()})


class SEFusion(nn.Module):
    """Squeeze-and-excitation gating: a gate FC → ReLU → FC → sigmoid on all modalities'
    concatenated features gives one sigmoid weight per feature channel of every modality;
    the re-weighted features are concatenated → FC → FC → prediction layer."""

    uses_intermediate = False

    def __init__(self, feature_dims: dict[str, int], hidden_dim: int, num_classes: int, dropout: float = 0.0,
                 reduction: int = SE_REDUCTION):
        super().__init__()
        self.modalities = list(feature_dims)
        self.dims = [feature_dims[m] for m in self.modalities]
        total = sum(self.dims)
        self.gate = nn.Sequential(
            nn.Linear(total, max(1, total // reduction)),
            nn.ReLU(),
            nn.Linear(max(1, total // reduction), total),
            nn.Sigmoid(),
        )
        self.net = _head_mlp(total, hidden_dim, num_classes, dropout)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([features[m] for m in self.modalities], dim=1)
        gates = self.gate(x).split(self.dims, dim=1)
        gated = [features[m] * g for m, g in zip(self.modalities, gates)]
        return self.net(torch.cat(gated, dim=1))


class LMFFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018): each modality's features with a 1
    appended are projected by ``rank`` factors; the projections are multiplied
    elementwise across modalities and summed over the rank (with learned rank weights
    and a bias) into a ``hidden_dim`` vector → ReLU → prediction layer."""

    uses_intermediate = False

    def __init__(self, feature_dims: dict[str, int], hidden_dim: int, num_classes: int, dropout: float = 0.0,
                 rank: int = LMF_RANK):
        super().__init__()
        if rank < 1:
            raise ValueError(f"lmf rank must be at least 1, got {rank}")
        if hidden_dim < 1:
            raise ValueError(f"lmf needs a fused width (model.fusion_hidden_dim) >= 1, got {hidden_dim}")
        self.modalities = list(feature_dims)
        self.rank = rank
        self.factors = nn.ParameterDict({
            # std 1/sqrt(d + 1), a Linear layer's scale: each projection starts at unit scale.
            # Xavier over the 3-D factor (fan-in (d + 1) * hidden) makes them ~0.01 and their
            # product ~1e-4, which SGD cannot move: naive LMF stayed at chance (9.4% on av-overfit).
            m: nn.Parameter(torch.randn(rank, d + 1, hidden_dim) / (d + 1) ** 0.5)
            for m, d in feature_dims.items()
        })
        self.rank_weights = nn.Parameter(torch.full((1, rank), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(hidden_dim))
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        product = None
        for m in self.modalities:
            z = features[m]
            z = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
            proj = torch.einsum("bd,rdh->rbh", z, self.factors[m])  # (rank, batch, hidden)
            product = proj if product is None else product * proj
        fused = torch.einsum("r,rbh->bh", self.rank_weights[0], product) + self.bias
        return self.out(fused)


@register_fusion("concat")
def concat(feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return ConcatFusion(feature_dims, spec.fusion_hidden_dim, num_classes, spec.dropout)


@register_fusion("se")
def se(feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return SEFusion(feature_dims, spec.fusion_hidden_dim, num_classes, spec.dropout)


@register_fusion("lmf")
def lmf(feature_dims: dict[str, int], num_classes: int, spec: ModelSpec, rank: int = LMF_RANK) -> nn.Module:
    return LMFFusion(feature_dims, spec.fusion_hidden_dim, num_classes, spec.dropout, rank=rank)


@register_fusion("mid_concat")
def mid_concat(feature_dims: dict[str, int], num_classes: int, spec: ModelSpec) -> nn.Module:
    return MidConcatFusion(feature_dims, spec.fusion_hidden_dim, num_classes, spec.dropout)


mid_concat.uses_intermediate = True

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

import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..core.plan import FUSED
from ..core.spec import ModelSpec
from .encoders import INTERMEDIATE_API, build_encoder
from .fusion import build_fusion, fusion_uses_intermediate

DETACHED = "/detached"
"""Suffix of a head's logits computed on features cut from the encoders' graph."""
LOG_VAR = "/log_var"
"""Suffix of a head's learned log-variance (method ``uncertainty``) in ``forward``'s output."""
FEATURES = "/features"
"""Suffix of a modality's final encoder features in ``forward``'s output (``features=True``)."""


class MultiHeadNet(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, nn.Module], fusion: nn.Module,
                 fusion_dropout: float = 0.0, learned_weights: bool = False):
        super().__init__()
        if set(encoders) != set(heads):
            raise ValueError(f"encoders {sorted(encoders)} and heads {sorted(heads)} must name the same modalities")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(heads)
        self.fusion = fusion
        self.fusion_dropout = nn.Dropout(fusion_dropout)
        # s_i = log σ_i² per head (Kendall et al. 2018); zero: every head starts at weight 1.
        self.log_vars = (nn.ParameterDict({h: nn.Parameter(torch.zeros(())) for h in self.head_names})
                         if learned_weights else None)
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
        log_vars: bool = False,
        features: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Logits of ``heads`` (default: all). For each head in ``detached`` also return
        ``"<head>/detached"``: the same head on features detached from the encoders, so
        a loss on it trains that head's own parameters and nothing beneath them. With
        ``log_vars`` and learned weights, also ``"<head>/log_var"``: returned from the
        forward pass so that DDP sees the parameters reached and averages their gradients.
        With ``features``, also every modality's final encoder features as
        ``"<modality>/features"`` (what PMR's prototypes and OGM-GE's linear split read)."""
        heads = list(self.head_names if heads is None else heads)
        detached = list(detached)
        want_features = features
        needed = (self.modalities if FUSED in heads or FUSED in detached or want_features
                  else [m for m in self.modalities if m in heads or m in detached])
        if self.uses_intermediate:
            # The fusion reads intermediates; the uni heads read final features,
            # finished from the same intermediates (each trunk runs once).
            fused_in = {m: self.encoders[m].intermediate(inputs[m]) for m in needed}
            features = {m: self.encoders[m].from_intermediate(fused_in[m])
                        for m in needed if m in heads or m in detached or want_features}
        else:
            features = {m: self.encoders[m](inputs[m]) for m in needed}
            fused_in = features
        out = {m + FEATURES: f for m, f in features.items()} if want_features else {}
        for head in heads:
            out[head] = self._head(head, features, fused_in)
        for head in detached:
            out[head + DETACHED] = self._head(head, {m: f.detach() for m, f in features.items()},
                                              {m: f.detach() for m, f in fused_in.items()})
        if log_vars and self.log_vars is not None:
            for head in heads:
                out[head + LOG_VAR] = self.log_vars[head] * 1.0
        return out

    def _head(self, head: str, features: dict[str, torch.Tensor], fused_in: dict[str, torch.Tensor]) -> torch.Tensor:
        if head == FUSED:
            return self.fusion({m: self.fusion_dropout(f) for m, f in fused_in.items()})
        return self.heads[head](features[head])

    def learned_weights(self) -> dict[str, float] | None:
        """The current uncertainty weights exp(−s_i) of every head (None without them)."""
        if self.log_vars is None:
            return None
        return {h: float(torch.exp(-self.log_vars[h].detach())) for h in self.head_names}

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


_SHOWN_KEYS = 8
"""Keys named in a weights error before the rest are counted."""


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def load_encoder_weights(encoder: nn.Module, path: str, modality: str) -> None:
    """Load the state dict saved at ``path`` (``model.weights``) into ``modality``'s encoder.

    Takes the encoder's own state dict or a full torchvision model's, whose classifier
    ``fc.*`` is dropped (the encoders have none). Loaded with ``weights_only=True``: a
    state dict is only tensors, and unpickling anything more could run code. Every
    mismatch is an error rather than a partial load, so that a run never trains from
    weights that were silently left out."""
    where = f"model.weights.{modality}: {path!r}"
    save_hint = ("save one with torch.save(encoder.state_dict(), path) from an encoder built for this "
                 "modality's shape")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file; give the path of a local state dict ({save_hint})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where} could not be loaded as a state dict with weights_only=True ({reason}); "
                         f"{save_hint} (a pickled module is refused)") from err
    if not (isinstance(state, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in state.items())):
        raise ValueError(f"{where} holds a {type(state).__name__}, not a state dict (a mapping of parameter "
                         f"names to tensors); {save_hint}")
    own = encoder.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("fc.")}
    stem = next(iter(own), None)
    if stem in state and state[stem].dim() == own[stem].dim() > 1 and state[stem].shape[1] != own[stem].shape[1]:
        unit = "input channels" if own[stem].dim() > 2 else "input features"
        raise ValueError(f"{where}: its input layer {stem!r} takes {state[stem].shape[1]} {unit}, but the "
                         f"encoder of modality {modality!r} takes {own[stem].shape[1]}; {save_hint}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} (encoder: {tuple(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{what}: {_keys(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise ValueError(f"{where} does not fit the encoder of modality {modality!r} ({type(encoder).__name__}) "
                         f"({'; '.join(problems)}); check that model.encoders.{modality} names the encoder "
                         f"the weights were saved from, or {save_hint}")
    encoder.load_state_dict(state)


def build_model(spec: ModelSpec, shapes: dict[str, tuple[int, ...]], num_classes: int,
                learned_weights: bool = False) -> MultiHeadNet:
    """Build the network for a dataset's modality shapes from the encoder and fusion
    registries; ``learned_weights`` adds a learned loss weight per head (``uncertainty``)."""
    unknown = set(spec.encoders) - set(shapes)
    if unknown:
        raise ValueError(f"model.encoders names {sorted(unknown)}, which the dataset lacks; its modalities are {list(shapes)}")
    unknown = set(spec.weights) - set(shapes)
    if unknown:
        raise ValueError(f"model.weights names {sorted(unknown)}, which the dataset lacks; its modalities are {list(shapes)}")
    names = {m: spec.encoders.get(m, spec.encoder) for m in shapes}
    encoders = {m: build_encoder(names[m], shape, spec) for m, shape in shapes.items()}
    for m, path in spec.weights.items():
        load_encoder_weights(encoders[m], path, m)
    dims = {m: e.feature_dim for m, e in encoders.items()}
    heads = {m: nn.Linear(d, num_classes) for m, d in dims.items()}
    fusion_dims = dims
    if fusion_uses_intermediate(spec.fusion):
        _require_intermediate(encoders, spec.fusion, names)
        fusion_dims = {m: e.intermediate_dim for m, e in encoders.items()}
    return MultiHeadNet(encoders, heads, build_fusion(spec.fusion, fusion_dims, num_classes, spec),
                        fusion_dropout=spec.fusion_dropout, learned_weights=learned_weights)

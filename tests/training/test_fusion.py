import math

import pytest
import torch

from gblend_ray.core.spec import ModelSpec, OptimSpec
from gblend_ray.data.sources import TensorData
from gblend_ray.training import encoders as encoders_mod
from gblend_ray.training.encoders import MLPEncoder
from gblend_ray.training.engine import make_optimizer, train_epochs
from gblend_ray.training.fusion import (
    LMF_RANK,
    ConcatFusion,
    LMFFusion,
    build_fusion,
    fusion_names,
    fusion_uses_intermediate,
)
from gblend_ray.training.model import build_model
from gblend_ray.training.probe import run_probe

SHAPES = {"m1": (6,), "m2": (10,)}
FUSIONS = fusion_names()


def _spec(fusion, **kw):
    return ModelSpec(hidden_dim=12, feature_dim=8, fusion_hidden_dim=10, fusion=fusion, **kw)


def _model(fusion):
    torch.manual_seed(0)
    return build_model(_spec(fusion), SHAPES, num_classes=5)


def _inputs(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"m1": torch.randn(n, 6, generator=g), "m2": torch.randn(n, 10, generator=g)}


def _data(n=40, seed=2):
    g = torch.Generator().manual_seed(seed)
    return TensorData({"m1": torch.randn(n, 6, generator=g), "m2": torch.randn(n, 10, generator=g)},
                      torch.randint(0, 5, (n,), generator=g))


def _ids(params):
    return {id(p) for p in params}


def test_registry_holds_every_variant_and_concat_is_default():
    assert {"concat", "se", "lmf", "mid_concat"} <= set(FUSIONS)
    assert ModelSpec().fusion == "concat"
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4, fusion_hidden_dim=8), SHAPES, 5)
    assert type(model.fusion) is ConcatFusion and not model.uses_intermediate
    assert fusion_uses_intermediate("mid_concat") and not fusion_uses_intermediate("concat")


def test_unknown_fusion_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown fusion 'nope'") as err:
        build_fusion("nope", {"m1": 4}, 5, ModelSpec())
    for name in FUSIONS:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_returns_logits_for_every_head(fusion):
    model = _model(fusion)
    out = model(_inputs(7))
    assert list(out) == ["m1", "m2", "fused"]
    for logits in out.values():
        assert logits.shape == (7, 5) and torch.isfinite(logits).all()
    only_fused = model(_inputs(7), heads=["fused"])
    assert list(only_fused) == ["fused"]
    assert torch.allclose(only_fused["fused"], out["fused"])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("head", ["m1", "m2", "fused"])
def test_parameters_of_is_exactly_what_the_head_reaches(fusion, head):
    model = _model(fusion)
    out = model(_inputs())  # every head in one graph: the check must hold when they share it
    out[head].sum().backward()
    reached = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    listed = model.parameters_of(head)
    assert len(_ids(listed)) == len(listed)  # no duplicates
    assert reached <= _ids(listed)
    assert {id(p) for p in listed if p.requires_grad} <= reached


def test_mid_concat_fused_head_reaches_only_the_first_encoder_layers():
    model = _model("mid_concat")
    first = _ids(p for m in SHAPES for p in model.encoders[m].net[1].parameters())
    second = _ids(p for m in SHAPES for p in model.encoders[m].net[4].parameters())
    fused = _ids(model.parameters_of("fused"))
    assert fused == first | _ids(model.fusion.parameters())
    assert not fused & second
    # the fusion reads the intermediate (hidden_dim) activations of both encoders
    assert model.fusion.net[0].in_features == 2 * 12


def test_mlp_encoder_intermediate_composes_to_forward():
    torch.manual_seed(0)
    enc = MLPEncoder(24, 12, 8)
    x = torch.randn(5, 4, 6)
    h = enc.intermediate(x)
    assert h.shape == (5, 12) and enc.intermediate_dim == 12
    assert torch.equal(enc.from_intermediate(h), enc(x))
    assert _ids(enc.intermediate_parameters()) == _ids(enc.net[1].parameters())


def test_mid_fusion_rejects_an_encoder_without_intermediate(monkeypatch):
    class Plain(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.feature_dim = 4
            self.lin = torch.nn.Linear(dim, 4)

        def forward(self, x):
            return self.lin(x)

    monkeypatch.setitem(encoders_mod._ENCODERS._builders, "plain", lambda shape, spec: Plain(shape[0]))
    spec = _spec("mid_concat", encoders={"m2": "plain"})
    with pytest.raises(ValueError, match=r"fusion 'mid_concat'.*encoder 'plain'"):
        build_model(spec, SHAPES, 5)
    build_model(_spec("concat", encoders={"m2": "plain"}), SHAPES, 5)  # late fusion is fine


def test_lmf_default_rank_and_bias_term():
    model = _model("lmf")
    assert isinstance(model.fusion, LMFFusion) and model.fusion.rank == LMF_RANK == 4
    # one factor per modality, over features with the appended 1
    assert model.fusion.factors["m1"].shape == (4, 8 + 1, 10)
    assert model.fusion.factors["m2"].shape == (4, 8 + 1, 10)


def test_se_gates_are_in_unit_interval_and_cover_every_channel():
    model = _model("se")
    feats = {m: model.encoders[m](x) for m, x in _inputs().items()}
    gates = model.fusion.gate(torch.cat([feats["m1"], feats["m2"]], dim=1))
    assert gates.shape == (16, 16)
    assert ((gates > 0) & (gates < 1)).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_gblend_epoch_trains_every_parameter(fusion):
    model = _model(fusion)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.05, weight_decay=0.0))
    hist = train_epochs(model, _data(), opt, {"m1": 0.3, "m2": 0.3, "fused": 0.4}, 1,
                        batch_size=8, full_heads=["fused"])
    assert len(hist) == 1
    for h in ("m1", "m2", "fused"):
        assert math.isfinite(hist[0][f"loss/{h}"]) and hist[0][f"loss/{h}"] > 0
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert unchanged == []


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_probe_measures_and_moves_only_its_parameters(fusion):
    model = _model(fusion)
    data = _data()
    listed = _ids(model.parameters_of("fused"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = run_probe(model, "fused", train=data, train_subset=data, heldout=data,
                       optim=OptimSpec(lr=0.1, weight_decay=1e-3), epochs=3, start_epoch=0, seed=1)
    m = result.measurement
    values = (m.train_before, m.val_before, m.train_after, m.val_after)
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert m.train_after < m.train_before  # it learned the training data
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        assert moved == (id(p) in listed), n



@pytest.mark.parametrize("fusion", FUSIONS)
def test_detached_fused_head_trains_only_the_fusion(fusion):
    model = _model(fusion)
    out = model(_inputs(), heads=[], detached=["fused"])
    assert list(out) == ["fused/detached"]
    out["fused/detached"].sum().backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None for p in model.fusion.parameters())

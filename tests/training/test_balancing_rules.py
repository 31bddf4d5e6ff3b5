"""The balancing methods as the engine's step rules (``objective.py``): each step makes the
update its method defines, in the one training loop, and logs its quantities per epoch."""

import json

import pytest
import torch
from torch.testing import assert_close

from gblend_ray.cli import main
from gblend_ray.core.plan import parse_method
from gblend_ray.core.spec import RunSpec
from gblend_ray.data.sources import TensorData
from gblend_ray.training.balancing import (
    AGMRule,
    MMParetoRule,
    OGMRule,
    PMRRule,
    agm_coefficients,
    agm_scores,
    balancing_rule,
    mmpareto_gradients,
    ogm_coefficients,
    ogm_scores,
    shapley_responses,
)
from gblend_ray.training.engine import head_loss, make_optimizer, train_epochs
from gblend_ray.training.model import build_model
from gblend_ray.training.objective import StepContext

CLASSES = 3


def _model(modalities=("v", "a"), fusion_hidden_dim=8, seed=0):
    torch.manual_seed(seed)
    spec = RunSpec().model
    spec.hidden_dim, spec.feature_dim, spec.fusion_hidden_dim = 8, 4, fusion_hidden_dim
    shapes = {m: (5 + i,) for i, m in enumerate(modalities)}
    return build_model(spec, shapes, CLASSES)


def _batch(modalities=("v", "a"), n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, 5 + i, generator=g) for i, m in enumerate(modalities)}
    return inputs, torch.arange(n) % CLASSES


def _ctx(model, inputs, targets, epoch=0):
    return StepContext(model, model, TensorData(inputs, targets), batch_size=4, epoch=epoch)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_ogm_slows_the_dominant_encoder_by_k_and_trains_the_scoring_heads_on_detached_features():
    model = _model()
    inputs, targets = _batch()
    rule = OGMRule(model, alpha=0.8, ge=False, starts=0, ends=None)
    ctx = _ctx(model, inputs, targets)
    rule.begin_epoch(ctx)
    terms = rule.losses(ctx, inputs, targets)
    rule.backward(ctx, terms)
    plain = _grads(model)
    rule.after_backward(ctx)
    # the scores are the summed true-class probabilities of each head on detached features
    out = model(inputs, detached=["v", "a"])
    expected_k = ogm_coefficients(ogm_scores({m: out[m + "/detached"] for m in ("v", "a")}, targets), 0.8)
    for name, g in _grads(model).items():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        if m is not None and g.dim() >= 2:  # an MLP encoder's weight matrices are modulated
            assert_close(g, plain[name] * expected_k[m])
        else:
            assert_close(g, plain[name])  # biases, heads and the fused head are left as they are
    assert min(expected_k.values()) < 1 == max(expected_k.values())  # one side of ρ = 1 only
    # the encoders learn from the fused loss alone: the scoring heads' loss stops at the heads
    model.zero_grad(set_to_none=True)
    head_loss(model(inputs, heads=["fused"])["fused"], targets).backward()
    for name, g in _grads(model).items():
        if name.startswith("encoders."):
            assert_close(plain[name], g)
    assert all(n in plain for n in ("heads.v.weight", "heads.a.weight"))
    record = rule.end_epoch(ctx)
    assert set(record) == {f"ogm/{q}/{m}" for q in ("ratio", "k", "slowed") for m in ("v", "a")}


def test_ogm_ge_noise_is_the_same_stream_on_every_rank_and_outside_the_window_nothing_changes():
    inputs, targets = _batch()
    after = []
    for _ in range(2):  # two "ranks": same seed and epoch, same noise
        model = _model()
        rule = OGMRule(model, alpha=0.8, ge=True, starts=0, ends=None)
        ctx = _ctx(model, inputs, targets)
        rule.begin_epoch(ctx)
        rule.backward(ctx, rule.losses(ctx, inputs, targets))
        rule.after_backward(ctx)
        after.append(_grads(model))
    assert_close(after[0], after[1])
    model = _model()
    rule = OGMRule(model, alpha=0.8, ge=True, starts=1, ends=3)  # epoch 0 lies before the window
    ctx = _ctx(model, inputs, targets, epoch=0)
    rule.begin_epoch(ctx)
    rule.backward(ctx, rule.losses(ctx, inputs, targets))
    plain = _grads(model)
    rule.after_backward(ctx)
    assert_close(_grads(model), plain)
    assert rule.end_epoch(ctx)["ogm_ge/k/v"] == 1.0


def test_ogm_linear_scores_split_a_linear_fused_head_and_are_refused_on_an_mlp_head():
    model = _model(fusion_hidden_dim=0)
    assert isinstance(model.fusion.net[0], torch.nn.Linear) and len(model.fusion.net) == 1
    inputs, targets = _batch()
    rule = OGMRule(model, alpha=0.1, ge=False, starts=0, ends=None, scores="linear")
    ctx = _ctx(model, inputs, targets)
    terms = rule.losses(ctx, inputs, targets)
    assert set(terms) == {"fused", "total", "blend"}  # the fused loss alone, as the official code
    with pytest.raises(ValueError, match="fusion_hidden_dim: 0"):
        OGMRule(_model(), alpha=0.1, ge=False, starts=0, ends=None, scores="linear")


def test_pmr_gives_the_prototype_loss_to_the_weaker_modality_with_prototypes_made_before_training():
    model = _model()
    inputs, targets = _batch(n=24)
    rule = PMRRule(model, CLASSES, alpha=1.0, momentum=0.2, fraction=0.5, starts=0, ends=None)
    ctx = _ctx(model, inputs, targets)
    rule.begin_epoch(ctx)
    assert all(p.value is not None and p.value.shape == (CLASSES, 4) for p in rule.prototypes.values())
    terms = rule.losses(ctx, inputs, targets)
    record = rule._stats.epoch_means()
    rho, gets = record["pmr/rho/v"], {m: record[f"pmr/proto_loss/{m}"] for m in ("v", "a")}
    assert rho == pytest.approx(1 / record["pmr/rho/a"], rel=1e-5)
    assert gets == ({"v": 0.0, "a": 1.0} if rho > 1 else {"v": 1.0, "a": 0.0})
    weaker = "a" if rho > 1 else "v"
    feats = model(inputs, heads=[], features=True)[weaker + "/features"]
    proto = -torch.cdist(feats, rule.prototypes[weaker].value)
    assert_close(terms["prototype"], head_loss(proto, targets))
    assert_close(terms["total"], terms["fused"] + terms["prototype"])
    # recomputed after the epoch from the first half of its batches, smoothed with μ = 0.2
    old = rule.prototypes["v"].value.clone()
    with torch.no_grad():
        model.encoders["v"].net[1].weight.mul_(2.0)
    rule.end_epoch(ctx)
    from gblend_ray.training.engine import batch_order

    first = torch.cat(batch_order(24, 4, 0, 0)[:3])
    model.eval()
    with torch.no_grad():
        feats = model({m: x[first] for m, x in inputs.items()}, heads=[], features=True)["v/features"]
    means = torch.stack([feats[targets[first] == k].mean(0) for k in range(CLASSES)])
    assert_close(rule.prototypes["v"].value, 0.8 * means + 0.2 * old)


def test_agm_step_trains_on_the_fused_output_with_each_response_scaled_by_kappa():
    model = _model()
    inputs, targets = _batch()
    rule = AGMRule(model, alpha=1.5, starts=0, ends=None)
    rule.running.mean = {"v": torch.tensor(1.0), "a": torch.tensor(1.3)}
    rule.running.count = 4
    ctx = _ctx(model, inputs, targets)
    terms = rule.losses(ctx, inputs, targets)
    with torch.no_grad():
        full = model(inputs, heads=["fused"])["fused"]
        model.eval()
        outputs = {frozenset({"v", "a"}): full,
                   frozenset({"v"}): model({"v": inputs["v"], "a": inputs["a"] * 0}, heads=["fused"])["fused"],
                   frozenset({"a"}): model({"v": inputs["v"] * 0, "a": inputs["a"]}, heads=["fused"])["fused"]}
        model.train()
    responses = shapley_responses(outputs, ["v", "a"])
    assert_close(responses["v"] + responses["a"], full)  # o^a + o^v = f(a, v)
    scores = agm_scores(responses, targets)
    kappa = agm_coefficients(scores, {"v": torch.tensor(1.0), "a": torch.tensor(1.3)}, 1.5)
    assert_close(terms["total"], head_loss(full, targets))  # the value is the plain fused loss
    record = rule._stats.epoch_means()
    assert record["agm/kappa/v"] == pytest.approx(kappa["v"].item(), rel=1e-5)
    assert record["agm/kappa/a"] == pytest.approx(kappa["a"].item(), rel=1e-5)
    assert rule.running.count == 5  # the means were updated after κ was computed
    rule.backward(ctx, terms)
    rule.after_backward(ctx)
    assert "agm/clipped" in rule.end_epoch(ctx)


def test_mmpareto_step_rebuilds_each_encoders_gradient_from_its_two_separate_passes():
    model = _model()
    inputs, targets = _batch()
    out = model(inputs)
    head_loss(out["fused"], targets).backward(retain_graph=True)
    g1 = _grads(model)
    model.zero_grad(set_to_none=True)
    (head_loss(out["v"], targets) + head_loss(out["a"], targets)).backward()
    g2 = _grads(model)
    model.zero_grad(set_to_none=True)
    rule = MMParetoRule(model, gamma=1.5)
    ctx = _ctx(model, inputs, targets)
    rule.backward(ctx, rule.losses(ctx, inputs, targets))
    got = _grads(model)
    for m in ("v", "a"):
        names = [n for n, _ in model.named_parameters() if n.startswith(f"encoders.{m}.")]
        expected = mmpareto_gradients([g1.get(n) for n in names], [g2.get(n) for n in names], gamma=1.5)
        for n, e in zip(names, expected):
            assert_close(got[n], e)
    for n in got:  # the heads keep the summed gradient
        if not n.startswith("encoders."):
            assert_close(got[n], g1.get(n, 0) + g2.get(n, 0))
    record = rule.end_epoch(ctx)
    assert set(record) == {f"mmpareto/{q}/{m}" for q in ("cos", "w_fused", "conflict") for m in ("v", "a")}
    for m in ("v", "a"):  # the weights follow the cosine: (½, ½) without a conflict
        assert (record[f"mmpareto/w_fused/{m}"] == 0.5) == (record[f"mmpareto/cos/{m}"] > 0)


@pytest.mark.parametrize("method", ["ogm_ge", "pmr", "agm", "mmpareto"])
def test_three_modalities_train_in_the_one_loop(method):
    mods = ("v", "a", "f")
    model = _model(mods)
    inputs, targets = _batch(mods, n=24)
    spec = RunSpec(method=method)
    rule = balancing_rule(spec, parse_method(method, list(mods)), model, CLASSES)
    opt = make_optimizer(model.parameters(), spec.optim)
    (record,) = train_epochs(model, TensorData(inputs, targets), opt, {"fused": 1.0}, 1, batch_size=8, rule=rule)
    ns = {"ogm_ge": "ogm_ge/k", "pmr": "pmr/rho", "agm": "agm/kappa", "mmpareto": "mmpareto/cos"}[method]
    assert {f"{ns}/{m}" for m in mods} <= set(record)
    assert torch.isfinite(torch.tensor(record["loss/total"]))


def test_a_balancing_method_refuses_multilabel_data_and_one_modality():
    model = _model()
    with pytest.raises(ValueError, match="multiclass"):
        balancing_rule(RunSpec(method="agm"), parse_method("agm", ["v", "a"]), model, CLASSES, "multilabel")
    with pytest.raises(ValueError, match="at least two"):
        parse_method("pmr", ["v"])


METHODS = ["ogm_ge", "ogm", "pmr", "agm", "mmpareto"]


@pytest.mark.parametrize("method", METHODS)
def test_gblend_run_inline_trains_each_method_and_records_its_quantities(tiny_dataset, tmp_path, method):
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": str(tiny_dataset)}, "method": method,
        "model": {"hidden_dim": 16, "feature_dim": 8, "fusion_hidden_dim": 16},
        "train": {"epochs": 2, "batch_size": 32, "threads": 1}, "tracking": {"backend": "none"},
    }))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inline"]) == 0
    results = json.loads((out / "results.json").read_text())
    ns = method
    assert results["method"] == method and 0 <= results["test"]["top1"] <= 1
    assert len(results["history"]) == 2
    assert any(k.startswith(f"{ns}/") for k in results["history"][-1])
    mirrored = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith(f"{ns}/") for r in mirrored for k in r)

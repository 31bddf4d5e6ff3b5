import pytest
import torch

from gblend_ray.core.spec import ModelSpec, OptimSpec
from gblend_ray.data.sources import TensorData
from gblend_ray.training.engine import (
    batch_order,
    evaluate,
    make_optimizer,
    train_epochs,
)
from gblend_ray.training.model import build_model


def test_batch_order_shards_evenly_and_deterministically():
    shards = [torch.cat(batch_order(10, 2, seed=3, epoch=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping to 12
    assert set(torch.cat(shards).tolist()) == set(range(10))
    again = torch.cat(batch_order(10, 2, seed=3, epoch=1, rank=1, world_size=3))
    assert torch.equal(again, shards[1])
    assert not torch.equal(torch.cat(batch_order(10, 10, 3, 2)), torch.cat(batch_order(10, 10, 3, 1)))


class _Fixed(torch.nn.Module):
    """Returns preset logits for the 'fused' head, to check metrics by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, inputs, heads=None):
        return {"fused": self.logits[inputs["x"].long().squeeze(1)]}


def test_evaluate_top1_top5_by_hand():
    # 6 classes, 3 samples. Sample 0: target ranked 1st; 1: ranked 2nd; 2: ranked last.
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [4.0, 5, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
    data = TensorData({"x": torch.arange(3.0)[:, None]}, torch.tensor([0, 0, 0]))
    m = evaluate(_Fixed(logits), data)["fused"]
    assert m["top1"] == 1 / 3 and m["top5"] == 2 / 3
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 0])).item()
    assert abs(m["loss"] - expected) < 1e-6


def _setup():
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4, fusion_hidden_dim=8), {"v": (3,), "a": (5,)}, 3)
    data = TensorData({"v": torch.randn(32, 3), "a": torch.randn(32, 5)}, torch.randint(0, 3, (32,)))
    return model, data


def test_training_lowers_the_blended_loss():
    model, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    hist = train_epochs(model, data, opt, {"v": 0.3, "a": 0.3, "fused": 0.4}, 20, batch_size=8)
    assert [h["epoch"] for h in hist] == list(range(1, 21))
    assert hist[-1]["loss/fused"] < hist[0]["loss/fused"]


def test_head_train_safeguard_trains_the_head_not_its_encoders():
    model, data = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1, weight_decay=0.0))
    train_epochs(model, data, opt, {"v": 1.0, "a": 0.0, "fused": 0.0}, 1, batch_size=8, full_heads=["fused"])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("fusion.") for k in changed)
    assert any(k.startswith("encoders.v.") for k in changed)
    assert not any(k.startswith(("encoders.a.", "heads.a.")) for k in changed)


def test_video_level_metrics_average_a_samples_clips():
    # 2 samples x 2 clips, 3 classes. Sample 0 (class 0): clip a says class 1 confidently
    # wrong, clip b says class 0 more confidently; the average picks class 0. Sample 1
    # (class 2): both clips say class 1.
    logits = torch.tensor([[0.0, 2.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 1.0]])
    data = TensorData({"x": torch.arange(4.0)[:, None]}, torch.tensor([0, 2]), clips_per_sample=2)
    m = evaluate(_Fixed(logits), data)["fused"]
    assert m["top1"] == 1 / 4  # clip level: only clip b of sample 0 is right
    assert m["video_top1"] == 1 / 2
    assert m["video_top5"] == 1.0
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 2, 2])).item()
    assert m["loss"] == pytest.approx(expected)


def test_multilabel_evaluation_reports_map_and_mauc():
    logits = torch.tensor([[2.0, -2.0], [1.0, 1.0], [-1.0, 0.5], [-2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    m = evaluate(_Fixed(logits), TensorData({"x": torch.arange(4.0)[:, None]}, targets))["fused"]
    assert set(m) == {"loss", "mAP", "mAUC"}
    assert m["mAP"] == pytest.approx((5 / 6 + 1) / 2) and m["mAUC"] == pytest.approx((3 / 4 + 1) / 2)


def test_the_step_loss_is_its_named_terms_and_each_is_logged():
    """One step per epoch (the batch is the whole set), so each logged term is that
    step's: total = blend + head_train, blend = Σ w_i L_i over the heads with weight."""
    model, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    weights = {"v": 0.2, "a": 0.0, "fused": 0.8}
    (rec,) = train_epochs(model, data, opt, weights, 1, batch_size=32, full_heads=["fused"])
    assert "loss/a" not in rec  # a head with weight 0 is not computed
    assert rec["loss/blend"] == pytest.approx(0.2 * rec["loss/v"] + 0.8 * rec["loss/fused"])
    # the detached copy of the fused head has the fused head's loss; it trains at 1 - 0.8
    assert rec["loss/head_train"] == pytest.approx(0.2 * rec["loss/fused"])
    assert rec["loss/total"] == pytest.approx(rec["loss/blend"] + rec["loss/head_train"])
    assert "loss/uncertainty_reg" not in rec


def test_uncertainty_terms_start_from_unit_weights():
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4, fusion_hidden_dim=8), {"v": (3,), "a": (5,)}, 3,
                        learned_weights=True)
    _, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    first, second = train_epochs(model, data, opt, dict.fromkeys(("v", "a", "fused"), 1.0), 2, batch_size=32)
    # s_i = 0 at the first step: exp(-s_i) = 1, and the regularizer Σ s_i / 2 is 0
    assert first["loss/uncertainty_reg"] == 0.0
    assert first["loss/blend"] == pytest.approx(first["loss/v"] + first["loss/a"] + first["loss/fused"])
    assert first["loss/total"] == pytest.approx(first["loss/blend"])
    s = {h: -torch.log(torch.tensor(first[f"learned/{h}"])).item() for h in ("v", "a", "fused")}
    assert second["loss/uncertainty_reg"] == pytest.approx(sum(s.values()) / 2, rel=1e-5)
    assert second["loss/blend"] == pytest.approx(sum(first[f"learned/{h}"] * second[f"loss/{h}"] for h in s),
                                                 rel=1e-5)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


W1 = {"v": 0.3, "a": 0.3, "fused": 0.4}
W2 = {"v": 0.7, "a": 0.0, "fused": 0.3}


def test_a_switch_that_never_switches_leaves_training_bit_for_bit_unchanged():
    runs = []
    for switch in (None, lambda epoch, step: None):
        model, data = _setup()
        opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
        hist = train_epochs(model, data, opt, W1, 3, batch_size=8, seed=2, switch_weights=switch)
        runs.append((hist, _state(model)))
    (h0, s0), (h1, s1) = runs
    assert h0 == h1 and _same_state(s0, s1)


def test_a_switch_at_an_epochs_first_step_equals_two_runs_of_the_engine():
    """Weights switched at step 0 of epoch 1 train exactly as epoch 0 under W1 then epoch 1
    under W2 (what Algorithm 3 does at a boundary)."""
    model, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    asked = []

    def switch(epoch, step):
        asked.append((epoch, step))
        return W2 if (epoch, step) == (1, 0) else None

    hist = train_epochs(model, data, opt, W1, 2, batch_size=8, seed=2, switch_weights=switch)
    assert asked == [(e, s) for e in (0, 1) for s in range(4)]  # before every step: 32 samples, batch 8
    ref, ref_data = _setup()
    ref_opt = make_optimizer(ref.parameters(), OptimSpec(lr=0.1))
    ref_hist = train_epochs(ref, ref_data, ref_opt, W1, 1, batch_size=8, seed=2)
    ref_hist += train_epochs(ref, ref_data, ref_opt, W2, 1, start_epoch=1, batch_size=8, seed=2)
    assert hist == ref_hist and _same_state(_state(model), _state(ref))
    assert "loss/a" in hist[0] and "loss/a" not in hist[1]  # weight 0: not computed


def test_a_switch_mid_epoch_averages_each_term_over_the_steps_that_computed_it():
    """lr 0 keeps the parameters fixed, so each step's head losses are those of the model on
    its batch: after a switch at step 2 from the fused head alone to video and fused, the
    epoch's loss/v is the mean over steps 2 and 3 only, loss/fused over all four."""
    from gblend_ray.training.objective import head_loss

    model, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.0, momentum=0.0, weight_decay=0.0))
    only_fused = {"v": 0.0, "a": 0.0, "fused": 1.0}
    (record,) = train_epochs(model, data, opt, only_fused, 1, batch_size=8, seed=2,
                             switch_weights=lambda epoch, step: {"v": 0.5, "a": 0.0, "fused": 0.5} if step == 2 else None)
    model.train()
    per_step = []
    with torch.no_grad():
        for idx in batch_order(len(data), 8, seed=2, epoch=0):
            inputs, targets = {m: x[idx] for m, x in data.inputs.items()}, data.targets[idx]
            out = model(inputs)
            per_step.append({h: head_loss(out[h], targets).item() for h in ("v", "fused")})
    assert record["loss/v"] == pytest.approx(sum(s["v"] for s in per_step[2:]) / 2, rel=1e-5)
    assert record["loss/fused"] == pytest.approx(sum(s["fused"] for s in per_step) / 4, rel=1e-5)
    assert "loss/a" not in record


def test_a_balancing_rule_takes_no_weight_switch():
    from gblend_ray.training.objective import BlendRule

    model, data = _setup()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    with pytest.raises(ValueError, match="switch_weights"):
        train_epochs(model, data, opt, W1, 1, rule=BlendRule(W1), switch_weights=lambda e, s: None)

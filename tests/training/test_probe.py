import copy

import torch

from gblend_ray.core.spec import ModelSpec, OptimSpec
from gblend_ray.data.sources import TensorData
from gblend_ray.training.model import build_model
from gblend_ray.training.probe import run_probe


def _run(head):
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4, fusion_hidden_dim=8), {"v": (3,), "a": (5,)}, 3)
    data = TensorData({"v": torch.randn(40, 3), "a": torch.randn(40, 5)}, torch.randint(0, 3, (40,)))
    before = copy.deepcopy(model.state_dict())
    result = run_probe(model, head, train=data, train_subset=data, heldout=data,
                       optim=OptimSpec(lr=0.1, weight_decay=1e-3), epochs=3, start_epoch=0, seed=1)
    after = model.state_dict()
    return result, {k for k in before if not torch.equal(before[k], after[k])}, set(before)


def test_uni_modal_probe_changes_only_its_encoder_and_head():
    result, changed, every = _run("v")
    assert changed  # it trained
    assert all(k.startswith(("encoders.v.", "heads.v.")) for k in changed)
    untouched = every - changed
    assert any(k.startswith("encoders.a.") for k in untouched) and any(k.startswith("fusion.") for k in untouched)
    m = result.measurement
    assert m.train_after < m.train_before  # it learned the training data
    assert result.head == "v" and result.seconds > 0


def test_fused_probe_trains_encoders_and_fusion_not_uni_heads():
    _, changed, _ = _run("fused")
    assert any(k.startswith("fusion.") for k in changed)
    assert any(k.startswith("encoders.a.") for k in changed) and any(k.startswith("encoders.v.") for k in changed)
    assert not any(k.startswith("heads.") for k in changed)


def test_accuracy_metric_measures_top1():
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4), {"v": (3,)}, 3)
    data = TensorData({"v": torch.randn(20, 3)}, torch.randint(0, 3, (20,)))
    r = run_probe(model, "v", train=data, train_subset=data, heldout=data, optim=OptimSpec(),
                  epochs=1, start_epoch=0, seed=0, metric="accuracy")
    for x in (r.measurement.train_before, r.measurement.val_after):
        assert 0.0 <= x <= 1.0 and (x * 20) == round(x * 20)


def test_accuracy_metric_on_a_multi_label_task_measures_map():
    """Top-1 is undefined for multi-label targets: ``accuracy`` reads the task's mAP."""
    from gblend_ray.training.engine import evaluate

    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_dim=8, feature_dim=4), {"v": (3,)}, 3)
    data = TensorData({"v": torch.randn(30, 3)}, (torch.rand(30, 3) < 0.4).float())
    start = evaluate(copy.deepcopy(model), data, ["v"])["v"]
    r = run_probe(model, "v", train=data, train_subset=data, heldout=data, optim=OptimSpec(lr=0.5),
                  epochs=5, start_epoch=0, seed=0, metric="accuracy")
    assert r.measurement.val_before == start["mAP"] and r.measurement.train_before == start["mAP"]
    assert r.measurement.val_after == evaluate(model, data, ["v"])["v"]["mAP"] != start["mAP"]


def test_probes_subset_trains_every_probe_on_one_seeded_fraction_of_T(tiny_dataset):
    """``probes.subset``: 1.0 is Algorithm 1 exactly (all of T, today's weights); 0.25
    trains each round's probes on a quarter of T, the same quarter for every head."""
    import math

    from gblend_ray.core.spec import RunSpec
    from gblend_ray.data.arrays import load_dataset
    from gblend_ray.data.loading import prepare_data
    from gblend_ray.data.sources import SubsetSource, seeded_subset
    from gblend_ray.training.runner import run_inline

    def spec(subset=None):
        s = RunSpec(method="gblend:online", seed=0)
        s.data.path = str(tiny_dataset)
        s.model.hidden_dim, s.model.feature_dim, s.model.fusion_hidden_dim = 32, 16, 32
        s.train.epochs, s.train.batch_size = 6, 32
        s.blend.warmup_epochs, s.blend.super_epoch = 2, 2
        if subset is not None:
            s.probes.subset = subset
        return s

    default, exact, quarter = run_inline(spec()), run_inline(spec(1.0)), run_inline(spec(0.25))
    train = len(prepare_data(spec(), load_dataset(tiny_dataset)).train)
    assert [r["weights"] for r in exact["trajectory"]] == [r["weights"] for r in default["trajectory"]]
    for r in exact["trajectory"]:
        assert {h["probe_train_samples"] for h in r["heads"].values()} == {train}
    for r in quarter["trajectory"]:
        assert {h["probe_train_samples"] for h in r["heads"].values()} == {math.ceil(0.25 * train)}
    assert [r["weights"] for r in quarter["trajectory"]] != [r["weights"] for r in exact["trajectory"]]
    # the subset is drawn by the seed: the same samples again, distinct ones, all in T
    data = prepare_data(spec(), load_dataset(tiny_dataset)).train
    a, b = seeded_subset(data, 0.25, 7), seeded_subset(data, 0.25, 7)
    assert isinstance(a, SubsetSource) and torch.equal(a.positions, b.positions)
    assert len(set(a.positions.tolist())) == len(a) and int(a.positions.max()) < train
    (inputs, targets), = a.batches([torch.tensor([0, 1])], train=True, epoch=0)
    assert torch.equal(targets, data.targets[a.positions[:2]])
    assert seeded_subset(data, 1.0, 7) is data

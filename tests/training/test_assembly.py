"""``train_plan``'s record of weights that change between steps, and which rounds a run
trained with (no Ray: the plan walk the Ray trainer's overlapped rounds use)."""

import pytest

from gblend_ray.core.spec import RunSpec
from gblend_ray.training.assembly import assemble, final_results, train_plan, trained_rounds

UNIFORM = {"video": 1 / 3, "audio": 1 / 3, "fused": 1 / 3}
NEW = {"video": 0.7, "audio": 0.0, "fused": 0.3}


def _assembly(path):
    spec = RunSpec(method="gblend:online", seed=0)
    spec.data.path = str(path)
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 16, 8, 16
    spec.train.epochs, spec.train.batch_size = 4, 32
    spec.blend.warmup_epochs, spec.blend.super_epoch = 2, 2
    return assemble(spec)


def test_epoch_records_carry_the_weights_of_their_last_step_and_the_step_they_changed_at(tiny_dataset):
    a = _assembly(tiny_dataset)
    asked = []

    def switch(epoch, step):
        asked.append((epoch, step))
        return NEW if (epoch, step) == (1, 2) else None

    history = train_plan(a, a.model, lambda segment: UNIFORM, switch=switch)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    weights = [{h: r[f"weights/{h}"] for h in UNIFORM} for r in history]
    # the second segment starts again from what weights_for gives (the trainer gives it the weights in force)
    assert weights == [UNIFORM, NEW, UNIFORM, UNIFORM]
    assert [r.get("weights_from_step") for r in history] == [None, 2, None, None]
    steps = len(asked) // 4  # asked before every step of every epoch
    assert asked == [(e, s) for e in range(4) for s in range(steps)] and steps > 2
    assert "loss/audio" in history[1]  # computed in the steps before the switch


def test_without_a_switch_the_records_are_the_plain_plans(tiny_dataset):
    plain = _assembly(tiny_dataset)
    hooked = _assembly(tiny_dataset)
    assert train_plan(plain, plain.model, lambda s: NEW) == \
        train_plan(hooked, hooked.model, lambda s: NEW, switch=lambda e, s: None)


def test_the_final_weights_are_the_last_round_any_step_trained_with(tiny_dataset):
    a = _assembly(tiny_dataset)
    rounds = [{"epoch": 0, "weights": UNIFORM, "applied": {"epoch": 1, "step": 3}},
              {"epoch": 2, "weights": NEW, "applied": None}]  # arrived after the last step
    assert trained_rounds(rounds) == rounds[:1]
    assert trained_rounds([{"epoch": 0, "weights": NEW}]) == [{"epoch": 0, "weights": NEW}]  # older records
    assert final_results(a, rounds, [], 0.0)["final_weights"] == pytest.approx(UNIFORM)

import dataclasses
import json

import pytest
import torch

import gblend_ray.runner as runner
from gblend_ray.blend import Measurement
from gblend_ray.spec import RunSpec


def _spec(path, method, **blend):
    spec = RunSpec(method=method, seed=0)
    spec.data.path = str(path)
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 32, 16, 32
    spec.train.epochs, spec.train.batch_size = 8, 32
    spec.blend.warmup_epochs, spec.blend.super_epoch = 4, 2
    for k, v in blend.items():
        setattr(spec.blend, k, v)
    return spec


def test_online_run_writes_results_and_trajectory(tiny_dataset, tmp_path):
    res = runner.run_inline(_spec(tiny_dataset, "gblend:online"), tmp_path)
    traj = json.loads((tmp_path / "trajectory.json").read_text())
    assert [r["epoch"] for r in traj] == [0, 4, 6]
    assert [r["probe_epochs"] for r in traj] == [4, 2, 2]
    for r in traj:
        assert set(r["heads"]) == {"video", "audio", "fused"}
        assert sum(r["weights"].values()) == pytest.approx(1.0)
        assert {"G", "dO", "ogr", "train_before", "val_after", "weight"} <= set(r["heads"]["video"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "gblend:online" and results["prediction_head"] == "fused"
    assert results["test"] == results["heads"]["fused"]
    assert results["test"]["top1"] > 0.5  # 4 classes; the video modality separates them well
    assert len(results["history"]) == 8 and res["trajectory"] == traj


def test_same_seed_same_weights(tiny_dataset):
    a = runner.run_inline(_spec(tiny_dataset, "gblend:offline"))
    b = runner.run_inline(_spec(tiny_dataset, "gblend:offline"))
    assert a["trajectory"][0]["weights"] == b["trajectory"][0]["weights"]
    assert a["test"] == b["test"]


def test_uni_run_predicts_with_its_head(tiny_dataset):
    res = runner.run_inline(_spec(tiny_dataset, "uni:video"))
    assert res["prediction_head"] == "video" and res["test"] == res["heads"]["video"]
    assert res["trajectory"] == []


def _force_fused_overfit(monkeypatch):
    """Make every fused probe report a validation loss that rose (G <= 0), as an
    over-confident fused head does over a long horizon."""
    real = runner.run_probe

    def probe(model, head, **kw):
        result = real(model, head, **kw)
        if head == "fused":
            m = result.measurement
            result = dataclasses.replace(result, measurement=Measurement(m.train_before, m.val_before,
                                                                         m.train_after, m.val_before + 0.5))
        return result

    monkeypatch.setattr(runner, "run_probe", probe)


@pytest.mark.parametrize("safeguard", ["head_train", "floor"])
def test_prediction_head_never_ends_untrained(tiny_dataset, monkeypatch, safeguard):
    _force_fused_overfit(monkeypatch)
    res = runner.run_inline(_spec(tiny_dataset, "gblend:offline", safeguard=safeguard))
    (round_,) = res["trajectory"]
    assert round_["heads"]["fused"]["G"] < 0 and round_["heads"]["fused"]["estimated_weight"] == 0.0
    assert round_["prediction_head_starved"] is True and round_["safeguard"] == safeguard
    assert res["test"]["top1"] > 0.5  # chance is 0.25


def test_without_safeguard_the_fused_head_never_trains(tiny_dataset, monkeypatch):
    """The failure the safeguard exists for: weight 0 leaves the prediction head at its init."""
    _force_fused_overfit(monkeypatch)
    spec = _spec(tiny_dataset, "gblend:offline", safeguard="none")
    initial = runner.new_model(spec, runner.load_dataset(tiny_dataset)).fusion.state_dict()
    final = {}
    real = runner.final_results
    monkeypatch.setattr(runner, "final_results",
                        lambda s, model, *a: final.update(model.fusion.state_dict()) or real(s, model, *a))
    res = runner.run_inline(spec)
    assert res["trajectory"][0]["prediction_head_starved"] is True
    assert res["trajectory"][0]["safeguard"] is None
    assert all(torch.equal(initial[k], final[k]) for k in initial)


def test_a_modality_subset_trains_only_those_heads(tiny_dataset):
    spec = _spec(tiny_dataset, "gblend:offline")
    spec.data.modalities = ["video"]
    res = runner.run_inline(spec)
    assert set(res["heads"]) == {"video", "fused"}
    assert set(res["trajectory"][0]["weights"]) == {"video", "fused"}
    spec.data.modalities = ["depth"]
    with pytest.raises(ValueError, match="depth"):
        runner.run_inline(spec)


def test_history_has_every_heads_curves_and_results_per_class(tiny_dataset):
    res = runner.run_inline(_spec(tiny_dataset, "naive"))
    first = res["history"][0]
    for head in ("video", "audio", "fused"):
        assert 0.0 <= first[f"val/{head}/top1"] <= 1.0 and first[f"train/{head}/loss"] > 0
    per_class = res["per_class"]["fused"]
    assert len(per_class) == 4
    # the test split has 15 samples of each of the 4 classes: the mean of per-class accuracy is top-1
    assert sum(per_class) / 4 == pytest.approx(res["test"]["top1"])

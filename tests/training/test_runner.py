import dataclasses
import json

import pytest
import torch

from gblend_ray.core.blend import Measurement
from gblend_ray.core.spec import RunSpec
from gblend_ray.data.arrays import load_dataset
from gblend_ray.data.loading import ensure_dataset
from gblend_ray.training import assembly, runner


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
    real = assembly.run_probe

    def probe(model, head, **kw):
        result = real(model, head, **kw)
        if head == "fused":
            m = result.measurement
            result = dataclasses.replace(result, measurement=Measurement(m.train_before, m.val_before,
                                                                         m.train_after, m.val_before + 0.5))
        return result

    monkeypatch.setattr(assembly, "run_probe", probe)


@pytest.mark.parametrize("safeguard", ["head_train", "floor"])
def test_prediction_head_never_ends_untrained(tiny_dataset, monkeypatch, safeguard):
    _force_fused_overfit(monkeypatch)
    res = runner.run_inline(_spec(tiny_dataset, "gblend:offline", safeguard=safeguard, metric="loss"))
    (round_,) = res["trajectory"]
    assert round_["heads"]["fused"]["G"] < 0 and round_["heads"]["fused"]["estimated_weight"] == 0.0
    assert round_["prediction_head_starved"] is True and round_["safeguard"] == safeguard
    assert res["test"]["top1"] > 0.5  # chance is 0.25


def test_without_safeguard_the_fused_head_never_trains(tiny_dataset, monkeypatch):
    """The failure the safeguard exists for: weight 0 leaves the prediction head at its init."""
    _force_fused_overfit(monkeypatch)
    spec = _spec(tiny_dataset, "gblend:offline", safeguard="none", metric="loss")
    initial = assembly.new_model(spec, load_dataset(tiny_dataset)).fusion.state_dict()
    final = {}
    real = runner.final_results
    monkeypatch.setattr(runner, "final_results",
                        lambda a, *rest: final.update(a.model.fusion.state_dict()) or real(a, *rest))
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


def test_uncertainty_weights_move_and_stay_positive(tiny_dataset):
    res = runner.run_inline(_spec(tiny_dataset, "uncertainty"))
    learned = [{h: r[f"learned/{h}"] for h in ("video", "audio", "fused")} for r in res["history"]]
    assert all(w > 0 for epoch in learned for w in epoch.values())
    # s_i starts at 0 (weight 1); after an epoch every weight has moved away from 1
    assert all(abs(w - 1.0) > 1e-3 for w in learned[0].values())
    assert learned[0] != learned[-1]
    assert res["final_weights"] == pytest.approx(learned[-1])


def test_pretrain_loads_the_encoders_it_trained(tiny_dataset, tmp_path, monkeypatch):
    seen = {}
    load = assembly.load_pretrained

    def spy(model, optimizer, directory):
        seen["before"] = {k: v.clone() for k, v in model.encoders.state_dict().items()}
        paths = load(model, optimizer, directory)
        seen["after"] = {k: v.clone() for k, v in model.encoders.state_dict().items()}
        seen["files"] = {m: torch.load(p, weights_only=True) for m, p in paths.items()}
        seen["optimizer_state"] = len(optimizer.state)
        seen["fusion"] = {k: v.clone() for k, v in model.fusion.state_dict().items()}
        return paths

    monkeypatch.setattr(assembly, "load_pretrained", spy)
    spec = _spec(tiny_dataset, "pretrain")
    initial = assembly.new_model(spec, ensure_dataset(spec))
    res = runner.run_inline(spec, tmp_path)
    # the fused model starts from exactly the encoders the uni-modal phase trained
    for key, value in seen["after"].items():
        modality, _, name = key.partition(".")
        assert torch.equal(value, seen["files"][modality][name])
        assert torch.equal(value, seen["before"][key])
        assert not torch.equal(value, initial.encoders.state_dict()[key])  # they did train
    assert sorted(p.name for p in (tmp_path / "pretrained").iterdir()) == ["audio.pt", "video.pt"]
    assert seen["optimizer_state"] == 0
    for key, value in seen["fusion"].items():  # the fused head starts from its initialisation
        assert torch.equal(value, initial.fusion.state_dict()[key])
    weights = [(r["epoch"], r["weights/fused"]) for r in res["history"]]
    assert weights[:8] == [(e, 0.0) for e in range(1, 9)] and weights[8:] == [(e, 1.0) for e in range(9, 17)]


def test_early_stop_keeps_the_best_epoch(tiny_dataset):
    spec = _spec(tiny_dataset, "early_stop")
    spec.train.epochs, spec.baselines.patience, spec.optim.lr = 40, 2, 0.3
    res = runner.run_inline(spec)
    stop = res["early_stopping"]
    assert stop["stopped_at"] == len(res["history"]) < 40
    assert stop["stopped_at"] - stop["best_epoch"] == 2
    val = [r["val/fused/loss"] for r in res["history"]]
    assert min(val) == pytest.approx(stop["best_val_loss"]) and val.index(min(val)) + 1 == stop["best_epoch"]


def test_dropout_method_drops_the_fused_input(tiny_dataset):
    spec = _spec(tiny_dataset, "dropout")
    spec.baselines.dropout = 0.3
    data = ensure_dataset(spec)
    model = assembly.new_model(spec, data, assembly.method_of(spec, data))
    assert model.fusion_dropout.p == 0.3
    assert assembly.new_model(spec, data, assembly.method_of(dataclasses.replace(spec, method="naive"), data)).fusion_dropout.p == 0.0


def test_a_multilabel_array_dataset_trains_and_reports_map(tmp_path):
    import numpy as np

    from gblend_ray.data.arrays import save_dataset

    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < 0.4).astype(np.int64)  # 40% positives per class
    video = labels @ rng.standard_normal((3, 6)) + 0.5 * rng.standard_normal((400, 6))
    audio = rng.standard_normal((400, 8))
    path = save_dataset(tmp_path / "ml", {"video": video, "audio": audio}, labels, ["a", "b", "c"],
                        task="multilabel")
    res = runner.run_inline(_spec(path, "gblend:online"))
    assert set(res["test"]) == {"loss", "mAP", "mAUC"}
    assert res["heads"]["video"]["mAP"] > 0.75 and res["test"]["mAP"] > 0.65  # chance: about 0.4
    assert res["heads"]["audio"]["mAP"] < 0.55  # audio carries no label information
    assert set(res["trajectory"][0]["weights"]) == {"video", "audio", "fused"}
    # the accuracy metric (the default) reads mAP on a multi-label task: G is a gain in mAP
    for r in res["trajectory"]:
        for m in r["heads"].values():
            assert all(0.0 <= m[k] <= 1.0 for k in ("train_before", "val_before", "train_after", "val_after"))
    by_loss = runner.run_inline(_spec(path, "gblend:online", metric="loss"))
    assert by_loss["trajectory"][0]["heads"]["video"]["val_before"] > 0.5  # a BCE loss, not an mAP


def test_exact_online_rounds_take_effect_at_their_boundarys_first_step(tiny_dataset):
    res = runner.run_inline(_spec(tiny_dataset, "gblend:online"))
    assert [r["applied"] for r in res["trajectory"]] == [{"epoch": e, "step": 0} for e in (0, 4, 6)]
    assert res["final_weights"] == res["trajectory"][-1]["weights"]
    assert not any("weights_from_step" in h for h in res["history"])


def test_the_in_process_engine_refuses_overlapped_rounds(tiny_dataset):
    spec = _spec(tiny_dataset, "gblend:online")
    spec.probes.overlap = True
    with pytest.raises(ValueError, match="^probes.overlap: the in-process engine"):
        runner.run_inline(spec)

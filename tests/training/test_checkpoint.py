"""The checkpoint format: what the trainer writes, the probes and a resume read back."""

import os

import pytest
import torch

from gblend_ray.core.spec import ModelSpec, OptimSpec
from gblend_ray.training.checkpoint import STATE_FILE, CheckpointError, load_checkpoint, save_checkpoint
from gblend_ray.training.engine import make_optimizer
from gblend_ray.training.model import build_model


def _model():
    torch.manual_seed(0)
    return build_model(ModelSpec(hidden_dim=8, feature_dim=4, fusion_hidden_dim=8), {"v": (3,), "a": (5,)}, 3)


def test_round_trip_restores_model_optimizer_rng_and_meta(tmp_path):
    model = _model()
    opt = make_optimizer(model.parameters(), OptimSpec(lr=0.1))
    model({"v": torch.randn(4, 3), "a": torch.randn(4, 5)})["fused"].sum().backward()
    opt.step()  # momentum buffers exist now
    history = [{"epoch": 1, "loss/fused": 1.25, "weights/fused": 0.5}]
    results = {"test": {"top1": 0.75}, "per_class": {"fused": [1.0, None, 0.5]}, "config": {"seed": 3}}
    save_checkpoint(tmp_path, model, opt, 4, {"v": 0.5, "fused": 0.5}, history, results)
    state = load_checkpoint(tmp_path)
    assert state.epoch == 4 and state.weights == {"v": 0.5, "fused": 0.5}
    assert state.history == history and state.results == results
    assert torch.equal(state.rng, torch.get_rng_state())
    fresh = _model()
    fresh.load_state_dict(state.model)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    fresh_opt = make_optimizer(fresh.parameters(), OptimSpec(lr=0.1))
    fresh_opt.load_state_dict(state.optimizer)
    assert len(fresh_opt.state) == len(opt.state) > 0
    assert not list(tmp_path.glob("*.tmp"))


class _Planted:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    planted = _Planted()
    planted.marker = marker
    torch.save({"model": planted, "meta": "{}"}, tmp_path / STATE_FILE)  # torch.save pickles it
    with pytest.raises(CheckpointError, match=r"state\.pt.*weights_only=True"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(3)}, tmp_path / STATE_FILE)  # plain data, not ours
    with pytest.raises(CheckpointError, match="not a gblend checkpoint"):
        load_checkpoint(tmp_path)

import pytest
import torch

from gblend_ray.core.spec import ModelSpec
from gblend_ray.training.model import DETACHED, build_model

SHAPES = {"video": (6,), "audio": (4, 8)}


def _model():
    torch.manual_seed(0)
    return build_model(ModelSpec(hidden_dim=16, feature_dim=8, fusion_hidden_dim=16), SHAPES, num_classes=5)


def _inputs(n=3):
    return {"video": torch.randn(n, 6), "audio": torch.randn(n, 4, 8)}


def test_forward_returns_logits_for_every_head():
    out = _model()(_inputs())
    assert list(out) == ["video", "audio", "fused"]
    assert all(v.shape == (3, 5) for v in out.values())


def test_uni_head_runs_only_its_encoder():
    model = _model()
    out = model({"video": torch.randn(2, 6)}, heads=["video"])  # no audio input needed
    assert list(out) == ["video"]


def test_detached_head_matches_but_stops_gradients():
    model = _model()
    out = model(_inputs(), heads=["video"], detached=["fused"])
    full = model(_inputs(), heads=["fused"])
    assert out["fused" + DETACHED].shape == full["fused"].shape
    out["fused" + DETACHED].sum().backward()
    assert all(p.grad is None for p in model.encoders["audio"].parameters())
    assert all(p.grad is not None for p in model.fusion.parameters())


def test_parameters_of_each_head():
    model = _model()
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    video = ids(model.parameters_of("video"))
    assert video == ids(model.encoders["video"].parameters()) | ids(model.heads["video"].parameters())
    assert ids(model.parameters_of("fused")) == ids(model.encoders.parameters()) | ids(model.fusion.parameters())
    with pytest.raises(ValueError, match="unknown head 'depth'"):
        model.parameters_of("depth")


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="unknown encoder 'transformer'"):
        build_model(ModelSpec(encoder="transformer"), SHAPES, 5)


def test_registry_rejects_a_duplicate_name():
    from gblend_ray.training.encoders import register_encoder

    with pytest.raises(ValueError, match="encoder 'mlp' is already registered"):
        register_encoder("mlp")(lambda shape, spec: None)

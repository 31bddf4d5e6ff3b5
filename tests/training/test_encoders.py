import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.video import r3d_18

from gblend_ray.core.spec import ModelSpec
from gblend_ray.training.encoders import (
    AUDIO_BACKBONES,
    VIDEO_BACKBONES,
    ResNetEncoder,
    build_encoder,
    encoder_names,
)
from gblend_ray.training.fusion import MidConcatFusion
from gblend_ray.training.model import build_model

VIDEO = (3, 4, 32, 32)
FLOW = (2, 4, 32, 32)
AUDIO = (1, 40, 32)
SHAPES = {"video": VIDEO, "audio": AUDIO}
FEATURE_DIM = {"r3d_18": 512, "r2plus1d_18": 512, "mc3_18": 512, "resnet18": 512, "resnet50": 2048}
INTERMEDIATE_DIM = {"r3d_18": 256, "r2plus1d_18": 256, "mc3_18": 256, "resnet18": 256, "resnet50": 1024}
CASES = [(n, s) for n in VIDEO_BACKBONES for s in (VIDEO, FLOW)] + [(n, s) for n in AUDIO_BACKBONES for s in (AUDIO, (3, 40, 32))]


def _encoder(name, shape, seed=0):
    torch.manual_seed(seed)
    return build_encoder(name, shape, ModelSpec())


def _model(fusion="concat", seed=0, **kw):
    torch.manual_seed(seed)
    spec = ModelSpec(encoders={"video": "r3d_18", "audio": "resnet18"}, fusion=fusion, fusion_hidden_dim=16, **kw)
    return build_model(spec, SHAPES, num_classes=5)


def _inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, *s, generator=g) for m, s in SHAPES.items()}


def _ids(params):
    return {id(p) for p in params}


def _stem(encoder):
    return encoder.stem[0] if hasattr(encoder, "stem") else encoder.conv1


def test_every_backbone_is_registered():
    assert set(FEATURE_DIM) <= set(encoder_names())


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_backbone_gives_pooled_features_for_its_channels(name, shape):
    enc = _encoder(name, shape)
    assert isinstance(enc, ResNetEncoder) and not hasattr(enc, "fc")
    assert enc.feature_dim == FEATURE_DIM[name] and enc.intermediate_dim == INTERMEDIATE_DIM[name]
    assert _stem(enc).in_channels == shape[0]
    out = enc(torch.randn(2, *shape))
    assert out.shape == (2, enc.feature_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [*VIDEO_BACKBONES, *AUDIO_BACKBONES])
def test_intermediate_composes_to_forward(name):
    shape = VIDEO if name in VIDEO_BACKBONES else AUDIO
    enc = _encoder(name, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        h = enc.intermediate(x)
        assert h.shape[:2] == (2, enc.intermediate_dim) and h.dim() == len(shape) + 1
        assert torch.allclose(enc.from_intermediate(h), enc(x), atol=1e-5)
    trunk = _ids(enc.intermediate_parameters())
    assert trunk == _ids(enc.parameters()) - _ids(enc.layer4.parameters())


@pytest.mark.parametrize(("name", "shape", "needs"), [
    ("r3d_18", AUDIO, r"\(C, T, H, W\)"),
    ("mc3_18", (8,), r"\(C, T, H, W\)"),
    ("resnet18", VIDEO, r"\(C, n_mels, frames\)"),
    ("resnet50", (40, 32), r"\(C, n_mels, frames\)"),
])
def test_wrong_input_shape_is_refused_at_build_time(name, shape, needs):
    with pytest.raises(ValueError, match=rf"encoder '{name}' takes .*{needs}") as err:
        build_encoder(name, shape, ModelSpec())
    assert f"per-sample shape is {shape}" in str(err.value)


@pytest.mark.parametrize("fusion", ["concat", "se", "lmf", "mid_concat"])
def test_model_heads_and_parameters_of_with_conv_encoders(fusion):
    model = _model(fusion)
    for head in model.head_names:
        model.zero_grad(set_to_none=True)
        out = model(_inputs())  # every head in one graph: the check must hold when they share it
        assert list(out) == ["video", "audio", "fused"]
        assert all(v.shape == (3, 5) and torch.isfinite(v).all() for v in out.values())
        g = torch.Generator().manual_seed(7)
        (out[head] * torch.randn(out[head].shape, generator=g)).sum().backward()
        reached = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        listed = model.parameters_of(head)
        assert len(_ids(listed)) == len(listed)
        assert reached == _ids(listed), (fusion, head)


def test_mid_concat_fuses_pooled_layer3_maps():
    model = _model("mid_concat")
    assert model.fusion.net[0].in_features == 256 + 256
    layer4 = _ids(p for m in SHAPES for p in model.encoders[m].layer4.parameters())
    assert not _ids(model.parameters_of("fused")) & layer4


def test_mid_concat_pools_maps_and_keeps_vectors():
    torch.manual_seed(0)
    fusion = MidConcatFusion({"a": 4, "b": 3}, hidden_dim=8, num_classes=2)
    a, b = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 3)
    expected = fusion.net(torch.cat([a.mean(dim=(2, 3, 4)), b], dim=1))
    assert torch.allclose(fusion({"a": a, "b": b}), expected, atol=1e-6)


def test_weights_round_trip(tmp_path):
    path = tmp_path / "video.pt"
    first = _model(seed=0)
    torch.save(first.encoders["video"].state_dict(), path)
    second = _model(seed=1, weights={"video": str(path)})
    for (name, a), b in zip(first.encoders["video"].state_dict().items(), second.encoders["video"].state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.encoders["audio"].conv1.weight, second.encoders["audio"].conv1.weight)


def test_full_torchvision_state_dict_loads_without_its_classifier(tmp_path):
    path = tmp_path / "r3d_18.pt"
    torch.manual_seed(3)
    full = r3d_18(weights=None).state_dict()
    assert any(k.startswith("fc.") for k in full)
    torch.save(full, path)
    model = _model(weights={"video": str(path)})
    for name, value in model.encoders["video"].state_dict().items():
        assert torch.equal(value, full[name]), name


def _weights_error(tmp_path, content, match, modality="video", encoders=None):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    spec = ModelSpec(encoders=encoders or {"video": "r3d_18", "audio": "resnet18"}, weights={modality: str(path)})
    with pytest.raises(ValueError, match=match) as err:
        build_model(spec, SHAPES, 5)
    assert str(path) in str(err.value) and f"model.weights.{modality}" in str(err.value)
    return str(err.value)


def test_weights_errors_name_the_file_modality_and_keys(tmp_path):
    _weights_error(tmp_path, None, "is not a file")
    _weights_error(tmp_path, b"not a checkpoint", "could not be loaded as a state dict")
    _weights_error(tmp_path, [1, 2, 3], "holds a list, not a state dict")

    audio_state = _encoder("resnet18", AUDIO).state_dict()
    msg = _weights_error(tmp_path, audio_state, "does not fit")
    assert "missing keys: stem.0.weight" in msg and "unexpected keys: conv1.weight" in msg
    assert "model.encoders.video" in msg

    video_state = _encoder("r3d_18", VIDEO).state_dict()
    assert video_state["layer4.1.conv2.1.weight"].shape == (512,)
    video_state["layer4.1.conv2.1.weight"] = torch.zeros(3)
    msg = _weights_error(tmp_path, video_state, r"shape mismatch: layer4.1.conv2.1.weight \(3,\)")
    assert "(encoder: (512,))" in msg


def test_weights_with_other_stem_channels_are_refused(tmp_path):
    torch.manual_seed(0)
    msg = _weights_error(tmp_path, resnet18(weights=None).state_dict(), "takes 3 input channels", modality="audio")
    assert "'conv1.weight'" in msg and "takes 1" in msg


def test_weights_for_an_unknown_modality_are_refused():
    with pytest.raises(ValueError, match=r"model.weights names \['depth'\]"):
        build_model(ModelSpec(weights={"depth": "/nowhere.pt"}), {"video": (6,)}, 5)

"""The GPU path's compute options on the CPU: ``train.precision`` (autocast, fp16's gradient
scaler), ``train.channels_last``, and what running out of GPU memory says (``compute.py``)."""

import contextlib
import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from gblend_ray.core.plan import parse_method
from gblend_ray.core.spec import ModelSpec, OptimSpec, RunSpec
from gblend_ray.data.arrays import save_dataset
from gblend_ray.data.sources import TensorData
from gblend_ray.training import assembly, runner
from gblend_ray.training.balancing import balancing_rule, mmpareto_gradients
from gblend_ray.training.checkpoint import load_checkpoint, save_checkpoint
from gblend_ray.training.compute import (
    FP32,
    Compute,
    GPUMemoryError,
    to_channels_last,
)
from gblend_ray.training.encoders import register_encoder
from gblend_ray.training.engine import batch_order, head_loss, make_optimizer, to_device, train_epochs
from gblend_ray.training.model import build_model


def _spec(path, method="gblend:online", **train):
    spec = RunSpec(method=method, seed=0)
    spec.data.path = str(path)
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 16, 8, 16
    spec.train.epochs, spec.train.batch_size = 2, 32
    spec.blend.warmup_epochs, spec.blend.super_epoch, spec.blend.probe_epochs = 1, 1, 1
    spec.optim.lr = 0.2  # two epochs: enough steps for the fused head to learn visibly
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


@contextlib.contextmanager
def _linear_outputs():
    """Every ``nn.Linear`` output's (train mode, dtype) while inside: a global forward hook."""
    seen: list[tuple[bool, torch.dtype]] = []

    def hook(module, args, output):
        if isinstance(module, nn.Linear):
            seen.append((module.training, output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ precision


def test_bf16_run_trains_and_evaluates_inside_autocast_on_the_cpu(tiny_dataset):
    with _linear_outputs() as seen:
        res = runner.run_inline(_spec(tiny_dataset, precision="bf16"))
    trained = {dtype for training, dtype in seen if training}
    evaluated = {dtype for training, dtype in seen if not training}
    assert trained == {torch.bfloat16} and evaluated == {torch.bfloat16}
    assert all(np.isfinite(r["loss/total"]) for r in res["history"])
    # it learned: the fused head's loss on T' (the blend's total changes with the weights)
    assert res["history"][-1]["train/fused/loss"] < res["history"][0]["train/fused/loss"]
    assert [r["epoch"] for r in res["trajectory"]] == [0, 1]  # the probes ran too
    assert all(np.isfinite(r["heads"][h]["val_after"]) for r in res["trajectory"] for h in r["heads"])
    for head in ("video", "audio", "fused"):  # evaluated: every head's test metrics
        assert 0.0 <= res["heads"][head]["top1"] <= 1.0 and np.isfinite(res["heads"][head]["loss"])
        assert np.isfinite(res["history"][-1][f"val/{head}/loss"])


def test_a_probe_computes_in_the_runs_precision(tiny_dataset):
    spec = _spec(tiny_dataset, precision="bf16")
    a = assembly.assemble(spec)
    with _linear_outputs() as seen:
        result = assembly.run_head_probe(spec, copy.deepcopy(a.model), a.data, "audio", head_index=1, epoch=0,
                                         probe_epochs=1)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert {training for training, _ in seen} == {True, False}  # it measured and trained
    assert np.isfinite(result.measurement.val_after)


def test_fp32_default_runs_no_autocast_and_matches_an_explicit_fp32_run(tiny_dataset):
    with _linear_outputs() as seen:
        default = runner.run_inline(_spec(tiny_dataset))
    explicit = runner.run_inline(_spec(tiny_dataset, precision="fp32"))
    assert {dtype for _, dtype in seen} == {torch.float32}
    assert default["history"] == explicit["history"] and default["heads"] == explicit["heads"]
    assert default["trajectory"][-1]["weights"] == explicit["trajectory"][-1]["weights"]


def _net(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(hidden_dim=16, feature_dim=8, fusion_hidden_dim=16), {"v": (5,), "a": (6,)}, 3)
    g = torch.Generator().manual_seed(1)
    data = TensorData({"v": torch.randn(48, 5, generator=g), "a": torch.randn(48, 6, generator=g)},
                      torch.arange(48) % 3)
    return model, data


def test_the_fp32_step_is_the_plain_step_bit_for_bit():
    """What the engine did before train.precision existed: forward, Σ w_i L_i, backward, step."""
    weights = {"v": 0.3, "a": 0.2, "fused": 0.5}
    model, data = _net()
    reference = copy.deepcopy(model)
    train_epochs(model, data, make_optimizer(model.parameters(), OptimSpec()), weights, 2, batch_size=12, seed=4)
    optimizer = make_optimizer(reference.parameters(), OptimSpec())
    for epoch in range(2):
        for index in batch_order(len(data), 12, 4, epoch):
            inputs, targets = data.take(index)
            optimizer.zero_grad(set_to_none=True)
            out = reference(inputs, heads=list(weights))
            loss = torch.zeros(()) + sum(w * nn.functional.cross_entropy(out[h], targets) for h, w in weights.items())
            loss.backward()
            optimizer.step()
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name


@functools.cache  # each fp32 reference serves both precisions
def _train(method, precision, epochs=3):
    model, data = _net()
    before = copy.deepcopy(model.state_dict())
    spec = RunSpec(method=method)
    rule = balancing_rule(spec, parse_method(method, ["v", "a"]), model, 3)
    history = train_epochs(model, data, make_optimizer(model.parameters(), spec.optim),
                           {"v": 0.3, "a": 0.3, "fused": 0.4}, epochs, batch_size=12, rule=rule,
                           compute=Compute(precision))
    delta = torch.cat([(model.state_dict()[k] - before[k]).flatten() for k in before
                       if before[k].is_floating_point()])
    return delta, history


@pytest.mark.parametrize("method", ["naive", "ogm_ge", "pmr", "agm", "mmpareto"])
@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.1), ("fp16", 0.02)])
def test_balancing_rules_make_the_fp32_update_under_autocast_and_the_scaler(method, precision, tolerance):
    """Each rule's gradient surgery sees true gradients: its parameters move as in fp32,
    within the rounding of the low-precision forward pass (measured: bf16 ≤ 0.03, fp16 ≤ 0.006)."""
    reference, ref_history = _train(method, "fp32")
    delta, history = _train(method, precision)
    assert all(np.isfinite(r["loss/total"]) for r in history)
    assert ((delta - reference).norm() / reference.norm()).item() < tolerance
    assert history[-1]["loss/total"] == pytest.approx(ref_history[-1]["loss/total"], rel=0.01)


def test_fp16_gradients_are_unscaled_before_agms_clip_reads_them():
    """AGM clips when the fused head's gradient leaves [-1, 1]: read times the loss scale
    (65536 at the start) it would clip at every step; unscaled it clips as in fp32."""
    _, ref_history = _train("agm", "fp32")
    _, history = _train("agm", "fp16")
    assert [r["agm/clipped"] for r in history] == [r["agm/clipped"] for r in ref_history]
    assert all(r["agm/clipped"] < 0.5 for r in ref_history)


def test_mmpareto_surgery_scales_with_the_loss_scale():
    """MMPareto combines gradients inside its backward pass, before the loop unscales: sound
    because the combination is positively homogeneous, f(S·g1, S·g2) = S·f(g1, g2)."""
    g = torch.Generator().manual_seed(0)
    fused = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    uni = [-0.5 * fused[0] + 0.1 * torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    scale = 65536.0
    plain = mmpareto_gradients(fused, uni)
    scaled = mmpareto_gradients([scale * t for t in fused], [scale * t for t in uni])
    for p, s in zip(plain, scaled):
        torch.testing.assert_close(s / scale, p, rtol=1e-5, atol=0)


def test_head_loss_is_taken_in_fp32_under_autocast():
    logits, targets = torch.randn(8, 4), torch.arange(8) % 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_loss(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    assert head_loss(logits, targets).item() == nn.functional.cross_entropy(logits, targets).item()


def test_the_scalers_state_is_in_the_checkpoint(tmp_path):
    model, _ = _net()
    optimizer = make_optimizer(model.parameters(), OptimSpec())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once used
    scaler.update(new_scale=256.0)
    state = load_checkpoint(save_checkpoint(tmp_path, model, optimizer, 3, None, [], scaler=scaler))
    assert state.scaler["scale"] == 256.0
    assert load_checkpoint(save_checkpoint(tmp_path / "fp32", model, optimizer, 3, None, [])).scaler is None


def test_an_fp16_run_trains_with_one_scaler_across_its_segments(tiny_dataset, tmp_path):
    spec = _spec(tiny_dataset, precision="fp16")
    a = assembly.assemble(spec)
    assert isinstance(a.scaler, torch.amp.GradScaler) and assembly.assemble(_spec(tiny_dataset)).scaler is None
    res = runner.run_inline(spec, tmp_path)
    assert all(np.isfinite(r["loss/total"]) for r in res["history"])
    assert res["history"][-1]["train/fused/loss"] < res["history"][0]["train/fused/loss"]
    # the boundary checkpoints carry the run's loss scale
    last = max((tmp_path / "checkpoints").iterdir())
    assert load_checkpoint(last).scaler["scale"] > 0


# ------------------------------------------------------------------------------ channels_last


class _TinyConv3d(nn.Module):
    """A 3-D convolution encoder small enough for a test: conv → BN → ReLU → pool."""

    def __init__(self, channels: int):
        super().__init__()
        self.feature_dim = 8
        self.net = nn.Sequential(nn.Conv3d(channels, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool3d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


register_encoder("test_tiny_conv3d")(lambda shape, spec: _TinyConv3d(shape[0]))


@pytest.fixture(scope="module")
def clips_dataset(tmp_path_factory):
    """'video' as (3, 4, 8, 8) clips whose class is a bright channel; 'audio' a noisy vector."""
    rng = np.random.default_rng(0)
    n, c = 96, 3
    labels = np.arange(n) % c
    video = rng.standard_normal((n, 3, 4, 8, 8)).astype(np.float32)
    video[np.arange(n), labels] += 1.0
    audio = rng.standard_normal((c, 6))[labels] * 0.5 + rng.standard_normal((n, 6))
    split = np.array(["train"] * 64 + ["val"] * 8 + ["test"] * 24)
    return save_dataset(tmp_path_factory.mktemp("clips") / "ds", {"video": video, "audio": audio}, labels,
                        [f"c{i}" for i in range(c)], split=split)


def _clips_spec(path, **train):
    spec = _spec(path, method="gblend:offline", **train)
    spec.model.encoders = {"video": "test_tiny_conv3d"}
    spec.train.epochs, spec.train.batch_size = 2, 16
    return spec


def test_channels_last_keeps_a_3d_conv_model_and_its_clips_channels_last(clips_dataset):
    a = assembly.assemble(_clips_spec(clips_dataset, channels_last=True))
    conv = a.model.encoders["video"].net[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert a.optimizer.param_groups[0]["params"][0] is next(a.model.parameters())  # the same parameters
    seen = []
    hook = conv.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    try:
        train_epochs(a.model, a.data.train, a.optimizer, {"fused": 1.0}, 1, batch_size=16, compute=a.compute)
    finally:
        hook.remove()
    assert seen and all(seen)


def test_channels_last_gives_the_same_run_within_rounding(clips_dataset):
    plain = runner.run_inline(_clips_spec(clips_dataset))
    last = runner.run_inline(_clips_spec(clips_dataset, channels_last=True))
    for a, b in zip(plain["history"], last["history"]):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4)
        assert b["val/fused/loss"] == pytest.approx(a["val/fused/loss"], rel=1e-4)
    assert last["trajectory"][0]["weights"] == pytest.approx(plain["trajectory"][0]["weights"], abs=1e-3)
    assert last["test"]["loss"] == pytest.approx(plain["test"]["loss"], rel=1e-4)


def test_to_device_makes_clips_and_spectrograms_channels_last_and_leaves_vectors():
    batch = {"video": torch.randn(2, 3, 4, 8, 8), "audio": torch.randn(2, 1, 10, 12), "x": torch.randn(2, 5)}
    inputs, _ = to_device(torch.device("cpu"), (batch, torch.tensor([0, 1])), channels_last=True)
    assert inputs["video"].is_contiguous(memory_format=torch.channels_last_3d)
    assert inputs["audio"].is_contiguous(memory_format=torch.channels_last)
    assert inputs["x"] is batch["x"] and torch.equal(inputs["video"], batch["video"])
    plain, _ = to_device(torch.device("cpu"), (batch, torch.tensor([0, 1])))
    assert plain["video"] is batch["video"]  # fp32 default: no copy on the CPU


def test_to_channels_last_converts_each_kernel_to_its_own_format():
    model = nn.ModuleDict({"v": nn.Conv3d(3, 4, 3), "a": nn.Conv2d(1, 4, 3), "fc": nn.Linear(4, 2)})
    to_channels_last(model)
    assert model["v"].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model["a"].weight.is_contiguous(memory_format=torch.channels_last)
    assert model["fc"].weight.is_contiguous()


# ------------------------------------------------------------------------------ out of memory

_OOM_TEXT = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
             "1.05 GiB is free.")


class _OutOfMemory(nn.Module):
    """An encoder that runs out of GPU memory as CUDA does, when it trains (not when measured)."""

    feature_dim = 4

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 4)

    def forward(self, x):
        if self.training:
            raise torch.cuda.OutOfMemoryError(_OOM_TEXT)
        return self.fc(x)


register_encoder("test_out_of_memory")(lambda shape, spec: _OutOfMemory(shape[0]))


@pytest.mark.parametrize("method, who", [("naive", "the trainer"),
                                         ("gblend:online", "the probe of head 'video' (round at epoch 0)")])
def test_out_of_gpu_memory_says_who_how_much_and_what_to_change(tiny_dataset, method, who):
    spec = _spec(tiny_dataset, method=method)
    spec.model.encoders = {"video": "test_out_of_memory"}
    with pytest.raises(GPUMemoryError) as info:
        runner.run_inline(spec)
    text = str(info.value)
    assert text.startswith(f"{who} ran out of GPU memory: it asked for 2.00 GiB")
    assert "train.batch_size (now 32)" in text and "train.precision: bf16" in text
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


def test_a_probe_on_a_gpu_share_is_told_to_take_a_larger_share(tiny_dataset):
    spec = _spec(tiny_dataset, precision="bf16")
    spec.trainer.use_gpu = True
    spec.probes.resources = {"CPU": 0.25, "GPU": 0.25}
    spec.model.encoders = {"audio": "test_out_of_memory"}
    a = assembly.assemble(_spec(tiny_dataset))
    model = build_model(spec.model, a.data.dataset.shapes(), a.data.dataset.num_classes)
    with pytest.raises(GPUMemoryError) as info:
        assembly.run_head_probe(spec, model, a.data, "audio", head_index=1, epoch=4, probe_epochs=1)
    text = str(info.value)
    assert text.startswith("the probe of head 'audio' (round at epoch 4) ran out of GPU memory")
    assert "probes.resources.GPU (now 0.25)" in text and "probes.max_concurrent" in text
    assert "train.precision: bf16" not in text  # already bf16


def test_compute_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="fp8"):
        Compute("fp8")
    assert FP32.grad_scaler(torch.device("cpu")) is None
    assert isinstance(Compute("fp16").grad_scaler(torch.device("cpu")), torch.amp.GradScaler)


def test_a_run_that_diverges_under_autocast_is_told_to_try_fp32():
    model, data = _net()
    optimizer = make_optimizer(model.parameters(), OptimSpec(lr=1e12))
    with pytest.raises(FloatingPointError, match=r"or try train.precision: fp32 \(this ran under bf16 autocast"):
        train_epochs(model, data, optimizer, {"fused": 1.0}, 3, batch_size=12, compute=Compute("bf16"))

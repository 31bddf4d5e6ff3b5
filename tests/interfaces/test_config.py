"""Tests for gblend_ray.config: YAML -> RunSpec, overrides, validation and its messages."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gblend_ray.core.spec import (
    SAFEGUARDS,
    BlendSpec,
    DataSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    TrainSpec,
)
from gblend_ray.interfaces.config import (
    ConfigError,
    apply_overrides,
    check_against_dataset,
    dump_config,
    load_config,
    load_config_with_sweep,
    spec_from_dict,
    spec_to_dict,
    validate,
)

VALID = """\
data:
  path: ds
  heldout_fraction: 0.15
model:
  encoders: {audio: mlp}
  dropout: 0.1
optim:
  name: adam
  lr: 1
train:
  epochs: 12
  threads: 2
blend:
  schedule: offline
  warmup_epochs: 4
  metric: accuracy
method: gblend
seed: 7
name: first
"""


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _raw(**sections) -> dict:
    raw = {"data": {"path": "/data/ds"}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def _fails(raw: dict, field: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        spec_from_dict(raw)
    assert str(info.value).startswith(f"{field}: "), str(info.value)
    assert info.value.field == field
    return info.value


# --------------------------------------------------------------------------- loading


def test_valid_yaml_loads_with_types_and_defaults(tmp_path):
    spec = load_config(_write(tmp_path, VALID))
    assert isinstance(spec, RunSpec)
    assert spec.data.path == os.path.abspath(tmp_path / "ds")
    assert spec.data.heldout_fraction == 0.15
    assert spec.model.encoders == {"audio": "mlp"}
    assert spec.model.dropout == 0.1
    assert spec.optim.name == "adam"
    # an int written for a float field is accepted and stored as a float
    assert spec.optim.lr == 1.0 and type(spec.optim.lr) is float
    assert spec.train.epochs == 12 and type(spec.train.epochs) is int
    assert spec.train.threads == 2
    assert spec.blend.schedule == "offline"
    assert spec.blend.warmup_epochs == 4
    assert spec.blend.metric == "accuracy"
    assert (spec.method, spec.seed, spec.name) == ("gblend", 7, "first")
    # everything not written takes spec.py's defaults
    assert spec.data.subset_size is None
    assert spec.data.val_fraction == DataSpec().val_fraction
    assert spec.model.hidden_dim == ModelSpec().hidden_dim
    assert spec.optim.momentum == OptimSpec().momentum
    assert spec.train.batch_size == TrainSpec().batch_size
    assert spec.train.device == "cpu"
    assert spec.blend.super_epoch == BlendSpec().super_epoch
    assert spec.blend.probe_epochs is None
    assert spec.blend.safeguard == "head_train" and spec.blend.floor == 0.3


def test_minimal_dict_gets_defaults_and_empty_section_means_defaults():
    spec = spec_from_dict({"data": {"path": "/d"}, "blend": None})
    assert spec == RunSpec(data=DataSpec(path="/d"))


def test_scientific_notation_string_accepted_for_float():
    # YAML 1.1 reads `1e-8` (no dot) as a string; float fields accept it
    spec = spec_from_dict(yaml.safe_load("data: {path: /d}\nblend: {eps: 1e-8}\noptim: {lr: 3e-4}"))
    assert spec.blend.eps == 1e-8
    assert spec.optim.lr == 3e-4


def test_import_pulls_in_neither_torch_nor_ray():
    code = ("import sys, gblend_ray, gblend_ray.interfaces.config, gblend_ray.interfaces.report; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- unknown keys


def test_unknown_nested_key_names_path_and_suggests(tmp_path):
    path = _write(tmp_path, "data: {path: ds}\nblend:\n  warmup_epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: blend.warmup_epoch: ")
    assert "did you mean 'warmup_epochs'" in msg
    for name in (f.name for f in dataclasses.fields(BlendSpec)):
        assert name in msg  # lists the valid keys
    assert info.value.field == "blend.warmup_epoch"


def test_unknown_top_level_key():
    err = _fails(_raw(blnd={"metric": "loss"}), "blnd")
    assert "did you mean 'blend'" in str(err)
    assert "valid keys: data, model, optim, train, blend, baselines, balancing, trainer, probes, tracking, method, seed, name" in str(err)


def test_section_field_written_at_top_level_suggests_section():
    err = _fails(_raw(epochs=3), "epochs")
    assert "did you mean 'train.epochs'" in str(err)


# --------------------------------------------------------------------------- types


def test_wrong_type_string_for_int(tmp_path):
    path = _write(tmp_path, 'data: {path: ds}\ntrain:\n  epochs: "ten"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: train.epochs: ")
    assert "expected an int" in msg and "'ten'" in msg


def test_bool_is_not_an_int():
    err = _fails(_raw(seed=True), "seed")
    assert "expected an int" in str(err) and "True" in str(err)


def test_bool_is_not_a_float():
    _fails(_raw(optim={"lr": True}), "optim.lr")


def test_null_only_for_optional_fields():
    assert spec_from_dict(_raw(train={"threads": None})).train.threads is None
    err = _fails(_raw(train={"epochs": None}), "train.epochs")
    assert "not optional" in str(err)


def test_section_must_be_a_mapping():
    _fails(_raw(blend=[1, 2]), "blend")


def test_dict_field_values_checked():
    _fails(_raw(model={"encoders": {"audio": 3}}), "model.encoders.audio")
    _fails(_raw(model={"encoders": ["audio"]}), "model.encoders")


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        spec_from_dict([1, 2])


def test_source_prefixes_messages():
    with pytest.raises(ConfigError) as info:
        spec_from_dict(_raw(seed="x"), source="cfg.yaml")
    assert str(info.value).startswith("cfg.yaml: seed: ")
    assert info.value.source == "cfg.yaml"


# --------------------------------------------------------------------------- values


def test_negative_epochs():
    err = _fails(_raw(train={"epochs": -3}), "train.epochs")
    assert "expected an int >= 1, got -3" in str(err)


def test_negative_warmup_message_format(tmp_path):
    path = _write(tmp_path, "data: {path: ds}\nblend: {warmup_epochs: -3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: blend.warmup_epochs: expected an int >= 1, got -3"


def test_metric_f1_lists_allowed():
    err = _fails(_raw(blend={"metric": "f1"}), "blend.metric")
    assert "loss" in str(err) and "accuracy" in str(err) and "'f1'" in str(err)


def test_floor_out_of_range():
    err = _fails(_raw(blend={"floor": 2}), "blend.floor")
    assert "[0, 1]" in str(err)


@pytest.mark.parametrize("subset", [0, 1.5, -0.1])
def test_probes_subset_is_a_fraction_of_the_train_split(subset):
    err = _fails(_raw(probes={"subset": subset}), "probes.subset")
    assert "(0, 1]" in str(err)


# --------------------------------------------------------------------------- the GPU path


def test_gpu_path_options_load_with_their_defaults(tmp_path):
    spec = spec_from_dict(_raw())
    assert spec.train.precision == "fp32" and spec.train.channels_last is False
    assert spec.data.media.prefetch_factor == 2
    path = _write(tmp_path, "data: {path: ds, media: {prefetch_factor: 4}}\n"
                            "train: {precision: bf16, channels_last: true}\n"
                            "trainer: {use_gpu: true, resources_per_worker: {CPU: 1, GPU: 0.25}}\n"
                            "probes: {resources: {GPU: 0.25}}\n")
    spec = load_config(path)
    assert (spec.train.precision, spec.train.channels_last, spec.data.media.prefetch_factor) == ("bf16", True, 4)
    assert spec.probes.resources == {"GPU": 0.25}  # the section's mapping replaces the default
    spec = load_config(path, ["probes.resources.CPU=0.5", "train.precision=fp16"])
    assert spec.probes.resources == {"GPU": 0.25, "CPU": 0.5} and spec.train.precision == "fp16"


def test_precision_is_one_of_its_choices():
    err = _fails(_raw(train={"precision": "bf61"}), "train.precision")
    assert "fp32, bf16, fp16" in str(err) and "did you mean 'bf16'" in str(err)
    _fails(_raw(train={"channels_last": "yes"}), "train.channels_last")
    _fails(_raw(data={"media": {"prefetch_factor": 0}}), "data.media.prefetch_factor")


def test_gpu_probes_need_the_trainer_on_a_gpu():
    err = _fails(_raw(probes={"resources": {"GPU": 0.25}}), "probes.resources.GPU")
    assert "trainer.use_gpu: true" in str(err)
    spec_from_dict(_raw(probes={"resources": {"GPU": 0.25}}, trainer={"use_gpu": True}))


def test_a_gpu_share_above_one_is_whole():
    err = _fails(_raw(trainer={"use_gpu": True}, probes={"resources": {"GPU": 1.5}}), "probes.resources.GPU")
    assert "whole number of GPUs" in str(err) and "1 or 2" in str(err)
    _fails(_raw(trainer={"use_gpu": True, "resources_per_worker": {"CPU": 1, "GPU": 2.5}}),
           "trainer.resources_per_worker.GPU")
    spec_from_dict(_raw(trainer={"use_gpu": True, "resources_per_worker": {"GPU": 2}},
                        probes={"resources": {"GPU": 0.5}}))


@pytest.mark.parametrize("method, blend, why", [
    ("gblend:offline", {}, "method 'gblend:offline' runs the offline schedule"),
    ("gblend", {"schedule": "offline"}, "(blend.schedule: offline)"),
])
def test_overlapped_rounds_need_the_online_schedule(method, blend, why):
    err = _fails(_raw(method=method, blend=blend, probes={"overlap": True}), "probes.overlap")
    assert "need online G-Blend" in str(err) and why in str(err)


def test_overlapped_rounds_need_probes_on_tune():
    err = _fails(_raw(method="gblend:online", probes={"overlap": True, "mode": "inline"}), "probes.overlap")
    assert "need probes.mode: tune" in str(err) and "probes.mode: inline runs them" in str(err)


def test_overlap_passes_online_on_tune_and_is_ignored_without_rounds():
    assert spec_from_dict(_raw(method="gblend:online", probes={"overlap": True})).probes.overlap is True
    # the method decides the schedule; a method without rounds has nothing to overlap
    assert spec_from_dict(_raw(method="gblend:online", blend={"schedule": "offline"}, probes={"overlap": True}))
    assert spec_from_dict(_raw(method="naive", blend={"schedule": "offline"}, probes={"overlap": True,
                                                                                       "mode": "inline"}))
    assert spec_from_dict(_raw()).probes.overlap is False  # default: Algorithm 3 exactly


def test_overlap_on_the_in_process_engine_is_a_config_error():
    from gblend_ray.interfaces.config import check_engine

    spec = spec_from_dict(_raw(method="gblend:online", probes={"overlap": True}))
    check_engine(spec, inline=False)
    with pytest.raises(ConfigError, match=r"^probes.overlap: the in-process engine \(--inline\)") as info:
        check_engine(spec, inline=True)
    assert info.value.field == "probes.overlap"
    check_engine(dataclasses.replace(spec, method="naive"), inline=True)


def test_choice_typo_suggests():
    err = _fails(_raw(optim={"name": "adm"}), "optim.name")
    assert "did you mean 'adam'" in str(err)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "batch_size", 0),
        ("train", "eval_batch_size", 0),
        ("train", "threads", 0),
        ("blend", "schedule", "sometimes"),
        ("blend", "super_epoch", 0),
        ("blend", "probe_epochs", 0),
        ("blend", "eps", -1.0),
        ("blend", "safeguard", "helmet"),
        ("blend", "floor", -0.1),
        ("optim", "name", "lbfgs"),
        ("optim", "lr", 0),
        ("optim", "lr", float("nan")),
        ("optim", "momentum", 1.0),
        ("optim", "momentum", -0.1),
        ("optim", "weight_decay", -1e-4),
        ("optim", "lr_schedule", "step"),
        ("data", "heldout_fraction", 0),
        ("data", "heldout_fraction", 1.0),
        ("data", "val_fraction", 1.0),
        ("data", "test_fraction", -0.1),
        ("data", "subset_size", 0),
        ("data", "path", ""),
        ("model", "hidden_dim", 0),
        ("model", "feature_dim", 0),
        ("model", "fusion_hidden_dim", -1),
        ("model", "dropout", 1.0),
        ("model", "dropout", -0.5),
    ],
)
def test_impossible_values_name_their_field(section, key, value):
    _fails(_raw(**{section: {key: value}}), f"{section}.{key}")


@pytest.mark.parametrize("safeguard", SAFEGUARDS)
def test_every_safeguard_accepted(safeguard):
    assert spec_from_dict(_raw(blend={"safeguard": safeguard})).blend.safeguard == safeguard


def test_media_crop_must_fit_in_the_resized_frame():
    err = _fails(_raw(data={"path": "/d", "media": {"size": 64, "resize": 40}}), "data.media.size")
    assert "resize (40)" in str(err)


def test_val_plus_test_fraction_must_leave_training_data():
    err = _fails(_raw(data={"val_fraction": 0.5, "test_fraction": 0.5}), "data.test_fraction")
    assert "< 1" in str(err)
    spec = spec_from_dict(_raw(data={"val_fraction": 0.0, "test_fraction": 0.0}))
    assert (spec.data.val_fraction, spec.data.test_fraction) == (0.0, 0.0)


@pytest.mark.parametrize("method", ["naive", "aux", "gblend", "gblend:offline", "gblend:online",
                                    "uni:anything"])
def test_valid_methods(method):
    assert spec_from_dict(_raw(method=method)).method == method


@pytest.mark.parametrize("method", ["late", "uni", "uni:", "gblend:sometimes", "naive:x", ""])
def test_invalid_methods(method):
    _fails(_raw(method=method), "method")


def test_validate_checks_programmatic_specs():
    validate(RunSpec(data=DataSpec(path="/d")))
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an int >= 1, got 0$"):
        validate(RunSpec(data=DataSpec(path="/d"), train=TrainSpec(epochs=0)))
    with pytest.raises(ConfigError, match=r"^seed: expected an int"):
        validate(RunSpec(data=DataSpec(path="/d"), seed="1"))
    with pytest.raises(ConfigError, match=r"^data\.path: "):
        validate(RunSpec())


# --------------------------------------------------------------------------- dataset


def test_uni_with_missing_modality_lists_modalities():
    spec = spec_from_dict(_raw(method="uni:depth"))
    with pytest.raises(ConfigError) as info:
        check_against_dataset(spec, ["video", "audio"])
    msg = str(info.value)
    assert msg.startswith("method: ")
    assert "'depth'" in msg and "video" in msg and "audio" in msg
    check_against_dataset(spec_from_dict(_raw(method="uni:audio")), ["video", "audio"])


def test_encoder_override_for_missing_modality():
    spec = spec_from_dict(_raw(model={"encoders": {"depth": "mlp"}}))
    with pytest.raises(ConfigError) as info:
        check_against_dataset(spec, ["video", "audio"])
    assert str(info.value).startswith("model.encoders.depth: ")
    assert "video" in str(info.value) and "audio" in str(info.value)


def test_dataset_check_passes_for_multimodal_methods():
    for method in ("naive", "aux", "gblend", "gblend:offline"):
        check_against_dataset(spec_from_dict(_raw(method=method)), ["video", "audio"])


# --------------------------------------------------------------------------- overrides


def test_overrides_nested_and_top_level(tmp_path):
    path = _write(tmp_path, VALID)
    spec = load_config(path, ["blend.warmup_epochs=6", "optim.lr=0.1", "method=uni:audio",
                              "seed=3", "train.threads=null", "model.encoders.video=mlp",
                              "name=second"])
    assert spec.blend.warmup_epochs == 6 and type(spec.blend.warmup_epochs) is int
    assert spec.optim.lr == 0.1
    assert spec.method == "uni:audio"
    assert spec.seed == 3
    assert spec.train.threads is None
    assert spec.model.encoders == {"audio": "mlp", "video": "mlp"}
    assert spec.name == "second"
    # untouched fields keep the file's values
    assert spec.train.epochs == 12 and spec.blend.metric == "accuracy"


def test_apply_overrides_parses_yaml_values_and_copies():
    raw = {"train": {"epochs": 3}}
    out = apply_overrides(raw, ["train.epochs=5", "blend.eps=0.5", "train.device=cuda",
                                "data.subset_size=null", "data.preset_seed=1"])
    assert out == {"train": {"epochs": 5, "device": "cuda"}, "blend": {"eps": 0.5},
                   "data": {"subset_size": None, "preset_seed": 1}}
    assert raw == {"train": {"epochs": 3}}  # the input is not mutated


def test_override_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["blend.warmup_epoch=3"])
    assert str(info.value).startswith("blend.warmup_epoch: ")
    assert "did you mean 'warmup_epochs'" in str(info.value)
    with pytest.raises(ConfigError, match=r"^bogus: unknown key"):
        apply_overrides({}, ["bogus=1"])
    with pytest.raises(ConfigError, match=r"^train\.epochs\.x: "):
        apply_overrides({}, ["train.epochs.x=1"])
    path = _write(tmp_path, VALID)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.epoch=3"])
    assert str(info.value).startswith(f"{path}: train.epoch: ")


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_override_type_checked_after_applying(tmp_path):
    path = _write(tmp_path, VALID)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["seed=true"])
    assert str(info.value).startswith(f"{path}: seed: expected an int")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["blend.warmup_epochs=0"])
    assert str(info.value).startswith(f"{path}: blend.warmup_epochs: ")


def test_override_makes_invalid_file_valid(tmp_path):
    path = _write(tmp_path, "blend: {warmup_epochs: -1}\n")
    spec = load_config(path, ["blend.warmup_epochs=2", "data.path=/abs/ds"])
    assert spec.blend.warmup_epochs == 2
    assert spec.data.path == os.path.abspath("/abs/ds")


# --------------------------------------------------------------------------- paths, sweep


def test_relative_data_path_resolved_against_yaml_dir(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    _write(sub, "data: {path: ../datasets/toy}\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_config(Path("configs") / "run.yaml")
    assert spec.data.path == os.path.abspath(tmp_path / "datasets" / "toy")
    absolute = _write(sub, f"data: {{path: {tmp_path / 'elsewhere'}}}\n", "abs.yaml")
    assert load_config(absolute).data.path == str(tmp_path / "elsewhere")


def test_relative_override_path_resolved_against_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = _write(sub, "data: {path: ds}\n")
    monkeypatch.chdir(tmp_path)
    spec = load_config(path, ["data.path=other"])
    assert spec.data.path == os.path.abspath(tmp_path / "other")


def test_sweep_section_returned_and_ignored(tmp_path):
    text = VALID + "sweep:\n  seeds: [0, 1, 2]\n  methods: [naive, gblend]\n"
    path = _write(tmp_path, text)
    spec, sweep = load_config_with_sweep(path)
    assert sweep == {"seeds": [0, 1, 2], "methods": ["naive", "gblend"]}
    assert spec == load_config(path)
    assert load_config_with_sweep(_write(tmp_path, VALID, "plain.yaml"))[1] is None
    bad = _write(tmp_path, VALID + "sweep: [1, 2]\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"sweep: expected a mapping"):
        load_config(bad)


# --------------------------------------------------------------------------- file errors


def test_missing_file_named(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "no such config file" in str(info.value)


def test_bad_yaml_named(tmp_path):
    path = _write(tmp_path, "data: {path: ds\nblend: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: invalid YAML")


def test_top_level_list_named(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: top level must be a mapping")


def test_empty_file_is_all_defaults_but_needs_a_path(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match=r": data\.path: expected a non-empty string"):
        load_config(path)
    assert load_config(path, ["data.path=/d"]) == RunSpec(data=DataSpec(path="/d"))


# --------------------------------------------------------------------------- round trip


def test_dump_load_round_trip(tmp_path):
    spec = load_config(_write(tmp_path, VALID), ["blend.eps=1.0e-8", "data.subset_size=40"])
    out = dump_config(spec, tmp_path / "out" / "dumped.yaml")
    again = load_config(out)
    assert again == spec
    assert spec_to_dict(again) == spec_to_dict(spec)
    assert yaml.safe_load(out.read_text()) == dataclasses.asdict(spec)


def test_spec_to_dict_is_loadable():
    spec = RunSpec(data=DataSpec(path="/d"), model=ModelSpec(encoders={"a": "mlp"}),
                   method="aux", seed=5, name="x")
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_balancing_sections_default_to_the_authors_values_and_take_overrides():
    spec = spec_from_dict({"data": {"path": "ds"}, "method": "ogm_ge"})
    b = spec.balancing
    assert (b.ogm.modulation_starts, b.ogm.modulation_ends, b.ogm.scores) == (0, 50, "heads")
    assert (b.pmr.alpha, b.pmr.momentum, b.pmr.modulation_ends) == (1.0, 0.2, 100)
    assert (b.agm.alpha, b.mmpareto.gamma) == (1.5, 1.5)
    raw = apply_overrides({"data": {"path": "ds"}, "method": "agm"},
                          ["balancing.agm.alpha=2.5", "balancing.ogm.modulation_ends=null"])
    spec = spec_from_dict(raw)
    assert spec.balancing.agm.alpha == 2.5 and spec.balancing.ogm.modulation_ends is None


@pytest.mark.parametrize("section, message", [
    ({"ogm": {"alpha": -1}}, r"balancing\.ogm\.alpha: expected a number > 0, got -1"),
    ({"ogm": {"alpha": "big"}}, r"balancing\.ogm\.alpha: expected a number, got 'big'"),
    ({"ogm": {"modulation_starts": 5, "modulation_ends": 2}}, r"balancing\.ogm\.modulation_ends: .*ends \(epoch 2\)"),
    ({"ogm": {"scores": "lineer"}}, r"balancing\.ogm\.scores: .*did you mean 'linear'"),
    ({"pmr": {"momentum": 1.0}}, r"balancing\.pmr\.momentum: expected a number in \[0, 1\)"),
    ({"pmr": {"prototype_fraction": 0}}, r"balancing\.pmr\.prototype_fraction: expected a number in \(0, 1\]"),
    ({"agm": {"alpa": 1}}, r"balancing\.agm\.alpa: unknown key; did you mean 'alpha'"),
    ({"mmpareto": {"gamma": 0}}, r"balancing\.mmpareto\.gamma: expected a number > 0"),
])
def test_bad_balancing_values_name_the_dotted_field(section, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict({"data": {"path": "ds"}, "method": "ogm_ge", "balancing": section})


def test_ogm_linear_scores_need_a_linear_fused_head_and_balancing_needs_two_modalities():
    with pytest.raises(ConfigError, match=r"balancing\.ogm\.scores: 'linear' .*model\.fusion_hidden_dim: 0"):
        spec_from_dict({"data": {"path": "ds"}, "method": "ogm", "balancing": {"ogm": {"scores": "linear"}}})
    spec = spec_from_dict({"data": {"path": "ds"}, "method": "ogm", "model": {"fusion_hidden_dim": 0},
                           "balancing": {"ogm": {"scores": "linear"}}})
    assert spec.model.fusion_hidden_dim == 0
    with pytest.raises(ConfigError, match=r"model\.fusion_hidden_dim: 0 .*lmf"):
        spec_from_dict({"data": {"path": "ds"}, "model": {"fusion": "lmf", "fusion_hidden_dim": 0}})
    spec = spec_from_dict({"data": {"path": "ds", "modalities": ["video"]}, "method": "mmpareto"})
    with pytest.raises(ConfigError, match=r"^method: 'mmpareto' balances modalities .*needs at least two"):
        check_against_dataset(spec, ["video", "audio"])
    check_against_dataset(spec_from_dict({"data": {"path": "ds"}, "method": "pmr"}), ["video", "audio", "flow"])


def test_preset_in_the_data_path_follows_the_preset_override(tmp_path):
    cfg = _write(tmp_path, "data:\n  path: sets/{preset}\n  preset: av-overfit\n")
    assert load_config(cfg).data.path == str(tmp_path / "sets" / "av-overfit")
    moved = load_config(cfg, ["data.preset=mfeat"])
    assert moved.data.path == str(tmp_path / "sets" / "mfeat") and moved.data.preset == "mfeat"


def test_preset_in_the_data_path_without_a_preset_is_refused(tmp_path):
    cfg = _write(tmp_path, "data:\n  path: sets/{preset}\n")
    with pytest.raises(ConfigError, match=r"data.path: .*\{preset\}.*data.preset is not set") as info:
        load_config(cfg)
    assert str(info.value).startswith(str(cfg))

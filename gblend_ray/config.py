"""The interfaces layer: YAML files and ``--set`` overrides to a validated ``RunSpec``.

Everything a run reads is checked here, at load time, so that a typo or an impossible
value fails before any data is loaded or any worker is started, with a message that
names the offending field by its dotted path::

    configs/run.yaml: blend.warmup_epochs: expected an int >= 1, got -3
    configs/run.yaml: blend.warmup_epoch: unknown key; did you mean 'warmup_epochs'? valid keys under blend: ...

Parsing is generic: it walks ``dataclasses.fields`` of the classes in ``spec.py`` and
their type hints, so a field added to the spec is loadable, overridable and type-checked
without touching this module (its range check, if any, goes in ``validate``).

Type rules: ``int`` accepts ints but not booleans; ``float`` accepts ints and floats
(and numeric strings such as ``1e-8``, which YAML 1.1 reads as a string), not booleans;
``str`` accepts strings only; ``None`` (YAML ``null``) is accepted only for Optional
fields; ``dict[str, str]`` needs string keys and values. A section written empty
(``blend:`` with nothing under it) means all of its defaults.

A top-level ``sweep:`` section is allowed in a file; ``load_config`` ignores it and
``load_config_with_sweep`` returns it, unchecked, for the sweep layer to read.

A relative ``data.path``, ``data.media.flow_dir`` or ``model.weights.<modality>`` written
in a file is resolved against that file's directory; one given by an override is
resolved against the current directory.

Imports only the stdlib, PyYAML and the pure-Python modules ``spec``, ``plan`` and
``rounds`` (no torch, no Ray).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml

from .plan import parse_method
from .rounds import SAFEGUARDS
from .spec import RunSpec
from .tracking import BACKENDS as TRACKING_BACKENDS

__all__ = [
    "ConfigError",
    "spec_from_dict",
    "load_config",
    "load_config_with_sweep",
    "apply_overrides",
    "spec_to_dict",
    "dump_config",
    "validate",
    "check_against_dataset",
]

SWEEP_KEY = "sweep"
"""The top-level section holding a sweep definition, read by ``load_config_with_sweep``."""

SCHEDULES = ("offline", "online")
METRICS = ("loss", "accuracy")
OPTIMIZERS = ("sgd", "adam", "adagrad")
LR_SCHEDULES = ("constant", "cosine")
PROBE_MODES = ("tune", "inline")
ON_BAD_SAMPLE = ("error", "skip")

_NUMERIC_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration that cannot be run.

    The message starts with the dotted path of the offending field (``blend.metric: ...``),
    prefixed with the file's path when the configuration came from a file.
    ``field`` is that dotted path (None when the error is about the file as a whole) and
    ``source`` the file, when known.
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        super().__init__(message)
        self.field = field
        self.source = source


def _error(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", field=path)


def _with_source(err: ConfigError, source: str | None) -> ConfigError:
    if source is None or err.source is not None:
        return err
    new = ConfigError(f"{source}: {err}", field=err.field, source=source)
    return new


# --------------------------------------------------------------------------- types


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    """A human name for a type hint: ``an int``, ``an int or null``, ``a mapping of ...``."""
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [_describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if origin is list:
        (v,) = typing.get_args(tp)
        return f"a list of {_describe(v)}"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value!r} ({type(value).__name__})"


def _mismatch(path: str, tp: Any, value: Any) -> ConfigError:
    return _error(path, f"expected {_describe(tp)}, got {_got(value)}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it (floats and sections converted)."""
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _mismatch(path, tp, value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise _mismatch(path, tp, value)
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section in YAML: all defaults
            return tp()
        if isinstance(value, tp):
            _check_instance(value, path)
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, path)
        raise _mismatch(path, tp, value)
    if value is None:
        raise _error(path, f"expected {_describe(tp)}, got null; this field is not optional")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMERIC_STRING.fullmatch(value.strip()):
            return float(value)
        raise _mismatch(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(path, tp, value)
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise _mismatch(path, tp, value)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise _error(path, f"expected {_describe(tp)}, got key {_got(k)}")
            out[k] = _coerce(v, val_tp, f"{path}.{k}")
        return out
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _mismatch(path, tp, value)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"config: unsupported type hint {tp!r} at {path}")  # a spec.py change


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key(cls: type, key: Any, prefix: str, context: str = "") -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    path = _join(prefix, str(key))
    hint = ""
    close = difflib.get_close_matches(str(key), names, n=1)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif not prefix:
        # A section's field written at the top level, e.g. `epochs:` for `train.epochs`.
        for f in dataclasses.fields(cls):
            sub = _hints(cls)[f.name]
            if dataclasses.is_dataclass(sub) and key in {g.name for g in dataclasses.fields(sub)}:
                hint = f"; did you mean '{f.name}.{key}'?"
                break
    where = f" under {prefix}" if prefix else ""
    return _error(path, f"unknown key{context}{hint or ';'} valid keys{where}: {', '.join(names)}")


def _build(cls: type, raw: Mapping, prefix: str) -> Any:
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise _unknown_key(cls, key, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], _join(prefix, f.name))
    return cls(**kwargs)


def _check_instance(obj: Any, prefix: str) -> None:
    """Type-check the fields of an already-built dataclass (for ``validate``)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        _coerce(getattr(obj, f.name), hints[f.name], _join(prefix, f.name))


# --------------------------------------------------------------------------- values


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_int_min(path: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        what = f"an int >= {low}" + (" or null" if optional else "")
        raise _error(path, f"expected {what}, got {value!r}")


def _check_range(path: str, value: Any, what: str, ok: bool) -> None:
    if not (_is_number(value) and math.isfinite(value) and ok):
        raise _error(path, f"expected {what}, got {value!r}")


def _check_choice(path: str, value: Any, choices: Sequence[str]) -> None:
    if value in choices:
        return
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, list(choices), n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    raise _error(path, f"expected one of {', '.join(choices)}, got {value!r}{hint}")


def _check_nonempty(path: str, value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):
        raise _error(path, f"expected a non-empty string, got {value!r}")


def _check_method(spec: RunSpec, modalities: list[str] | None) -> None:
    method = spec.method
    kind, _, arg = method.partition(":")
    if kind == "uni":
        if not arg:
            raise _error("method", f"{method!r} names no modality; write uni:<modality>")
        if modalities is not None and arg not in modalities:
            raise _error(
                "method",
                f"{method!r} names modality {arg!r}, which the dataset lacks; "
                f"its modalities are {', '.join(modalities)}",
            )
    mods = [arg] if (kind == "uni" and modalities is None) else list(modalities or ())
    try:
        parse_method(method, mods, default_schedule=spec.blend.schedule)
    except ValueError as e:
        msg = str(e)
        raise _error("method", msg[len("method "):] if msg.startswith("method ") else msg) from None


def _check_resources(path: str, resources: dict) -> None:
    for name, amount in resources.items():
        _check_range(f"{path}.{name}", amount, "a number >= 0", _is_number(amount) and amount >= 0)


def validate(spec: RunSpec) -> None:
    """Check every field of ``spec`` for type and range; raise ``ConfigError`` naming it.

    Checks only what can be known without the dataset (``uni:<m>`` is accepted for any
    ``m`` here; ``check_against_dataset`` checks the modality).
    """
    if not isinstance(spec, RunSpec):
        raise ConfigError(f"expected a RunSpec, got {type(spec).__name__}")
    _check_instance(spec, "")

    d = spec.data
    _check_nonempty("data.path", d.path)
    if d.preset is not None:
        _check_nonempty("data.preset", d.preset)
    _check_int_min("data.preset_seed", d.preset_seed, 0)
    _check_range("data.heldout_fraction", d.heldout_fraction, "a number in (0, 1)",
                 _is_number(d.heldout_fraction) and 0 < d.heldout_fraction < 1)
    _check_int_min("data.subset_size", d.subset_size, 1, optional=True)
    _check_range("data.val_fraction", d.val_fraction, "a number in [0, 1)",
                 _is_number(d.val_fraction) and 0 <= d.val_fraction < 1)
    _check_range("data.test_fraction", d.test_fraction, "a number in [0, 1)",
                 _is_number(d.test_fraction) and 0 <= d.test_fraction < 1)
    if not d.val_fraction + d.test_fraction < 1:
        raise _error(
            "data.test_fraction",
            f"data.val_fraction + data.test_fraction must be < 1 (something must be left "
            f"to train on), got {d.val_fraction!r} + {d.test_fraction!r}",
        )

    md = d.media
    for name in ("frames", "stride", "resize", "size", "sample_rate", "n_mels", "mel_frames", "eval_clips",
                 "eval_clip_batch"):
        _check_int_min(f"data.media.{name}", getattr(md, name), 1)
    if md.size > md.resize:
        raise _error("data.media.size", f"the crop ({md.size}) is cut from frames whose short side is "
                                        f"data.media.resize ({md.resize}): lower size or raise resize")
    _check_int_min("data.media.num_workers", md.num_workers, 0)
    _check_choice("data.media.on_bad_sample", md.on_bad_sample, ON_BAD_SAMPLE)
    if md.flow_dir is not None:
        _check_nonempty("data.media.flow_dir", md.flow_dir)

    m = spec.model
    _check_nonempty("model.encoder", m.encoder)
    for name, enc in m.encoders.items():
        _check_nonempty(f"model.encoders.{name}", enc)
    _check_int_min("model.hidden_dim", m.hidden_dim, 1)
    _check_int_min("model.feature_dim", m.feature_dim, 1)
    _check_nonempty("model.fusion", m.fusion)
    _check_int_min("model.fusion_hidden_dim", m.fusion_hidden_dim, 1)
    _check_range("model.dropout", m.dropout, "a number in [0, 1)",
                 _is_number(m.dropout) and 0 <= m.dropout < 1)

    _check_range("model.fusion_dropout", m.fusion_dropout, "a number in [0, 1)",
                 _is_number(m.fusion_dropout) and 0 <= m.fusion_dropout < 1)

    bl = spec.baselines
    _check_range("baselines.dropout", bl.dropout, "a number in [0, 1)",
                 _is_number(bl.dropout) and 0 <= bl.dropout < 1)
    _check_int_min("baselines.pretrain_epochs", bl.pretrain_epochs, 1, optional=True)
    _check_int_min("baselines.patience", bl.patience, 1)

    o = spec.optim
    _check_choice("optim.name", o.name, OPTIMIZERS)
    _check_range("optim.lr", o.lr, "a number > 0", _is_number(o.lr) and o.lr > 0)
    _check_range("optim.momentum", o.momentum, "a number in [0, 1)",
                 _is_number(o.momentum) and 0 <= o.momentum < 1)
    _check_range("optim.weight_decay", o.weight_decay, "a number >= 0",
                 _is_number(o.weight_decay) and o.weight_decay >= 0)
    _check_choice("optim.lr_schedule", o.lr_schedule, LR_SCHEDULES)

    t = spec.train
    _check_int_min("train.epochs", t.epochs, 1)
    _check_int_min("train.batch_size", t.batch_size, 1)
    _check_int_min("train.eval_batch_size", t.eval_batch_size, 1)
    _check_nonempty("train.device", t.device)
    _check_int_min("train.threads", t.threads, 1, optional=True)

    b = spec.blend
    _check_choice("blend.schedule", b.schedule, SCHEDULES)
    _check_int_min("blend.warmup_epochs", b.warmup_epochs, 1)
    _check_int_min("blend.super_epoch", b.super_epoch, 1)
    _check_int_min("blend.probe_epochs", b.probe_epochs, 1, optional=True)
    _check_choice("blend.metric", b.metric, METRICS)
    _check_range("blend.eps", b.eps, "a number >= 0", _is_number(b.eps) and b.eps >= 0)
    _check_choice("blend.safeguard", b.safeguard, SAFEGUARDS)
    _check_range("blend.floor", b.floor, "a number in [0, 1]",
                 _is_number(b.floor) and 0 <= b.floor <= 1)

    tr = spec.trainer
    _check_int_min("trainer.num_workers", tr.num_workers, 1)
    _check_int_min("trainer.max_failures", tr.max_failures, -1)
    _check_resources("trainer.resources_per_worker", tr.resources_per_worker)
    p = spec.probes
    _check_choice("probes.mode", p.mode, PROBE_MODES)
    _check_resources("probes.resources", p.resources)
    _check_int_min("probes.max_concurrent", p.max_concurrent, 1, optional=True)

    _check_choice("tracking.backend", spec.tracking.backend, TRACKING_BACKENDS)
    _check_nonempty("tracking.project", spec.tracking.project)
    if spec.tracking.mode is not None:
        _check_choice("tracking.mode", spec.tracking.mode, ("online", "offline", "disabled"))

    _check_method(spec, None)
    _check_int_min("seed", spec.seed, 0)
    if spec.name is not None:
        _check_nonempty("name", spec.name)


def check_against_dataset(spec: RunSpec, modalities: list[str]) -> None:
    """Check the parts of ``spec`` that depend on the dataset's modalities."""
    modalities = list(modalities)
    for name in spec.data.modalities or ():
        if name not in modalities:
            raise _error("data.modalities",
                         f"the dataset has no modality {name!r}; its modalities are {', '.join(modalities)}")
    if spec.data.modalities:
        modalities = list(spec.data.modalities)
    _check_method(spec, modalities)
    for field_name in ("encoders", "weights"):
        for name in getattr(spec.model, field_name):
            if name not in modalities:
                raise _error(
                    f"model.{field_name}.{name}",
                    f"the dataset has no modality {name!r}; its modalities are {', '.join(modalities)}",
                )


# --------------------------------------------------------------------------- dicts


def spec_from_dict(raw: dict, *, source: str | None = None) -> RunSpec:
    """Build and validate a ``RunSpec`` from a plain mapping (a parsed YAML file).

    Missing keys take the defaults of ``spec.py``. ``source`` (a file name) prefixes
    every error message.
    """
    try:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"top level must be a mapping of sections, got {_got(raw)}")
        spec = _build(RunSpec, raw, "")
        validate(spec)
    except ConfigError as e:
        raise _with_source(e, source) from None
    return spec


def spec_to_dict(spec: RunSpec) -> dict:
    """The plain-dict form of ``spec`` (``dataclasses.asdict``), loadable by ``spec_from_dict``."""
    return dataclasses.asdict(spec)


# --------------------------------------------------------------------------- overrides


def _split_override(item: Any) -> tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(
            f"override {item!r}: expected the form key=value, e.g. blend.warmup_epochs=5"
        )
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(
            f"override {item!r}: expected the form key=value with a dotted key, "
            "e.g. blend.warmup_epochs=5"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _error(key, f"cannot parse the value of override {item!r} as YAML: {e}") from None
    return key, value


def apply_overrides(raw: dict, overrides: Sequence[str] = ()) -> dict:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override applied.

    Values are parsed with ``yaml.safe_load`` (``3`` is an int, ``0.1`` a float, ``true``
    a bool, ``null`` None, ``[a, b]`` a list). The dotted key must name a field of
    ``RunSpec`` (or an entry of a mapping field, e.g. ``model.encoders.audio=mlp``).
    Types and values are checked later, by ``spec_from_dict``.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(raw)) if raw is not None else {}
    for item in overrides:
        key, value = _split_override(item)
        parts = key.split(".")
        cls: Any = RunSpec
        node: dict = out
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if cls is None:  # inside a free mapping field (dict[str, str])
                if not last:
                    raise _error(here, f"{'.'.join(parts[:i])} holds plain values, not sections "
                                       f"(override {item!r})")
                node[part] = value
                break
            names = {f.name for f in dataclasses.fields(cls)}
            if part not in names:
                raise _unknown_key(cls, part, ".".join(parts[:i]), context=f" (override {item!r})")
            if last:
                node[part] = value
                break
            tp = _hints(cls)[part]
            if dataclasses.is_dataclass(tp):
                cls = tp
            elif typing.get_origin(tp) is dict:
                cls = None
            else:
                raise _error(
                    ".".join(parts[: i + 2]),
                    f"unknown key (override {item!r}): {here} is {_describe(tp)}, not a section",
                )
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise _error(here, f"expected a mapping to apply override {item!r} under, "
                                   f"got {_got(child)}")
            node = child
    return out


# --------------------------------------------------------------------------- files


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file", source=str(path)) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e}", source=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}", source=str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections (data, model, optim, train, "
            f"blend, method, seed, name, sweep), got {_got(raw)}",
            source=str(path),
        )
    return raw


def _paths_in(raw: dict) -> list[tuple[dict, str]]:
    """The (section, key) of every path field: ``data.path``, ``data.media.flow_dir`` and
    each ``model.weights.<modality>``."""
    data = raw.get("data")
    if not isinstance(data, dict):
        data = {}
    found = [(data, "path")]
    if isinstance(data.get("media"), dict):
        found.append((data["media"], "flow_dir"))
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("weights"), dict):
        found += [(model["weights"], m) for m in model["weights"]]
    return [(section, key) for section, key in found if isinstance(section.get(key), str) and section[key].strip()]


def _resolve_data_path(raw: dict, base: Path) -> None:
    for section, key in _paths_in(raw):
        expanded = Path(os.path.expanduser(section[key]))
        if not expanded.is_absolute():
            expanded = base / expanded
        section[key] = os.path.abspath(expanded)


def _resolve_override_path(raw: dict) -> None:
    for section, key in _paths_in(raw):
        section[key] = os.path.abspath(os.path.expanduser(section[key]))


def load_config_with_sweep(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[RunSpec, dict | None]:
    """Load a YAML file to a validated ``RunSpec`` and its ``sweep:`` section (None if absent).

    Every error is a ``ConfigError`` whose message starts with the file's path.
    """
    path = Path(path)
    source = str(path)
    raw = _read_yaml(path)
    sweep = raw.pop(SWEEP_KEY, None)
    if sweep is not None and not isinstance(sweep, dict):
        raise ConfigError(f"{source}: {SWEEP_KEY}: expected a mapping, got {_got(sweep)}",
                          field=SWEEP_KEY, source=source)
    _resolve_data_path(raw, Path(os.path.abspath(path)).parent)
    try:
        raw = apply_overrides(raw, overrides)
    except ConfigError as e:
        raise _with_source(e, source) from None
    _resolve_override_path(raw)  # the file's own paths are absolute already
    spec = spec_from_dict(raw, source=source)
    return spec, sweep


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunSpec:
    """Load a YAML file to a validated ``RunSpec``, ignoring any ``sweep:`` section."""
    return load_config_with_sweep(path, overrides)[0]


def dump_config(spec: RunSpec, path: str | Path) -> Path:
    """Write ``spec`` as YAML that ``load_config`` reads back to an equal ``RunSpec``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=False))
    return path

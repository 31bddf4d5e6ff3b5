"""YAML files and ``--set`` overrides to a validated ``RunSpec``, and back to YAML.

A top-level ``sweep:`` section is allowed in a file; ``load_config`` ignores it and
``load_config_with_sweep`` returns it, unchecked, for the sweep layer to read.

A relative ``data.path``, ``data.media.flow_dir`` or ``model.weights.<modality>`` written
in a file is resolved against that file's directory; one given by an override is
resolved against the current directory.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...core.spec import RunSpec
from .schema import (
    ConfigError,
    build_section,
    describe_type,
    describe_value,
    field_error,
    type_hints,
    unknown_key,
    with_source,
)
from .validation import validate

SWEEP_KEY = "sweep"
"""The top-level section holding a sweep definition, read by ``load_config_with_sweep``."""


def spec_from_dict(raw: dict, *, source: str | None = None) -> RunSpec:
    """Build and validate a ``RunSpec`` from a plain mapping (a parsed YAML file).

    Missing keys take the defaults of ``spec.py``. ``source`` (a file name) prefixes
    every error message.
    """
    try:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"top level must be a mapping of sections, got {describe_value(raw)}")
        spec = build_section(RunSpec, raw, "")
        validate(spec)
    except ConfigError as e:
        raise with_source(e, source) from None
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
        raise field_error(key, f"cannot parse the value of override {item!r} as YAML: {e}") from None
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
                    raise field_error(here, f"{'.'.join(parts[:i])} holds plain values, not sections "
                                       f"(override {item!r})")
                node[part] = value
                break
            names = {f.name for f in dataclasses.fields(cls)}
            if part not in names:
                raise unknown_key(cls, part, ".".join(parts[:i]), context=f" (override {item!r})")
            if last:
                node[part] = value
                break
            tp = type_hints(cls)[part]
            if dataclasses.is_dataclass(tp):
                cls = tp
            elif typing.get_origin(tp) is dict:
                cls = None
            else:
                raise field_error(
                    ".".join(parts[: i + 2]),
                    f"unknown key (override {item!r}): {here} is {describe_type(tp)}, not a section",
                )
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise field_error(here, f"expected a mapping to apply override {item!r} under, "
                                   f"got {describe_value(child)}")
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
            f"blend, method, seed, name, sweep), got {describe_value(raw)}",
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


def _fill_preset(raw: dict, source: str) -> None:
    """``{preset}`` in ``data.path`` becomes ``data.preset`` (after the overrides), so that
    one config serves every set of a suite: ``--set data.preset=mfeat`` alone moves it."""
    data = raw.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or "{preset}" not in data["path"]:
        return
    preset = data.get("preset")
    if not isinstance(preset, str) or not preset.strip():
        raise ConfigError(f"{source}: data.path: {data['path']!r} names {{preset}}, but data.preset is not set; "
                          "set it (e.g. --set data.preset=mfeat) or write the path out",
                          field="data.path", source=source)
    data["path"] = data["path"].replace("{preset}", preset)


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
        raise ConfigError(f"{source}: {SWEEP_KEY}: expected a mapping, got {describe_value(sweep)}",
                          field=SWEEP_KEY, source=source)
    _resolve_data_path(raw, Path(os.path.abspath(path)).parent)
    try:
        raw = apply_overrides(raw, overrides)
    except ConfigError as e:
        raise with_source(e, source) from None
    _resolve_override_path(raw)  # the file's own paths are absolute already
    _fill_preset(raw, source)
    spec = spec_from_dict(raw, source=source)
    return spec, sweep


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunSpec:
    """Load a YAML file to a validated ``RunSpec``, ignoring any ``sweep:`` section."""
    return load_config_with_sweep(path, overrides)[0]


def config_yaml(spec: RunSpec) -> str:
    """``spec`` as YAML that ``load_config`` reads back to an equal ``RunSpec``."""
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=False)


def dump_config(spec: RunSpec, path: str | Path) -> Path:
    """Write ``config_yaml(spec)`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(spec))
    return path

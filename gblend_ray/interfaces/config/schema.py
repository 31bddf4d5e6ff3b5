"""The config's types: a mapping (parsed YAML) checked against the ``RunSpec``
dataclasses and their type hints, with errors that name the dotted field.

Parsing is generic: it walks ``dataclasses.fields`` of the classes in ``core/spec.py`` and
their type hints, so a field added to the spec is loadable, overridable and type-checked
without touching this module (its range check, if any, goes in ``validation.py``).

Type rules: ``int`` accepts ints but not booleans; ``float`` accepts ints and floats
(and numeric strings such as ``1e-8``, which YAML 1.1 reads as a string), not booleans;
``str`` accepts strings only; a ``Literal`` one of its values (with a "did you mean"
for a near miss); ``None`` (YAML ``null``) is accepted only for Optional fields;
``dict[str, str]`` needs string keys and values. A section written empty (``blend:``
with nothing under it) means all of its defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

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


def field_error(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", field=path)


def with_source(err: ConfigError, source: str | None) -> ConfigError:
    if source is None or err.source is not None:
        return err
    new = ConfigError(f"{source}: {err}", field=err.field, source=source)
    return new


def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """A human name for a type hint: ``an int``, ``an int or null``, ``a mapping of ...``."""
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [describe_type(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
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
        return f"a mapping of {describe_type(k)} to {describe_type(v)}"
    if origin is list:
        (v,) = typing.get_args(tp)
        return f"a list of {describe_type(v)}"
    return getattr(tp, "__name__", str(tp))


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value!r} ({type(value).__name__})"


def _mismatch(path: str, tp: Any, value: Any) -> ConfigError:
    return field_error(path, f"expected {describe_type(tp)}, got {describe_value(value)}")


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
            check_types(value, path)
            return value
        if isinstance(value, Mapping):
            return build_section(tp, value, path)
        raise _mismatch(path, tp, value)
    if value is None:
        raise field_error(path, f"expected {describe_type(tp)}, got null; this field is not optional")
    if typing.get_origin(tp) is Literal:
        _check_choice(path, value, typing.get_args(tp))
        return value
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
                raise field_error(path, f"expected {describe_type(tp)}, got key {describe_value(k)}")
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


def unknown_key(cls: type, key: Any, prefix: str, context: str = "") -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    path = _join(prefix, str(key))
    hint = ""
    close = difflib.get_close_matches(str(key), names, n=1)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif not prefix:
        # A section's field written at the top level, e.g. `epochs:` for `train.epochs`.
        for f in dataclasses.fields(cls):
            sub = type_hints(cls)[f.name]
            if dataclasses.is_dataclass(sub) and key in {g.name for g in dataclasses.fields(sub)}:
                hint = f"; did you mean '{f.name}.{key}'?"
                break
    where = f" under {prefix}" if prefix else ""
    return field_error(path, f"unknown key{context}{hint or ';'} valid keys{where}: {', '.join(names)}")


def build_section(cls: type, raw: Mapping, prefix: str) -> Any:
    hints = type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise unknown_key(cls, key, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], _join(prefix, f.name))
    return cls(**kwargs)


def check_types(obj: Any, prefix: str) -> None:
    """Type-check the fields of an already-built dataclass (for ``validate``)."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _coerce(getattr(obj, f.name), hints[f.name], _join(prefix, f.name))


def _check_choice(path: str, value: Any, choices: Sequence[str]) -> None:
    if value in choices:
        return
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, list(choices), n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    raise field_error(path, f"expected one of {', '.join(choices)}, got {value!r}{hint}")

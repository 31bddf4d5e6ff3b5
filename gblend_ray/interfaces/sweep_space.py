"""A sweep space file's ``sweep:`` section, made ready on the driver before any trial
starts: ``--set sweep.…`` keys applied, relative data paths resolved against the space
file, and every trial's config loaded and checked against its own data set (so that a
bad key is one error now, not a sweep of failed trials)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from pathlib import Path

import yaml

from ..data.loading import ensure_dataset
from .config import ConfigError, apply_overrides, check_against_dataset, spec_from_dict, spec_to_dict


def set_sweep_keys(sweep: dict, overrides: list[str]) -> dict:
    """``--set sweep.a.b=value`` on the space's sweep section (values parsed as YAML)."""
    sweep = copy.deepcopy(sweep)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected the form sweep.key=value")
        *path, last = key.split(".")[1:]
        node = sweep
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section of sweep")
        node[last] = yaml.safe_load(value)
    return sweep


def resolve_trial_paths(sweep: dict, base: Path) -> dict:
    """A relative ``data.path`` in the space's cases or grid, like one in its run config, is
    relative to the space file's directory."""
    def fix(value):
        if isinstance(value, str) and value.strip() and not Path(os.path.expanduser(value)).is_absolute():
            return os.path.abspath(base / value)
        return value

    sweep = copy.deepcopy(sweep)
    for case in sweep.get("cases") or []:
        if isinstance(case, dict) and "data.path" in case:
            case["data.path"] = fix(case["data.path"])
    grid = sweep.get("grid") or {}
    if isinstance(grid, dict) and "data.path" in grid:
        grid["data.path"] = [fix(v) for v in grid["data.path"]] if isinstance(grid["data.path"], list) \
            else fix(grid["data.path"])
    return sweep


def check_trials(base, sweep: dict, source: str) -> int:
    """Every trial's config must load before the first one starts: a bad key or method in
    the space is one clear error now, not a sweep of failed trials. Each trial is checked
    against its own data set (a preset a trial names is written here, once, before trials
    race to it). Returns the most modalities a trial's data set has."""
    grid = sweep.get("grid") or {}
    keys = list(grid)
    modalities_of: dict[str, list[str]] = {}
    for case in sweep.get("cases") or [{}]:
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            overrides = {**case, **dict(zip(keys, values))}
            items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
            try:
                spec = spec_from_dict(apply_overrides(spec_to_dict(base), items))
                if spec.data.path not in modalities_of:
                    whole = dataclasses.replace(spec, data=dataclasses.replace(spec.data, modalities=None))
                    modalities_of[spec.data.path] = list(ensure_dataset(whole).modalities)
                check_against_dataset(spec, modalities_of[spec.data.path])
            except ConfigError as err:
                raise ConfigError(f"{source}: sweep trial {overrides}: {err}") from None
    return max(len(m) for m in modalities_of.values())

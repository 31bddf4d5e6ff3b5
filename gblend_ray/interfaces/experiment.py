"""A prepared run: its spec, its run directory and its tracker, from a config and
overrides. ``gblend run``, ``gblend compare`` and every sweep trial start runs this way,
so each run directory holds the same files (``config.yaml``, the local metric mirror,
W&B's files) whichever command made it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from ..core.spec import RunSpec
from ..training.assembly import RunObserver
from .config import apply_overrides, dump_config, spec_from_dict, spec_to_dict


def run_name(spec: RunSpec) -> str:
    mods = f"[{'+'.join(spec.data.modalities)}]" if spec.data.modalities else ""
    return spec.name or f"{spec.method}{mods}-seed{spec.seed}"


class Observers:
    """Several observers as one (tracking, progress)."""

    def __init__(self, *observers: RunObserver):
        self.observers = observers

    def on_epoch(self, record: dict) -> None:
        for o in self.observers:
            o.on_epoch(record)

    def on_round(self, record: dict) -> None:
        for o in self.observers:
            o.on_round(record)

    def on_end(self, results: dict) -> None:
        for o in self.observers:
            o.on_end(results)


def prepare(spec: RunSpec, run_dir: str | Path, progress: bool = True) -> tuple[RunSpec, RunObserver]:
    """Write ``config.yaml`` into ``run_dir`` and make the run's observers: its tracker
    (local mirror, W&B) and, unless ``progress`` is off, its progress lines."""
    from .progress import ProgressPrinter
    from .tracking import RunTracker

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(spec, run_dir / "config.yaml")
    observers: list[RunObserver] = [RunTracker(run_dir, spec.tracking, run_name(spec), spec_to_dict(spec))]
    if progress:
        observers.append(ProgressPrinter(run_name(spec), spec.train.epochs))
    return spec, Observers(*observers)


def prepare_trial(overrides: dict, run_dir: Path, base: dict, group: str) -> tuple[RunSpec, RunObserver | None]:
    """A sweep trial: the space's base config with the trial's dotted overrides; its runs
    are grouped under the sweep's name in W&B."""
    raw = apply_overrides(copy.deepcopy(base), [f"{k}={_yaml_value(v)}" for k, v in overrides.items()])
    spec = spec_from_dict(raw)
    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, group=group))
    return prepare(spec, run_dir, progress=False)  # Tune's progress table speaks for a sweep


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

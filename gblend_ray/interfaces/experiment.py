"""A prepared run: its spec, its claimed run directory and its observers, from a config
and overrides. ``gblend run``, ``gblend compare`` and every sweep trial start runs this
way, so each run directory holds the same files (``run.json``, ``config.yaml``, the
local metric mirror, W&B's files) whichever command made it, and is refused, resumed or
reused by the same rules.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core.spec import RunSpec
from ..storage.rundir import CONFIG, ERROR, RESULTS, TRAJECTORY, Claim, RunDir
from ..training.assembly import RunObserver
from .config import apply_overrides, config_yaml, spec_from_dict, spec_to_dict


def run_name(spec: RunSpec) -> str:
    mods = f"[{'+'.join(spec.data.modalities)}]" if spec.data.modalities else ""
    return spec.name or f"{spec.method}{mods}-seed{spec.seed}"


class Observers:
    """Several observers as one (tracking, progress)."""

    def __init__(self, *observers: RunObserver):
        self.observers = observers

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None:
        for o in self.observers:
            o.on_resume(epoch, history, rounds)

    def on_epoch(self, record: dict) -> None:
        for o in self.observers:
            o.on_epoch(record)

    def on_round(self, record: dict) -> None:
        for o in self.observers:
            o.on_round(record)

    def on_end(self, results: dict) -> None:
        for o in self.observers:
            o.on_end(results)


@dataclass
class PreparedRun:
    """A run directory claimed for a spec: ``claim`` says whether the run starts, resumes
    or is already finished (then there is no observer and ``results`` reads it back)."""

    spec: RunSpec
    run: RunDir
    claim: Claim
    observer: RunObserver | None

    @property
    def resume(self) -> bool:
        return self.claim == "resume"

    def results(self) -> dict:
        return {**self.run.read_json(RESULTS), "trajectory": self.run.read_json(TRAJECTORY, [])}


def open_run(spec: RunSpec, where: str | Path | RunDir, *, resume: bool = False, overwrite: bool = False,
             progress: bool = True, verbose: bool = False) -> PreparedRun:
    """Claim ``where`` for ``spec`` (``RunDir.claim``: raises ``RunDirError`` when the
    directory holds another run, or this one unfinished without ``resume``), record the
    run's identity and ``config.yaml``, and make its observers: its tracker (the mirror,
    W&B) and, unless ``progress`` is off, its progress (a bar on a terminal; a line per
    epoch too when ``verbose``)."""
    from .progress import ProgressPrinter
    from .tracking import RunTracker

    run = where if isinstance(where, RunDir) else RunDir(where)
    config = spec_to_dict(spec)
    claim = run.claim(config, resume=resume, overwrite=overwrite)
    if claim == "finished":
        return PreparedRun(spec, run, claim, None)
    if claim == "start":
        run.start(config)
        (run / CONFIG).write_text(config_yaml(spec))
    else:
        run.resume()
    (run / ERROR).remove()  # an earlier attempt's failure
    observers: list[RunObserver] = [RunTracker(run, spec.tracking, run_name(spec), config)]
    if progress:
        observers.append(ProgressPrinter(run_name(spec), spec.train.epochs, every_epoch=verbose))
    return PreparedRun(spec, run, claim, Observers(*observers))


def trial_spec(base: dict, overrides: dict, group: str) -> RunSpec:
    """The spec of a sweep trial or a compare run: the base config with its dotted
    overrides, in the W&B group ``group``. Built the same way in the driver and in the
    trial, so both claim the run directory for the same config."""
    raw = apply_overrides(copy.deepcopy(base), [f"{k}={yaml_value(v)}" for k, v in overrides.items()])
    spec = spec_from_dict(raw)
    return dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, group=group))


def prepare_trial(overrides: dict, run_dir: str, resume: bool, *, base: dict, group: str) -> PreparedRun:
    """A sweep trial: the space's base config with the trial's dotted overrides; its runs
    are grouped under the sweep's name in W&B. ``resume`` (a resumed sweep) continues an
    unfinished trial's run."""
    # the sweep's own lines speak for it
    return open_run(trial_spec(base, overrides, group), run_dir, resume=resume, progress=False)


def yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

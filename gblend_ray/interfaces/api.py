"""The Python API: G-Blend runs from code, as Ray users write them.

- ``load_spec(path, overrides)``: a config file (and ``--set``-style overrides) as a
  validated ``RunSpec``.
- ``GBlendTrainer(spec, scaling_config=..., run_config=...).fit()``: one run on the Ray
  cluster (``ray.init()`` first, or the local cluster it starts), returning Ray Train's
  ``Result``: its final checkpoint, its path, and the final report's metrics (the test
  metrics, ``test/<metric>``, and ``history``: every epoch's ``val/...`` and
  ``weights/...``). The run directory holds what ``gblend run`` writes (results,
  trajectory, the metric mirror, W&B files), and follows its rules (a used directory is
  refused unless ``resume`` or ``overwrite``).
- ``trainable(spec)``: a Ray Tune function trainable; a trial's config holds dotted
  config keys (``{"method": ..., "optim.lr": ...}``, as ``--set`` takes them); each trial
  is one whole run in the trial's directory, reporting every epoch's ``val/...`` metrics
  and, at the end, its ``test/...`` ones.

Encoders and fusions registered in the calling process (``@register_encoder("my_net")``)
reach every Ray worker and probe trial: they are pickled by value when defined in a
script or notebook; defined in a module, that module must be importable on the workers
(the job's working directory, or ``ray.init(runtime_env={"py_modules": [...]})``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

from ..core.spec import RunSpec
from ..storage.location import resolve
from .config import apply_overrides, load_config, spec_from_dict, spec_to_dict
from .experiment import open_run, run_name, yaml_value


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> RunSpec:
    """The run spec of a config file with ``key=value`` overrides (dotted keys), checked
    as ``gblend run`` checks it (``ConfigError`` names the field)."""
    return load_config(str(path), list(overrides))


class GBlendTrainer:
    """One G-Blend (or baseline) run on Ray Train, with the run's probe trials on Ray Tune.

    ``scaling_config`` (a ``ray.train.ScalingConfig``) replaces the spec's ``trainer:``
    workers, GPU use and resources per worker; ``run_config`` (a ``ray.train.RunConfig``)
    names the run directory: ``storage_path/name`` (a local path or a storage URI),
    default ``runs/<method>-seed<seed>``."""

    def __init__(self, spec: RunSpec, *, scaling_config=None, run_config=None, resume: bool = False,
                 overwrite: bool = False):
        if scaling_config is not None:
            trainer = dataclasses.replace(
                spec.trainer, num_workers=int(scaling_config.num_workers), use_gpu=bool(scaling_config.use_gpu),
                resources_per_worker=dict(scaling_config.resources_per_worker
                                          or {"GPU" if scaling_config.use_gpu else "CPU": 1}))
            spec = dataclasses.replace(spec, trainer=trainer)
        self.spec = spec
        root = getattr(run_config, "storage_path", None) or "runs"
        name = getattr(run_config, "name", None) or run_name(spec)
        self.run_dir = (resolve(root) / name).uri
        self.resume, self.overwrite = resume, overwrite

    def fit(self):
        """Train the run; return its ``ray.train.Result``."""
        from ..distributed.ray_runner import fit_on_ray

        prepared = open_run(self.spec, self.run_dir, resume=self.resume, overwrite=self.overwrite, progress=False)
        if prepared.claim == "finished":
            raise ValueError(f"{self.run_dir} holds this run, finished: read its results.json, or pass "
                             "overwrite=True to train it again")
        _, result = fit_on_ray(self.spec, prepared.run, observer=prepared.observer, resume=prepared.resume)
        return result


def trainable(spec: RunSpec, *, engine: str = "inline"):
    """A function trainable for ``ray.tune.Tuner``: each trial is ``spec`` with the trial's
    config applied as dotted overrides, trained in the trial's directory (``engine``:
    ``inline``, in the trial's process; ``ray``, on Ray Train inside the trial)."""
    from ..training.assembly import extensions

    return functools.partial(_trial, base=spec_to_dict(spec), engine=engine, ext=extensions())


def _trial(config: dict, base: dict, engine: str, ext: dict) -> None:
    from ray import tune

    from ..distributed.sweep import run_trial
    from ..training.assembly import adopt_extensions

    adopt_extensions(ext)
    items = [f"{k}={yaml_value(v)}" for k, v in config.items()]
    spec = spec_from_dict(apply_overrides(copy.deepcopy(base), items))
    where = Path(tune.get_context().get_trial_dir()) / "run"
    run_trial(open_run(spec, where, resume=True, progress=False), engine)


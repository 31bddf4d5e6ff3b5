"""gblend_ray: multi-modal classifiers trained with Gradient-Blending (Wang, Tran,
Feiszli, CVPR 2020), distributed on Ray.

The package is four layers, each importing only from those below it in this list's
reverse order (``pyproject.toml``'s import-linter contract enforces it):

- ``core``: the math and the run specification (no torch, no Ray);
- ``storage``: where a run's files live (a local path or a storage URI, through one
  pyarrow filesystem) and the run directory's layout and identity;
- ``data``: array and media data sets, the G-Blend splits, the sources the engine reads;
- ``training``: encoders, fusions, the multi-head model, the engine (the one training
  loop), probes, checkpoints, run assembly, the in-process runner (PyTorch, no Ray);
- ``distributed``: Ray Train, the Ray Tune probe trials, the coordinator, sweeps;
- ``interfaces``: config, CLI, tracking, progress, reports.

The public names below are imported on first use, so ``import gblend_ray`` loads
neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunSpec": "gblend_ray.core.spec",
    "Measurement": "gblend_ray.core.blend",
    "estimate": "gblend_ray.core.blend",
    "ConfigError": "gblend_ray.interfaces.config",
    "load_config": "gblend_ray.interfaces.config",
    "Dataset": "gblend_ray.data.arrays",
    "load_dataset": "gblend_ray.data.arrays",
    "save_dataset": "gblend_ray.data.arrays",
    "register_encoder": "gblend_ray.training.encoders",
    "register_fusion": "gblend_ray.training.fusion",
    "run_inline": "gblend_ray.training.runner",
    "run_on_ray": "gblend_ray.distributed.ray_runner",
    "write_report": "gblend_ray.interfaces.report",
    "load_spec": "gblend_ray.interfaces.api",
    "GBlendTrainer": "gblend_ray.interfaces.api",
    "trainable": "gblend_ray.interfaces.api",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gblend_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

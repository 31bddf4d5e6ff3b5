"""The config: YAML files and ``--set`` overrides to a validated ``RunSpec``.

Everything a run reads is checked at load time, so that a typo or an impossible value
fails before any data is loaded or any worker is started, with a message that names the
offending field by its dotted path::

    configs/run.yaml: blend.warmup_epochs: expected an int >= 1, got -3
    configs/run.yaml: blend.warmup_epoch: unknown key; did you mean 'warmup_epochs'? valid keys under blend: ...

``schema`` checks types against the ``core/spec.py`` dataclasses, ``validation`` checks
ranges, ``loading`` reads files and applies overrides. No torch and no Ray here.
"""

from .loading import (
    SWEEP_KEY,
    apply_overrides,
    config_yaml,
    dump_config,
    load_config,
    load_config_with_sweep,
    spec_from_dict,
    spec_to_dict,
)
from .schema import ConfigError
from .validation import check_against_dataset, check_engine, validate

__all__ = [
    "ConfigError",
    "SWEEP_KEY",
    "apply_overrides",
    "config_yaml",
    "check_against_dataset",
    "check_engine",
    "dump_config",
    "load_config",
    "load_config_with_sweep",
    "spec_from_dict",
    "spec_to_dict",
    "validate",
]

"""A balancing method's own quantities in the report: what each step computed, as the
run's history logged it per epoch under the method's namespace (``ogm_ge/k/<modality>``,
``pmr/rho/<modality>``, ``agm/kappa/<modality>``, ``mmpareto/cos/<modality>``, ...).

A table row shows each quantity's mean over the epochs and seeds; ``plots.plot_quantities``
its mean over seeds at every epoch. Standard library and numpy only, as the rest of ``report``.
"""

from __future__ import annotations

import numpy as np

from ...core.plan import BALANCING
from .runs import RunRecord, method_kind

_PERCENT = ("slowed", "proto_loss", "conflict", "clipped")
"""Quantities that are a share of the epoch's steps (shown as %)."""


def _split(key: str, namespace: str) -> tuple[str, str] | None:
    """``(quantity, modality)`` of a history key in ``namespace`` (modality "" for a
    quantity of the whole step, e.g. ``agm/clipped``), or None."""
    parts = key.split("/")
    if parts[0] != namespace or len(parts) not in (2, 3):
        return None
    return (parts[1], parts[2] if len(parts) == 3 else "")


def series(runs: list[RunRecord]) -> dict[tuple[str, str], list[dict[int, float]]]:
    """Per (quantity, modality): each run's value at every epoch of its history."""
    out: dict[tuple[str, str], list[dict[int, float]]] = {}
    for r in runs:
        if not r.ok or method_kind(r.method) not in BALANCING:
            continue
        per_run: dict[tuple[str, str], dict[int, float]] = {}
        for record in r.results.get("history") or []:
            for key, value in record.items():
                where = _split(key, method_kind(r.method))
                if where is not None and isinstance(value, (int, float)):
                    per_run.setdefault(where, {})[int(record.get("epoch", 0))] = float(value)
        for where, by_epoch in per_run.items():
            out.setdefault(where, []).append(by_epoch)
    return out


def quantities(runs: list[RunRecord]) -> dict[str, dict[str, float]]:
    """Per quantity, per modality: the mean over every epoch of every ok run (seeds)."""
    out: dict[str, dict[str, float]] = {}
    for (q, m), per_run in series(runs).items():
        values = [v for by_epoch in per_run for v in by_epoch.values()]
        if values:
            out.setdefault(q, {})[m] = float(np.mean(values))
    return out


def quantities_text(q: dict[str, dict[str, float]]) -> str:
    """``k [video,audio]=[0.42,1.00]; slowed [video,audio]=[97%,0%]``; "" without any."""
    parts = []
    for name, by_modality in q.items():
        shown = [f"{100 * v:.0f}%" if name in _PERCENT else f"{v:.3g}" for v in by_modality.values()]
        mods = [m for m in by_modality if m]
        parts.append(f"{name} [{','.join(mods)}]=[{','.join(shown)}]" if mods else f"{name} {shown[0]}")
    return "; ".join(parts)

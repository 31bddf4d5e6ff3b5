"""``gblend compare``: several methods × seeds on one config, summarised.

Each run goes to ``OUT/<method>/seed<k>/`` (``results.json``, ``trajectory.json``);
``OUT/summary.json`` maps each method to the mean, standard deviation and per-seed
values of its prediction head's test top-1 accuracy.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from ..core.metrics import LABELS, headline
from ..core.spec import RunSpec

RunFn = Callable[[RunSpec, Path], dict]


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method.replace(":", "_") / f"seed{seed}"


def compare(spec: RunSpec, methods: list[str], seeds: list[int], out: str | Path, run: RunFn,
            log: Callable[[str], None] = print) -> dict:
    """Run every (method, seed) with ``run`` and write ``summary.json``; return the summary."""
    out = Path(out)
    summary: dict[str, dict] = {}
    for method in methods:
        accs = []
        for seed in seeds:
            s = copy.deepcopy(spec)
            s.method, s.seed = method, seed
            result = run(s, run_dir(out, method, seed))
            metric = headline(result["test"])[0]
            accs.append(result["test"][metric])
            log(f"{method:<16} seed {seed}: test {LABELS[metric]} {100 * accs[-1]:.1f}%  ({result['seconds']:.1f} s)")
        summary[method] = {
            "metric": metric,
            "mean": statistics.fmean(accs),
            "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "runs": accs,
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_table(summary: dict) -> str:
    """The test metric per method (top-1, or video top-1, or mAP), mean ± std over seeds,
    as a plain-text table."""
    metrics = {s.get("metric", "top1") for s in summary.values()}
    label = LABELS[metrics.pop()] if len(metrics) == 1 else "metric"
    rows = [f"{'method':<18}{f'test {label} (%)':>18}   seeds"]
    for method, s in summary.items():
        per_seed = " ".join(f"{100 * a:.1f}" for a in s["runs"])
        rows.append(f"{method:<18}{100 * s['mean']:>10.1f} ± {100 * s['std']:<5.1f}   {per_seed}")
    return "\n".join(rows)

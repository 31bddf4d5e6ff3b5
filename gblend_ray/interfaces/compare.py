"""``gblend compare``: several methods × seeds on one config, summarised.

Each run goes to ``OUT/<method>/seed<k>/`` (a run directory: ``results.json``,
``trajectory.json``, ...); ``OUT/summary.json`` maps each method to the mean, standard
deviation and per-seed values of its prediction head's test metric. Every run
directory is claimed before the first run starts (so a compare into a directory of
other runs is refused at once); a run that finished before is read back, an
interrupted one resumes (``--resume``), and a run that fails is recorded and the others
go on.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from pathlib import Path

from ..core.metrics import LABELS, headline
from ..core.spec import RunSpec
from ..storage.location import Location, resolve
from .experiment import PreparedRun, open_run

RunFn = Callable[[PreparedRun], dict]
"""Runs a prepared run that is not finished; returns its results (raises if it failed)."""


def run_dir(out: str | Path | Location, method: str, seed: int) -> Location:
    return resolve(out) / method.replace(":", "_") / f"seed{seed}"


def prepare_runs(spec: RunSpec, methods: list[str], seeds: list[int], out: str | Path | Location, *,
                 resume: bool = False, overwrite: bool = False) -> list[PreparedRun]:
    """Claim every (method, seed)'s run directory (``experiment.open_run``), in order."""
    prepared = []
    for method in methods:
        for seed in seeds:
            s = copy.deepcopy(spec)
            s.method, s.seed = method, seed
            # one W&B group per compare, as a sweep's runs share theirs
            s.tracking.group = s.tracking.group or resolve(out).name
            prepared.append(open_run(s, run_dir(out, method, seed), resume=resume, overwrite=overwrite))
    return prepared


def compare(prepared: list[PreparedRun], out: str | Path | Location, run: RunFn,
            log: Callable[[str], None] = print, on_failure: Callable[[PreparedRun, Exception], str] | None = None,
            ) -> dict:
    """Run (or read back) every prepared run and write ``summary.json``; return the
    summary. A run whose ``run`` raises is counted under ``failed`` (``on_failure``
    records it and returns the line to show) and the others go on."""
    import json

    results: dict[str, list[float]] = {}
    metrics: dict[str, str] = {}
    failed: dict[str, list[int]] = {}
    no_estimate: dict[str, list[int]] = {}
    for p in prepared:
        method, seed = p.spec.method, p.spec.seed
        results.setdefault(method, [])
        if p.claim == "finished":
            result, note = p.results(), "finished before"
        else:
            try:
                result = run(p)
            except Exception as err:
                if on_failure is None:
                    raise
                failed.setdefault(method, []).append(seed)
                log(f"{method:<16} seed {seed}: FAILED: {on_failure(p, err)}")
                continue
            note = f"{result['seconds']:.1f} s"
        metric = headline(result["test"])[0]
        metrics[method] = metric
        results[method].append(result["test"][metric])
        estimate = result.get("estimation") or {}
        if estimate.get("status") == "none":
            no_estimate.setdefault(method, []).append(seed)
        label = f"; {estimate['label']}" if estimate.get("label") else ""
        log(f"{method:<16} seed {seed}: test {LABELS[metric]} {100 * results[method][-1]:.1f}%  ({note}{label})")
    summary: dict[str, dict] = {}
    for method, accs in results.items():
        summary[method] = {
            "metric": metrics.get(method, "top1"),
            "mean": statistics.fmean(accs) if accs else None,
            "std": (statistics.pstdev(accs) if len(accs) > 1 else 0.0) if accs else None,
            "runs": accs,
            **({"failed_seeds": failed[method]} if method in failed else {}),
            **({"no_estimate_seeds": no_estimate[method]} if method in no_estimate else {}),
        }
    (resolve(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_table(summary: dict) -> str:
    """The test metric per method (top-1, or video top-1, or mAP), mean ± std over seeds,
    as a plain-text table."""
    metrics = {s.get("metric", "top1") for s in summary.values()}
    label = LABELS[metrics.pop()] if len(metrics) == 1 else "metric"
    rows = [f"{'method':<18}{f'test {label} (%)':>18}   seeds"]
    for method, s in summary.items():
        per_seed = " ".join(f"{100 * a:.1f}" for a in s["runs"])
        failed = f"   ({len(s['failed_seeds'])} failed)" if s.get("failed_seeds") else ""
        if s.get("no_estimate_seeds"):  # G-Blend in name only for these seeds
            failed += f"   (no estimate in {len(s['no_estimate_seeds'])} of {len(s['runs'])}: every G <= 0)"
        score = f"{100 * s['mean']:>10.1f} ± {100 * s['std']:<5.1f}" if s["mean"] is not None else f"{'—':>10}{'':8}"
        rows.append(f"{method:<18}{score}   {per_seed}{failed}")
    return "\n".join(rows)

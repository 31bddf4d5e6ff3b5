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

import functools
import statistics
from collections.abc import Callable
from pathlib import Path

from ..core.metrics import LABELS, headline
from ..core.spec import RunSpec
from ..storage.location import Location, resolve
from ..storage.rundir import ERROR, RESULTS
from .config import spec_to_dict
from .experiment import PreparedRun, open_run, prepare_trial, trial_spec

RunFn = Callable[[PreparedRun], dict]
"""Runs a prepared run that is not finished; returns its results (raises if it failed)."""


def method_dir(method: str) -> str:
    """A method's directory name (``gblend:online`` → ``gblend_online``)."""
    return method.replace(":", "_")


def run_path(method: str, seed: int) -> str:
    """A compare run's directory, relative to the compare's: ``<method>/seed<k>``."""
    return f"{method_dir(method)}/seed{seed}"


def run_dir(out: str | Path | Location, method: str, seed: int) -> Location:
    return resolve(out) / run_path(method, seed)


def run_overrides(method: str, seed: int, chosen: dict[str, dict] | None = None) -> dict:
    """A compare run's dotted overrides of the base config: its method's chosen
    hyperparameters (``compare --tune``), its method and its seed."""
    return {**(chosen or {}).get(method, {}), "method": method, "seed": seed}


def _trial_path(overrides: dict) -> str:
    return run_path(overrides["method"], overrides["seed"])


def _trial_label(overrides: dict) -> str:
    return f"{overrides['method']:<16} seed {overrides['seed']}"


def group_of(spec: RunSpec, out: str | Path | Location) -> str:
    """One W&B group per compare, as a sweep's runs share theirs."""
    return spec.tracking.group or resolve(out).name


def prepare_runs(spec: RunSpec, methods: list[str], seeds: list[int], out: str | Path | Location, *,
                 resume: bool = False, overwrite: bool = False, verbose: bool = False,
                 chosen: dict[str, dict] | None = None) -> list[PreparedRun]:
    """Claim every (method, seed)'s run directory (``experiment.open_run``), in order;
    ``chosen`` gives a method's hyperparameters as dotted overrides."""
    base = spec_to_dict(spec)
    return [open_run(trial_spec(base, run_overrides(method, seed, chosen), group_of(spec, out)),
                     run_dir(out, method, seed), resume=resume, overwrite=overwrite, verbose=verbose)
            for method in methods for seed in seeds]


def trial_engine(choice: str, specs: list[RunSpec], own_local_cluster: bool) -> str:
    """How a compare's runs train on Ray: ``ray`` (each a Ray Train run with Tune probe
    trials) or ``inline`` (each in its Tune trial's own process, the probes inside it).
    ``auto`` picks ``inline`` where a Ray Train run would add only its start-up (about
    14 s a run on 2 cores): on a local cluster of this process's own, when every run is
    one worker on CPUs alone (probes too) and none overlaps its rounds (``probes.overlap``
    needs probe trials beside the trainer); ``ray`` on any other cluster, for DDP runs and
    for runs that ask for GPUs or custom resources."""
    if choice != "auto":
        return choice
    from ..distributed.cluster import probe_resources, trainer_resources

    def one_cpu_worker(spec: RunSpec) -> bool:
        asks = {**trainer_resources(spec), **probe_resources(spec, 1)}
        overlapped = spec.probes.overlap and spec.method.partition(":")[0] == "gblend"
        return spec.trainer.num_workers == 1 and set(asks) <= {"CPU"} and not overlapped

    return "inline" if own_local_cluster and all(one_cpu_worker(s) for s in specs) else "ray"


def engine_line(runs: int, concurrent: int, engine: str, chosen_by_auto: bool) -> str:
    """The compare's first line on Ray: how its runs train, and how to get the other engine."""
    how = ("each a Ray Train run" if engine == "ray" else
           "each in its Ray Tune trial's process" + (" (auto: a local cluster, one CPU worker per run; "
                                                     "--trial-engine ray makes each a Ray Train run)"
                                                     if chosen_by_auto else ""))
    return f"[compare] {runs} runs, {min(runs, concurrent)} at a time, {how}"


def run_concurrently(prepared: list[PreparedRun], spec: RunSpec, out: str | Path | Location, *,
                     per_run: dict[str, float], concurrent: int, chosen: dict[str, dict] | None = None,
                     verbose: bool = False, engine: str = "ray") -> None:
    """On Ray, every prepared run as a trial of one Tune experiment (``OUT/tune/``), as
    many at once as ``concurrent``: a compare is a sweep whose cases are its (method,
    seed) pairs. Each trial trains its run in its own directory (or reads back one that
    finished before), so ``compare`` then reads every result from there in order, and
    ``summary.json`` is what a sequential compare writes. One line per finished run.
    ``engine`` is the sweep's: each run a Ray Train run with Tune probe trials (``ray``) or
    the in-process runner inside its trial (``inline``)."""
    from ..distributed.sweep import TrialLines, run_sweep

    cases = [run_overrides(p.spec.method, p.spec.seed, chosen) for p in prepared]
    sweep = {"cases": cases, "engine": engine, "max_concurrent_trials": concurrent}
    run_sweep(sweep, functools.partial(prepare_trial, base=spec_to_dict(spec), group=group_of(spec, out)), out,
              per_trial=per_run, epochs=spec.train.epochs, overwrite=True, verbose=1 if verbose else 0,
              trial_dir=_trial_path, lines=TrialLines(len(cases), label=_trial_label, what="compare"))


def read_back(p: PreparedRun) -> dict:
    """A run's results from its directory (after ``run_concurrently``); raises with the
    first line of its ``error.txt`` when it did not finish."""
    if p.run.exists(RESULTS):
        return p.results()
    cause = p.run.location.join(ERROR).read_text().strip().splitlines()[:1] if p.run.exists(ERROR) else []
    raise RuntimeError(cause[0] if cause else f"{p.run.uri} did not finish")


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
    for done, p in enumerate(prepared, 1):
        method, seed = p.spec.method, p.spec.seed
        count = f"[{done}/{len(prepared)}" + (f", {sum(map(len, failed.values()))} failed] " if failed else "] ")
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
                log(f"[{done}/{len(prepared)}, {sum(map(len, failed.values()))} failed] "
                    f"{method:<16} seed {seed}: FAILED: {on_failure(p, err)}")
                continue
            note = f"{result['seconds']:.1f} s"
        metric = headline(result["test"])[0]
        metrics[method] = metric
        results[method].append(result["test"][metric])
        estimate = result.get("estimation") or {}
        if estimate.get("status") == "none":
            no_estimate.setdefault(method, []).append(seed)
        label = f"; {estimate['label']}" if estimate.get("label") else ""
        log(f"{count}{method:<16} seed {seed}: test {LABELS[metric]} {100 * results[method][-1]:.1f}%  ({note}{label})")
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

"""The ``gblend`` command line.

    gblend run CONFIG.yaml --out DIR [--inline] [--resume | --overwrite] [--verbose] [--set key=value ...]
    gblend compare CONFIG.yaml --methods uni:video,naive,gblend:online --seeds 3 --out DIR [--resume | --overwrite]
    gblend compare SPACE.yaml --tune --methods naive,gblend:online --seeds 3 --out DIR
    gblend sweep SPACE.yaml --out DIR [--resume | --overwrite] [--set key=value ...]
    gblend report DIR
    gblend make-synthetic OUT_DIR --preset av-overfit --seed 0
    gblend make-dataset mfeat|basic-motions|image-segments|watch-exercises OUT_DIR
    gblend make-media OUT_DIR [--classes 3 --per-class 8 --multilabel]
    gblend extract-flow MANIFEST OUT_DIR [--resize 128 --bound 20 --on-bad-sample skip]

Exit codes: 0 done, 1 a run failed, 2 bad input (config, data, run directory,
resources), 130 interrupted. A failed command's last line is ``gblend: error: <cause>``;
on Ray, Ray's own output (worker logs, tracebacks) goes to the run's ``ray.log``
(``OUT/ray.log`` for compare and sweep) instead of the terminal, unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from ..core.metrics import describe
from ..core.spec import ON_BAD_SAMPLE
from ..data.arrays import DatasetError
from ..storage.location import StorageError, resolve
from ..storage.rundir import LOG, RunDirError
from .config import ConfigError, check_against_dataset, check_engine, load_config

MULTIMODAL_DEFAULT = ("naive", "aux", "gblend:offline", "gblend:online")
"""``compare``'s methods after one ``uni:<m>`` per modality of the data set."""
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class RunFailed(Exception):
    """A run (or some runs of a compare or sweep) failed while it ran; the message is its
    cause, the run directory's ``error.txt`` has the traceback."""


def _lifecycle(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--resume", action="store_true",
                   help=f"continue the {what} in --out from its last checkpoint (finished runs are kept)")
    p.add_argument("--overwrite", action="store_true", help=f"remove the {what} in --out first and start over")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output and the product's info logs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gblend", description="Gradient-Blending for multi-modal classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one run; writes DIR/results.json and DIR/trajectory.json")
    run.add_argument("config")
    run.add_argument("--out", required=True, help="the run directory: a local path or a storage URI")
    run.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    _lifecycle(run, "run")

    cmp_ = sub.add_parser("compare", help="several methods x seeds; writes DIR/summary.json")
    cmp_.add_argument("config")
    cmp_.add_argument("--methods", default=None,
                      help="comma-separated method names (default: uni:<m> for every modality m of the data set, "
                           f"then {','.join(MULTIMODAL_DEFAULT)})")
    cmp_.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1 (default 3)")
    cmp_.add_argument("--out", required=True)
    cmp_.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    cmp_.add_argument("--trial-engine", choices=("auto", "ray", "inline"), default="auto",
                      help="on Ray, each run as a Ray Train run with Tune probe trials (ray) or in its trial's own "
                           "process with the probes inside it (inline: no start-up per run); auto (default): inline "
                           "on a local cluster this command starts when every run is one worker on CPUs, else ray")
    cmp_.add_argument("--tune", action="store_true",
                      help="first search each method's hyperparameters (the config's sweep: sample, num_samples, "
                           "metric, mode, search), selected on validation; then rerun each method's best on every seed")
    cmp_.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                      help="runs at once on Ray (default: one per core on a local cluster, what fits on a given one)")
    _lifecycle(cmp_, "runs")

    swp = sub.add_parser("sweep", help="a Ray Tune sweep of whole runs over a search space")
    swp.add_argument("space", help="a run config with a sweep: section")
    swp.add_argument("--out", required=True)
    _lifecycle(swp, "sweep")

    rep = sub.add_parser("report", help="report.md, report.csv and plots for a run, compare or sweep directory")
    rep.add_argument("dir")
    rep.add_argument("--without-fallback", action="store_true",
                     help="leave out G-Blend runs whose every round fell back (no estimate; named in report.md)")
    syn = sub.add_parser("make-synthetic", help="write a synthetic benchmark dataset")
    syn.add_argument("out_dir")
    syn.add_argument("--preset", default="av-overfit")
    syn.add_argument("--seed", type=int, default=0)

    from ..data.realdata import DATASETS

    real = sub.add_parser("make-dataset", help="write a real multi-view / multi-sensor benchmark data set "
                                               "(pip install -e '.[benchmarks]')")
    real.add_argument("name", choices=sorted(DATASETS), help="; ".join(f"{k}: {v}" for k, v in DATASETS.items()))
    real.add_argument("out_dir")
    real.add_argument("--seed", type=int, default=0, help="seeds the val (and test) split drawn from the set")

    med = sub.add_parser("make-media", help="write small mp4 files (H.264 + AAC) and their manifest.csv")
    med.add_argument("out_dir")
    med.add_argument("--classes", type=int, default=3)
    med.add_argument("--per-class", type=int, default=8)
    med.add_argument("--seconds", type=float, default=2.0)
    med.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    med.add_argument("--multilabel", action="store_true", help="each file mixes a random subset of classes")
    med.add_argument("--seed", type=int, default=0)

    flo = sub.add_parser("extract-flow", help="dense optical flow (OpenCV Farneback) of every video of a manifest")
    flo.add_argument("manifest", help="manifest.csv, or a directory holding it")
    flo.add_argument("out_dir", help="where the flow files go; give it to runs as data.media.flow_dir")
    flo.add_argument("--resize", type=int, default=128, help="short side of the frames flow is computed on")
    flo.add_argument("--bound", type=float, default=20.0, help="flow is clipped to +-bound pixels, then quantized")
    flo.add_argument("--workers", type=int, default=1)
    flo.add_argument("--on-bad-sample", choices=ON_BAD_SAMPLE, default="error",
                     help="stop at a file that cannot be decoded (default), or leave it out")
    return p



def _resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted command: the same, with --resume."""
    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["gblend", *kept, "--resume"])


def _interrupted(what: str, run_dirs, argv: list[str]) -> str:
    """Where an interrupted command stopped, and how to go on."""
    from ..storage.rundir import RunDir

    marks = []
    for where in run_dirs:
        run = RunDir(where)
        epochs = run.checkpoint_epochs()
        marks.append(f"{run.uri}: last checkpoint at epoch {epochs[-1]}" if epochs else f"{run.uri}: no checkpoint yet")
    return f"gblend: interrupted ({what}; {'; '.join(marks[-3:]) or 'nothing started'}); resume with: " \
           + _resume_command(argv)


def _one_run(prepared, dataset, inline: bool) -> dict:
    """One prepared run: in this process with ``--inline``, else on Ray (``RAY_ADDRESS``
    or a local cluster). A failure is recorded in the run directory and re-raised."""
    try:
        if inline:
            from ..training.runner import run_inline

            return run_inline(prepared.spec, prepared.run, dataset, prepared.observer, resume=prepared.resume)
        from ..distributed.ray_runner import run_on_ray

        return run_on_ray(prepared.spec, prepared.run, dataset, prepared.observer, resume=prepared.resume)
    except Exception as err:
        cause = _cause(err)
        prepared.run.fail(cause, err)
        if _is_bad_input(err):  # found before anything trained: the setting to change is named
            raise
        raise RunFailed(cause) from err


def _cause(err: BaseException) -> str:
    try:
        from ..distributed.errors import describe_failure
    except ImportError:  # no Ray: nothing wraps the error
        return str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    return describe_failure(err)


def _is_bad_input(err: BaseException) -> bool:
    """Errors that mean the command cannot run as asked, found before anything trained."""
    bad: tuple[type, ...] = (ConfigError, DatasetError, RunDirError, StorageError)
    try:
        from ..distributed.cluster import ResourceError
        from ..distributed.sweep import SweepError

        bad += (ResourceError, SweepError)
    except ImportError:
        pass
    return isinstance(err, bad)


def _ray_log(where, verbose: bool, inline: bool, spec=None, dataset=None):
    """Join (or start) the Ray cluster and send Ray's own output to ``where``'s log for the
    block (``ray_output``); nothing for the in-process engine. A local cluster is started
    once, sized for the largest run (G-Blend's probe trials)."""
    import contextlib

    if inline:
        return contextlib.nullcontext()
    from ..distributed.cluster import connect
    from ..distributed.output import ray_output

    if spec is not None:
        from ..distributed.ray_runner import cpus_for

        connect(cpus_wanted=cpus_for(spec, len(dataset.modalities) + 1))
    return ray_output(None if verbose else resolve(where) / LOG)


def _cmd_run(args, argv: list[str]) -> int:
    from .experiment import open_run

    spec, dataset = _load(args)
    check_engine(spec, args.inline)
    prepared = open_run(spec, args.out, resume=args.resume, overwrite=args.overwrite, verbose=args.verbose)
    if prepared.claim == "finished":
        result = prepared.results()
        print(f"{result['method']}: already finished in {prepared.run.uri}: test {describe(result['test'])} "
              "(--overwrite trains it again)")
        return EXIT_OK
    try:
        with _ray_log(prepared.run.location, args.verbose, args.inline, spec, dataset):
            result = _one_run(prepared, dataset, args.inline)
    except KeyboardInterrupt:
        print(_interrupted("the run", [prepared.run.location], argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    estimate = (result.get("estimation") or {}).get("label")
    print(f"{result['method']}: test {describe(result['test'])}" + (f"; {estimate}" if estimate else "")
          + f"; wrote results.json and trajectory.json to {prepared.run.uri}")
    if result.get("skipped"):
        print(f"left out {len(result['skipped'])} bad file(s), listed under 'skipped' in results.json")
    return EXIT_OK


def _cmd_compare(args, argv: list[str]) -> int:
    from .compare import compare, format_table, prepare_runs

    if args.tune:
        from .config import load_config_with_sweep
        from .tuning import check_tuning_space

        spec, sweep = load_config_with_sweep(args.config, args.overrides)
        sweep = check_tuning_space(sweep, args.config)
        dataset = _dataset_for(spec)
    else:
        spec, dataset = _load(args)
    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods is not None
               else [f"uni:{m}" for m in dataset.modalities] + list(MULTIMODAL_DEFAULT))
    for m in methods:
        check_against_dataset(dataclasses.replace(spec, method=m), list(dataset.modalities))
        check_engine(dataclasses.replace(spec, method=m), args.inline or args.trial_engine == "inline")
    began = time.perf_counter()
    chosen, picked, prepared = None, None, []
    try:
        if args.tune:
            chosen = _tune_methods(args, spec, sweep, dataset, methods)
            picked = {m: c["overrides"] for m, c in chosen.items() if c["overrides"] is not None}
            methods = [m for m in methods if m in picked]
        prepared = prepare_runs(spec, methods, list(range(args.seeds)), args.out, resume=args.resume,
                                overwrite=args.overwrite, verbose=args.verbose, chosen=picked)
        summary = _run_compare(args, spec, dataset, prepared, compare, picked) if prepared else {}
    except KeyboardInterrupt:
        unfinished = [p.run.location for p in prepared if not p.run.exists("results.json")]
        print(_interrupted("the compare", unfinished[:3], argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    if chosen is not None:
        from .tuning import add_choices, format_choices

        for m, c in chosen.items():
            summary.setdefault(m, {"metric": c["metric"], "mean": None, "std": None, "runs": []})
        summary = add_choices(summary, chosen)
        (resolve(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_table(summary))
    if chosen is not None:
        print(f"\nchosen on {next(iter(chosen.values()))['metric']} (validation), then rerun on {args.seeds} seeds:")
        print(format_choices(summary))
    print(f"\n{len(methods)} methods x {args.seeds} seeds in {time.perf_counter() - began:.0f} s; "
          f"wrote {resolve(args.out).uri}/summary.json")
    failed = sum(len(s.get("failed_seeds", [])) for s in summary.values())
    if failed:
        raise RunFailed(f"{failed} of {len(prepared)} runs failed (each run's error.txt says why)")
    return EXIT_OK


def _tune_methods(args, spec, sweep: dict, dataset, methods: list[str]) -> dict:
    """``compare --tune``'s searches, one per method (``tuning.tune_methods``), as Tune
    sweeps: on Ray, or with ``--inline`` each trial in its own process."""
    import functools

    from ..distributed.cluster import connect
    from ..distributed.sweep import check_sweep, run_sweep
    from .tuning import tune_methods

    sweep = {**sweep, "engine": "inline" if args.inline else sweep.get("engine", "ray")}
    try:
        check_sweep(sweep, spec.train.epochs)
    except ValueError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    per_trial = (_most_per_run([dataclasses.replace(spec, method=m) for m in methods], dataset)
                 if sweep["engine"] == "ray" else {"CPU": 1.0})
    runs = sweep.get("max_concurrent_trials") or (os.cpu_count() or 1)
    connect(cpus_wanted=per_trial.get("CPU", 0.0) * runs, runs=runs)
    search = functools.partial(run_sweep, per_trial=per_trial, epochs=spec.train.epochs, resume=args.resume,
                               overwrite=args.overwrite, verbose=1 if args.verbose else 0)
    with _ray_log(resolve(args.out), args.verbose, inline=False):
        return tune_methods(spec, sweep, methods, args.out, search)


def _most_per_run(specs, dataset) -> dict[str, float]:
    """The most any of these runs holds at once on Ray (G-Blend's probe trials beside its
    trainer), per resource."""
    from ..distributed.ray_runner import resources_for

    most: dict[str, float] = {}
    for spec in specs:
        for k, v in resources_for(spec, len(dataset.modalities) + 1).items():
            most[k] = max(most.get(k, 0.0), v)
    return most


def _dataset_for(spec):
    from ..data.loading import ensure_dataset

    dataset = ensure_dataset(spec)
    check_against_dataset(spec, list(dataset.modalities))
    return dataset


def _run_compare(args, spec, dataset, prepared, compare, chosen: dict | None = None) -> dict:
    """A compare's runs: one after another in this process with ``--inline``; on Ray as
    concurrent trials, as many at once as the cluster holds (``--max-concurrent``; a
    local cluster runs one per core)."""
    if args.inline:
        return compare(prepared, args.out, lambda p: _one_run(p, dataset, True), on_failure=lambda p, err: str(err))
    from ..distributed.cluster import connect, on_own_local_cluster
    from ..distributed.sweep import concurrent_trials
    from .compare import engine_line, read_back, run_concurrently, trial_engine

    engine = trial_engine(args.trial_engine, [p.spec for p in prepared], on_own_local_cluster())
    per_run = (_most_per_run([p.spec for p in prepared], dataset) if engine == "ray"
               else {"CPU": float(max(p.spec.train.threads or 1 for p in prepared))})
    wanted = args.max_concurrent or (None if os.environ.get("RAY_ADDRESS") else os.cpu_count() or 1)
    if wanted:
        connect(cpus_wanted=per_run.get("CPU", 0.0) * min(wanted, len(prepared)), runs=min(wanted, len(prepared)))
    else:
        connect()
    import ray

    concurrent = min(len(prepared), wanted or concurrent_trials({}, per_run, ray.cluster_resources()))
    print(engine_line(len(prepared), concurrent, engine, args.trial_engine == "auto"), flush=True)
    with _ray_log(resolve(args.out), args.verbose, False):
        run_concurrently(prepared, spec, args.out, per_run=per_run, concurrent=concurrent, chosen=chosen,
                         verbose=args.verbose, engine=engine)
        return compare(prepared, args.out, read_back, log=lambda line: None, on_failure=lambda p, err: str(err))


def _cmd_sweep(args, argv: list[str]) -> int:
    import functools

    from ..data.loading import ensure_dataset
    from ..distributed.cluster import connect
    from ..distributed.ray_runner import resources_for
    from ..distributed.sweep import SweepError, check_sweep, run_sweep
    from .config import load_config_with_sweep, spec_to_dict
    from .experiment import prepare_trial
    from .sweep_space import check_trials, resolve_trial_paths, set_sweep_keys

    sweep_sets = [o for o in args.overrides if o.startswith("sweep.")]
    base, sweep = load_config_with_sweep(args.space, [o for o in args.overrides if not o.startswith("sweep.")])
    if not sweep:
        raise SweepError(f"{args.space}: no sweep: section; add one (see gblend_ray/distributed/sweep.py) "
                         "or use gblend run")
    sweep = set_sweep_keys(sweep, sweep_sets)
    _, goal = check_sweep(sweep, base.train.epochs)  # a bad metric, searcher or scheduler: before any data
    sweep = resolve_trial_paths(sweep, Path(os.path.abspath(args.space)).parent)
    ensure_dataset(base)  # generate a preset once, before trials race to it
    # and each data set a trial names (data.path in cases or the grid), checked against its own
    most_modalities = check_trials(base, sweep, args.space)
    out = resolve(args.out)
    engine = sweep.get("engine", "ray")
    per_trial = resources_for(base, most_modalities + 1) if engine == "ray" else {"CPU": 1.0}
    # A local cluster we start holds two runs at once; a given cluster (RAY_ADDRESS) holds
    # what its resources allow, unless the space says max_concurrent_trials.
    connect(cpus_wanted=per_trial.get("CPU", 0.0) * (sweep.get("max_concurrent_trials") or 2))
    try:
        with _ray_log(out, args.verbose, inline=False):
            rows = run_sweep(sweep, functools.partial(prepare_trial, base=spec_to_dict(base), group=out.name),
                             out, per_trial=per_trial, epochs=base.train.epochs, resume=args.resume,
                             overwrite=args.overwrite, verbose=1 if args.verbose else 0)
    except KeyboardInterrupt:
        print(_interrupted("the sweep", [], argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    from .tracking import log_sweep_summary

    log_sweep_summary(out, rows, goal, base.tracking, group=out.name)
    failed = [r for r in rows if r["status"] == "failed"]
    stopped = sum(r["status"] == "stopped" for r in rows)
    print(f"\n{len(rows)} trials: {len(rows) - len(failed) - stopped} ok, "
          + (f"{stopped} stopped early, " if stopped else "") + f"{len(failed)} failed; wrote {out.uri}/sweep.json")
    best = next((r for r in rows if r.get("best")), None)
    if best is not None:
        tested = ", ".join(f"{k} {100 * v:.1f}%" for k, v in best["test"].items() if k != "loss")
        print(f"best by {goal[0]} ({goal[1]}): {best['run_dir']} {best['overrides']}: "
              f"{goal[0]} {best[goal[0]]:.4f}; test {tested}")
    for r in failed:
        print(f"  FAILED {r['run_dir']}: {r['error']}")
    if failed:
        raise RunFailed(f"{len(failed)} of {len(rows)} trials failed; first: {failed[0]['error']}")
    return EXIT_OK


def _load(args) -> tuple:
    spec = load_config(args.config, args.overrides)
    return spec, _dataset_for(spec)


def _drop_inherited_wandb_service() -> None:
    """Forget a W&B service this process inherited. wandb exports its service's address to
    child processes (``WANDB_SERVICE``, ``<version>-<pid of its starter>-...``); a parent's
    service outlives a killed run and holds its run id, so a resumed run could not log.
    A service this process started itself (``main`` called in-process) is kept."""
    token = os.environ.get("WANDB_SERVICE")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        del os.environ["WANDB_SERVICE"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _drop_inherited_wandb_service()
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s" if verbose else "gblend: %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.command == "make-synthetic":
            from ..data.synthetic import generate_preset

            path = generate_preset(args.preset, args.out_dir, seed=args.seed)
            print(f"wrote {args.preset} (seed {args.seed}) to {path}")
        elif args.command == "make-dataset":
            from ..data.realdata import make_dataset

            path = make_dataset(args.name, args.out_dir, seed=args.seed)
            print(f"wrote {args.name} (seed {args.seed}) to {path}")
        elif args.command == "make-media":
            from ..data.media.testmedia import write_test_media

            manifest = write_test_media(args.out_dir, classes=args.classes, per_class=args.per_class,
                                        seconds=args.seconds, size=args.size, multilabel=args.multilabel,
                                        seed=args.seed)
            print(f"wrote {args.classes * args.per_class} mp4 files and {manifest}")
        elif args.command == "extract-flow":
            from ..data.media.flow import extract_flow

            index = extract_flow(args.manifest, args.out_dir, resize=args.resize, bound=args.bound,
                                 workers=args.workers, on_bad_sample=args.on_bad_sample)
            print(f"wrote optical flow to {args.out_dir} ({index}); set data.media.flow_dir: {args.out_dir}")
        elif args.command == "report":
            from .report import write_report

            written = write_report(args.dir, without_fallback=args.without_fallback)
            print(f"wrote {written['md']}, {written['csv']} and {len(written['plots'])} plot(s)")
        else:
            return {"run": _cmd_run, "compare": _cmd_compare, "sweep": _cmd_sweep}[args.command](args, argv)
    except KeyboardInterrupt:
        print("gblend: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailed as err:
        print(f"gblend: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as err:  # bad input: config, data, run directory, resources, paths
        print(f"gblend: error: {_cause(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

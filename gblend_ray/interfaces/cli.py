"""The ``gblend`` command line.

    gblend run CONFIG.yaml --out DIR [--inline] [--set key=value ...]
    gblend compare CONFIG.yaml --methods uni:video,naive,gblend:online --seeds 3 --out DIR
    gblend sweep SPACE.yaml --out DIR [--resume] [--set key=value ...]
    gblend report DIR
    gblend make-synthetic OUT_DIR --preset av-overfit --seed 0
    gblend make-media OUT_DIR [--classes 3 --per-class 8 --multilabel]
    gblend extract-flow MANIFEST OUT_DIR [--resize 128 --bound 20 --on-bad-sample skip]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from .config import ConfigError, check_against_dataset, load_config
from ..core.metrics import describe
from ..core.spec import ON_BAD_SAMPLE
from ..data.arrays import DatasetError

METHODS_DEFAULT = "uni:video,uni:audio,naive,aux,gblend:offline,gblend:online"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gblend", description="Gradient-Blending for multi-modal classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one run; writes DIR/results.json and DIR/trajectory.json")
    run.add_argument("config")
    run.add_argument("--out", required=True)
    run.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    cmp_ = sub.add_parser("compare", help="several methods x seeds; writes DIR/summary.json")
    cmp_.add_argument("config")
    cmp_.add_argument("--methods", default=METHODS_DEFAULT,
                      help=f"comma-separated method names (default: {METHODS_DEFAULT})")
    cmp_.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1 (default 3)")
    cmp_.add_argument("--out", required=True)
    cmp_.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    swp = sub.add_parser("sweep", help="a Ray Tune sweep of whole runs over a search space")
    swp.add_argument("space", help="a run config with a sweep: section")
    swp.add_argument("--out", required=True)
    swp.add_argument("--resume", action="store_true", help="continue an interrupted sweep in DIR")
    swp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    rep = sub.add_parser("report", help="report.md, report.csv and plots for a run, compare or sweep directory")
    rep.add_argument("dir")

    syn = sub.add_parser("make-synthetic", help="write a synthetic benchmark dataset")
    syn.add_argument("out_dir")
    syn.add_argument("--preset", default="av-overfit")
    syn.add_argument("--seed", type=int, default=0)

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



def _run(spec, out_dir: Path, dataset, inline: bool) -> dict:
    """One run: in this process with ``--inline``, else on Ray (``RAY_ADDRESS`` or a local cluster)."""
    from .experiment import prepare

    spec, observer = prepare(spec, out_dir)
    if inline:
        from ..training.runner import run_inline

        return run_inline(spec, out_dir, dataset, observer)
    from ..distributed.cluster import connect
    from ..distributed.ray_runner import cpus_for, run_on_ray

    # A local cluster is started once, sized for the largest run (G-Blend's probe trials).
    connect(cpus_wanted=cpus_for(spec, len(dataset.modalities) + 1))
    return run_on_ray(spec, out_dir, dataset, observer)


def _sweep(args) -> None:
    import functools

    from ..data.loading import ensure_dataset
    from ..distributed.cluster import connect
    from ..distributed.ray_runner import cpus_for
    from ..distributed.sweep import SweepError, run_sweep
    from .config import load_config_with_sweep, spec_to_dict
    from .experiment import prepare_trial

    sweep_sets = [o for o in args.overrides if o.startswith("sweep.")]
    base, sweep = load_config_with_sweep(args.space, [o for o in args.overrides if not o.startswith("sweep.")])
    if not sweep:
        raise SweepError(f"{args.space}: no sweep: section; add one (see gblend_ray/distributed/sweep.py) or use gblend run")
    sweep = _set_sweep_keys(sweep, sweep_sets)
    dataset = ensure_dataset(base)  # generate a preset once, before trials race to it
    _check_trials(base, sweep, list(dataset.modalities), args.space)
    out = Path(args.out).resolve()
    engine = sweep.get("engine", "ray")
    per_trial = cpus_for(base, len(dataset.modalities) + 1) if engine == "ray" else 1.0
    # A local cluster we start holds two runs at once; a given cluster (RAY_ADDRESS) holds
    # what its resources allow, unless the space says max_concurrent_trials.
    connect(cpus_wanted=per_trial * (sweep.get("max_concurrent_trials") or 2))
    rows = run_sweep(sweep, functools.partial(prepare_trial, base=spec_to_dict(base), group=out.name),
                     out, cpus_per_trial=per_trial, resume=args.resume)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"\n{len(rows)} trials: {len(rows) - len(failed)} ok, {len(failed)} failed; wrote {out}/sweep.json")
    for r in failed:
        print(f"  FAILED {r['run_dir']}: {r['error']}")


def _set_sweep_keys(sweep: dict, overrides: list[str]) -> dict:
    """``--set sweep.a.b=value`` on the space's sweep section (values parsed as YAML)."""
    import copy

    import yaml

    sweep = copy.deepcopy(sweep)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected the form sweep.key=value")
        *path, last = key.split(".")[1:]
        node = sweep
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section of sweep")
        node[last] = yaml.safe_load(value)
    return sweep


def _check_trials(base, sweep: dict, modalities: list[str], source: str) -> None:
    """Every trial's config must load before the first one starts: a bad key or method in
    the space is one clear error now, not a sweep of failed trials."""
    import itertools

    from .config import apply_overrides, spec_from_dict, spec_to_dict

    grid = sweep.get("grid") or {}
    keys = list(grid)
    for case in sweep.get("cases") or [{}]:
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            overrides = {**case, **dict(zip(keys, values))}
            items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
            try:
                spec = spec_from_dict(apply_overrides(spec_to_dict(base), items))
                check_against_dataset(spec, modalities)
            except ConfigError as err:
                raise ConfigError(f"{source}: sweep trial {overrides}: {err}") from None


def _load(args) -> tuple:
    from ..data.loading import ensure_dataset

    spec = load_config(args.config, args.overrides)
    dataset = ensure_dataset(spec)
    check_against_dataset(spec, list(dataset.modalities))
    return spec, dataset


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "make-synthetic":
            from ..data.synthetic import generate_preset

            path = generate_preset(args.preset, args.out_dir, seed=args.seed)
            print(f"wrote {args.preset} (seed {args.seed}) to {path}")
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
        elif args.command == "run":
            spec, dataset = _load(args)
            result = _run(spec, Path(args.out), dataset, args.inline)
            print(f"{result['method']}: test {describe(result['test'])}; wrote {args.out}/results.json and trajectory.json")
            if result.get("skipped"):
                print(f"left out {len(result['skipped'])} bad file(s), listed under 'skipped' in results.json")
        elif args.command == "sweep":
            _sweep(args)
        elif args.command == "report":
            from .report import write_report

            written = write_report(args.dir)
            print(f"wrote {written['md']}, {written['csv']} and {len(written['plots'])} plot(s)")
        elif args.command == "compare":
            from .compare import compare, format_table

            spec, dataset = _load(args)
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            for m in methods:
                check_against_dataset(dataclasses.replace(spec, method=m), list(dataset.modalities))
            began = time.perf_counter()
            summary = compare(spec, methods, list(range(args.seeds)), args.out,
                              lambda s, out: _run(s, out, dataset, args.inline))
            print()
            print(format_table(summary))
            print(f"\n{len(methods)} methods x {args.seeds} seeds in {time.perf_counter() - began:.0f} s; "
                  f"wrote {args.out}/summary.json")
    except (ConfigError, DatasetError, ValueError) as err:  # bad input (a ResourceError too): a message, not a traceback
        print(f"gblend: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

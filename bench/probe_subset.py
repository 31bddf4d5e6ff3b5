"""How far G-Blend's weights move when the probes train on a subset of T (``probes.subset``).

For each seed, an exact online G-Blend run (in-process) estimates every round on all of T;
at each of its boundaries the probes are also run on 0.5, 0.25 and 0.1 of T from the same
checkpoint, and the weights they give are compared with the exact round's (max |Δw| over
the heads, of the weights the run would train with, safeguard included). Then whole runs
with each subset give the test effect and the probes' compute. Run by hand:

    python bench/probe_subset.py [--config search_spaces/quickstart.yaml] [--seeds 3] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics

import torch

from gblend_ray.core.plan import fixed_weights
from gblend_ray.interfaces.config import load_config
from gblend_ray.training.assembly import assemble, decide, epoch_metrics, run_probes, train_plan
from gblend_ray.training.runner import run_inline

FRACTIONS = (0.5, 0.25, 0.1)


def with_subset(spec, fraction: float):
    return dataclasses.replace(spec, probes=dataclasses.replace(spec.probes, subset=fraction))


def weight_moves(spec) -> dict[float, list[float]]:
    """Per fraction, max |Δw| at every round of the exact run, from the same checkpoints."""
    a = assemble(spec, None, spec.train.device)
    moves: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    previous = None

    def weights_for(segment):
        nonlocal previous
        if not segment.estimates:
            return fixed_weights(a.method, a.model.modalities, segment.phase)
        with torch.random.fork_rng():
            exact, _ = decide(spec, a.method, segment, run_probes(spec, a.model, a.data, segment), previous)
            for f in FRACTIONS:
                s = with_subset(spec, f)
                w, _ = decide(s, a.method, segment, run_probes(s, a.model, a.data, segment), previous)
                moves[f].append(max(abs(w[h] - exact[h]) for h in exact))
        previous = exact
        return exact

    train_plan(a, a.model, weights_for, monitor=lambda: epoch_metrics(a.model, a.data))
    return moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.getLogger("gblend_ray").setLevel(logging.ERROR)  # the rounds' warnings: the table says it
    base = load_config(args.config, ["method=gblend:online", "tracking.backend=none", *args.overrides])
    moves: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    runs: dict[float, list[dict]] = {1.0: [], **{f: [] for f in FRACTIONS}}
    for seed in range(args.seeds):
        spec = dataclasses.replace(base, seed=seed)
        for f, m in weight_moves(spec).items():
            moves[f].extend(m)
        for f in runs:
            runs[f].append(run_inline(with_subset(spec, f)))
    print(f"{args.config} {' '.join(args.overrides)}: online G-Blend, {args.seeds} seeds, "
          f"{len(moves[FRACTIONS[0]])} rounds in all")
    print(f"{'probes.subset':>14} {'max |Δw| mean':>14} {'max |Δw| max':>13} {'test top-1 %':>16} {'probe s/run':>12}")
    for f, rs in runs.items():
        top1 = [100 * r["test"]["top1"] for r in rs]
        probe_s = statistics.fmean(sum(h["probe_seconds"] for t in r["trajectory"] for h in t["heads"].values())
                                   for r in rs)
        moved = (f"{statistics.fmean(moves[f]):>14.3f} {max(moves[f]):>13.3f}" if f in moves
                 else f"{'(exact)':>14} {'':>13}")
        spread = statistics.pstdev(top1) if len(top1) > 1 else 0.0
        print(f"{f:>14g} {moved} {statistics.fmean(top1):>9.1f} ± {spread:<4.1f} {probe_s:>12.2f}")


if __name__ == "__main__":
    main()

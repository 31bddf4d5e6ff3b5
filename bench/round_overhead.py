"""Orchestration overhead of G-Blend rounds on the Ray engine.

Runs one online G-Blend run of the quickstart config on the local Ray cluster (or the
one in RAY_ADDRESS) and prints, per round, the round's wall time as the coordinator saw
it (probe tasks queued → every result back), the compute time of its slowest probe,
their difference (the overhead) and their ratio; and the boundary as rank 0 lived it
(checkpoint written and reported, round asked for, weights broadcast) against the same
slowest probe. Run by hand:

    RAY_AUTH_MODE=disabled python bench/round_overhead.py [--config search_spaces/quickstart.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from gblend_ray.distributed.ray_runner import run_on_ray  # noqa: E402
from gblend_ray.interfaces.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    spec = load_config(args.config, ["method=gblend:online", *args.overrides])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_on_ray(spec, out)
        trained = json.loads((Path(out) / "trained_weights.json").read_text())
    total = time.perf_counter() - began
    boundary = {t["epoch"]: t["boundary_seconds"] for t in trained if t["rank"] == 0}
    print(f"{'round@epoch':>11} {'probes':>6} {'slowest probe s':>15} {'round s':>8} {'overhead s':>10} {'ratio':>5}"
          f" | {'rank-0 boundary s':>17} {'overhead s':>10} {'ratio':>5}")
    for r in result["trajectory"]:
        slowest = max(h["probe_seconds"] for h in r["heads"].values())
        b = boundary[r["epoch"]]
        print(f"{r['epoch']:>11} {len(r['heads']):>6} {slowest:>15.2f} {r['round_seconds']:>8.2f} "
              f"{r['round_seconds'] - slowest:>10.2f} {r['round_seconds'] / slowest:>5.2f}"
              f" | {b:>17.2f} {b - slowest:>10.2f} {b / slowest:>5.2f}")
    print(f"whole run: {total:.1f} s, of which training + probes as measured by the run: {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()

"""Orchestration overhead of G-Blend rounds on the Ray engine.

Runs one online G-Blend run of the quickstart config on the local Ray cluster (or the
one in RAY_ADDRESS) and prints, per round, the round's wall time as the coordinator saw
it (probe tasks queued → every result back), the compute time of its slowest probe,
their difference (the overhead) and their ratio. Run by hand:

    RAY_AUTH_MODE=disabled python bench/round_overhead.py [--config search_spaces/quickstart.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from gblend_ray.config import load_config  # noqa: E402
from gblend_ray.ray_runner import run_on_ray  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    spec = load_config(args.config, ["method=gblend:online", *args.overrides])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_on_ray(spec, out)
    total = time.perf_counter() - began
    print(f"{'round@epoch':>12} {'probes':>7} {'round s':>9} {'slowest probe s':>16} {'overhead s':>11} {'ratio':>6}")
    for r in result["trajectory"]:
        slowest = max(h["probe_seconds"] for h in r["heads"].values())
        spread = max(h["probe_started"] for h in r["heads"].values()) - min(h["probe_started"] for h in r["heads"].values())
        print(f"{r['epoch']:>12} {len(r['heads']):>7} {r['round_seconds']:>9.2f} {slowest:>16.2f} "
              f"{r['round_seconds'] - slowest:>11.2f} {r['round_seconds'] / slowest:>6.2f}   (probe starts within {spread:.2f} s)")
    print(f"whole run: {total:.1f} s, of which training + probes as measured by the run: {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()

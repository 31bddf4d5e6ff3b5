"""What the runners cost over a plain loop: steps/s of the same model, data, threads and epochs.

(a) a plain PyTorch loop calling the engine (``train_epochs`` and the per-epoch
evaluation the runners do), (b) the in-process runner (``run_inline``), (c) one Ray Train
worker (``run_on_ray``, naive fusion, so no probes). Each runs at two lengths, and the
marginal steps/s — (steps(long) − steps(short)) / (seconds(long) − seconds(short)) — leaves
out the fixed start-up (a TorchTrainer's worker group, imports, data). Start-up is printed
beside it. Run by hand, side by side in one run:

    RAY_AUTH_MODE=disabled python bench/engine_overhead.py [--config search_spaces/quickstart.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from gblend_ray.core.plan import fixed_weights  # noqa: E402
from gblend_ray.interfaces.config import load_config  # noqa: E402
from gblend_ray.training.assembly import assemble, epoch_metrics  # noqa: E402
from gblend_ray.training.engine import train_epochs  # noqa: E402
from gblend_ray.training.runner import run_inline  # noqa: E402


def plain(spec) -> None:
    a = assemble(spec, None, "cpu")
    weights = fixed_weights(a.method, a.model.modalities)
    for epoch in range(spec.train.epochs):
        train_epochs(a.model, a.data.train, a.optimizer, weights, 1, start_epoch=epoch,
                     batch_size=spec.train.batch_size, seed=spec.seed)
        epoch_metrics(a.model, a.data)


def in_process(spec) -> None:
    run_inline(spec)


def on_ray(spec) -> None:
    from gblend_ray.distributed.ray_runner import run_on_ray

    with tempfile.TemporaryDirectory(prefix="gblend-overhead-") as out:
        run_on_ray(spec, out)


def timed(fn, spec) -> float:
    began = time.perf_counter()
    fn(spec)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--epochs", type=int, nargs=2, default=(5, 105), metavar=("SHORT", "LONG"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.config, ["method=naive", "tracking.backend=none", *args.overrides])
    import logging

    import ray

    logging.getLogger("gblend_ray").setLevel(logging.ERROR)
    # the workers' own output (Ray Train's reports and warnings) stays off the table
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False,
             logging_level=logging.WARNING)
    a = assemble(base, None, "cpu")
    per_epoch = math.ceil(len(a.data.train) / base.train.batch_size)
    short, long = args.epochs
    print(f"{args.config}: naive fusion, {len(a.data.train)} train samples, batch {base.train.batch_size} "
          f"({per_epoch} steps/epoch), train.threads {base.train.threads}, epochs {short} and {long}")
    rows = []
    for name, fn in (("(a) plain loop", plain), ("(b) in-process runner", in_process), ("(c) 1 Ray Train worker", on_ray)):
        fn(dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=1)))  # warm: imports, caches
        t_short = timed(fn, dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=short)))
        t_long = timed(fn, dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=long)))
        rate = (long - short) * per_epoch / (t_long - t_short)
        startup = t_short - short * per_epoch / rate
        rows.append((name, rate, startup, t_long))
    plain_rate = rows[0][1]
    print(f"{'':24}{'steps/s':>10}{'/ (a)':>8}{'start-up s':>12}{'wall s (long)':>15}")
    for name, rate, startup, wall in rows:
        print(f"{name:24}{rate:>10.1f}{rate / plain_rate:>8.2f}{startup:>12.1f}{wall:>15.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()

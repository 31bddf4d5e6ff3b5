"""What the runners cost over a plain loop: steps/s of the same model, data, threads and epochs.

(a) a plain PyTorch loop calling the engine (``train_epochs`` and the per-epoch
evaluation the runners do), (b) the in-process runner (``run_inline``), (c) one Ray Train
worker (``run_on_ray``, naive fusion, so no probes). Each runs at two lengths, and the
marginal steps/s — (steps(long) − steps(short)) / (seconds(long) − seconds(short)) — leaves
out the fixed start-up (a TorchTrainer's worker group, imports, data). Start-up is printed
beside it. Run by hand, side by side in one run:

    RAY_AUTH_MODE=disabled python bench/engine_overhead.py [--config search_spaces/quickstart.yaml] [--set k=v ...]

``--breakdown`` runs the config's own method (G-Blend, say) once in process and once on
one Ray Train worker, each into a run directory, and splits each wall time into start-up,
training epochs, the boundaries' probes and checkpoints, and the end (the final report);
it also times one checkpoint of the model written and then copied, which is what a Ray
Train report does with it (staged on local disk, then uploaded to the run directory):

    RAY_AUTH_MODE=disabled python bench/engine_overhead.py --config configs/media_av.yaml --breakdown
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


class Timeline:
    """A run observer that notes when each round and epoch reached the driver."""

    def __init__(self):
        self.began = time.perf_counter()
        self.rounds: list[float] = []
        self.epochs: list[float] = []

    def on_resume(self, epoch, history, rounds) -> None:
        pass

    def on_epoch(self, record) -> None:
        self.epochs.append(time.perf_counter() - self.began)

    def on_round(self, record) -> None:
        self.rounds.append(time.perf_counter() - self.began)

    def on_end(self, results) -> None:
        pass


def _probe_compute(trajectory: list[dict]) -> list[float]:
    """Each round's probes' summed compute (seconds), from the trajectory."""
    return [sum(h.get("probe_seconds") or 0.0 for h in r["heads"].values()) for r in trajectory]


def _phases(total: float, timeline: Timeline, boundaries: list[float], probes: list[float]) -> dict[str, float]:
    """A run's wall time split: start-up is the time to its first round less that round's
    boundary, the end what follows its last epoch, the epochs what is left."""
    startup = timeline.rounds[0] - boundaries[0] if timeline.rounds and boundaries else timeline.epochs[0]
    end = total - timeline.epochs[-1]
    return {"start-up": startup, "epochs (train + eval)": total - startup - sum(boundaries) - end,
            "boundaries: probes": sum(probes), "boundaries: checkpoint, rest": sum(boundaries) - sum(probes),
            "end (final report)": end, "total (driver)": total}


def breakdown_inline(spec, out: str) -> dict[str, float]:
    from gblend_ray.training import runner

    saves: list[float] = []
    save = runner._save_boundary

    def timed_save(*args, **kwargs):
        began = time.perf_counter()
        save(*args, **kwargs)
        saves.append(time.perf_counter() - began)

    runner._save_boundary = timed_save
    try:
        timeline = Timeline()
        results = runner.run_inline(spec, out, observer=timeline)
        total = time.perf_counter() - timeline.began
    finally:
        runner._save_boundary = save
    probes = _probe_compute(results["trajectory"])
    return _phases(total, timeline, [s + p for s, p in zip(saves, probes)], probes)


def breakdown_ray(spec, out: str) -> dict[str, float]:
    import json

    from gblend_ray.distributed.ray_runner import run_on_ray
    from gblend_ray.storage.rundir import TRAINED

    timeline = Timeline()
    results = run_on_ray(spec, out, observer=timeline)
    total = time.perf_counter() - timeline.began
    with open(os.path.join(out, TRAINED)) as f:  # rank 0's time at each boundary, measured in the worker
        trained = sorted((r for r in json.load(f) if r["rank"] == 0), key=lambda r: r["epoch"])
    estimated = {r["epoch"] for r in results["trajectory"]}
    boundaries = [r["boundary_seconds"][-1] for r in trained if r["epoch"] in estimated]
    return _phases(total, timeline, boundaries, _probe_compute(results["trajectory"]))


def checkpoint_cost(spec) -> tuple[float, float, float]:
    """MB of one checkpoint of the run's model, seconds to write it, seconds to copy it
    with pyarrow's ``copy_files`` (Ray Train's upload of a staged checkpoint)."""
    import pyarrow.fs
    import torch

    from gblend_ray.training.checkpoint import save_checkpoint

    a = assemble(spec, None, "cpu")
    for p in a.model.parameters():  # one (zero) step, so that the optimizer holds its state as in a run
        p.grad = torch.zeros_like(p)
    a.optimizer.step()
    with tempfile.TemporaryDirectory(prefix="gblend-ckpt-cost-") as tmp:
        began = time.perf_counter()
        staged = save_checkpoint(os.path.join(tmp, "staged"), a.model, a.optimizer, 0, None, [], None)
        written = time.perf_counter() - began
        size = sum(os.path.getsize(os.path.join(staged, f)) for f in os.listdir(staged)) / 2**20
        os.makedirs(os.path.join(tmp, "uploaded"))
        began = time.perf_counter()
        pyarrow.fs.copy_files(str(staged), os.path.join(tmp, "uploaded"))
        return size, written, time.perf_counter() - began


def breakdown(spec, config: str) -> None:
    print(f"{config}: {spec.method}, {spec.train.epochs} epochs, probes.mode {spec.probes.mode}; "
          "each engine once, into a run directory")
    with tempfile.TemporaryDirectory(prefix="gblend-breakdown-") as out:
        inline = breakdown_inline(spec, os.path.join(out, "inline"))
        on_ray = breakdown_ray(spec, os.path.join(out, "ray"))
    print(f"{'seconds':32}{'in process':>12}{'1 Ray worker':>14}{'Ray - in process':>18}")
    for phase in inline:
        print(f"{phase:32}{inline[phase]:>12.1f}{on_ray[phase]:>14.1f}{on_ray[phase] - inline[phase]:>18.1f}")
    size, written, copied = checkpoint_cost(spec)
    print(f"one checkpoint: {size:.0f} MB, written in {written:.1f} s, copied (upload) in {copied:.1f} s")


def timed(fn, spec) -> float:
    began = time.perf_counter()
    fn(spec)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--epochs", type=int, nargs=2, default=(5, 105), metavar=("SHORT", "LONG"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--breakdown", action="store_true",
                        help="split one run of the config's own method, in process and on Ray, into its phases")
    args = parser.parse_args()
    base = load_config(args.config, [*([] if args.breakdown else ["method=naive"]), "tracking.backend=none",
                                     *args.overrides])
    import logging

    import ray

    logging.getLogger("gblend_ray").setLevel(logging.ERROR)
    # the workers' own output (Ray Train's reports and warnings) stays off the table
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False,
             logging_level=logging.WARNING)
    if args.breakdown:
        breakdown(base, args.config)
        ray.shutdown()
        return
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

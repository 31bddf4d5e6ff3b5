"""What online G-Blend costs over naive fusion on Ray, exact and with the two shortcuts
(``probes.subset``, ``probes.overlap``), and what they cost in test top-1.

On a local Ray cluster started here, for each seed, one after another: naive fusion, then
online G-Blend exact (Algorithm 3), with ``probes.subset 0.25``, overlapped
(``probes.overlap``), and overlapped with ``probes.subset 0.25``. Printed per setting (means
over the seeds), side by side with the ratios to naive fusion:

- ``wall s``: the whole ``run_on_ray`` call (start-up of the Train worker group, the
  coordinator and the probe trials included: ~17 s a run on 2 cores);
- ``loop s``: the trainer's loop on rank 0 (training, boundaries, per-epoch curves, test,
  and an overlapped run's wait for its last round), the wall time once its processes are up;
- ``boundary s``: of that, the time rank 0 stood at boundaries (``trained_weights.json``'s
  ``boundary_seconds``): checkpoint and round (exact), checkpoint and the wait for a round
  that had not arrived (overlapped);
- ``trainer CPU s`` and ``probe CPU s``: user + system CPU seconds of the Ray Train worker
  process and of the probe-trial processes over the run, start-up (imports, data) included,
  read with psutil every 0.2 s (up to 0.2 s of a process's last CPU time is missed when it
  exits); Ray's own processes (controller, coordinator, raylet) are left out;
- ``probe s``: the probes' compute seconds (``probe_seconds`` summed over the trajectory's
  rounds and heads: wall time inside the probe processes, measuring and training);
- ``delay ep``: overlapped runs, the mean over rounds of how many epochs after its boundary
  a round's weights took effect (``applied``; a round that never did counts to the run's end);
- ``test top-1 %`` of the prediction head.

Run by hand:

    RAY_AUTH_MODE=disabled python bench/gblend_cost.py [--config search_spaces/quickstart.yaml] [--seeds 1] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import psutil

from gblend_ray.interfaces.config import load_config
from gblend_ray.storage.rundir import TRAINED
from gblend_ray.training.checkpoint import load_checkpoint

SETTINGS = {  # name: (method, probes.subset, probes.overlap)
    "naive": ("naive", 1.0, False),
    "online exact": ("gblend:online", 1.0, False),
    "online subset 0.25": ("gblend:online", 0.25, False),
    "online overlap": ("gblend:online", 1.0, True),
    "online overlap+subset 0.25": ("gblend:online", 0.25, True),
}
ROLES = {"RayTrainWorker": "trainer", "ImplicitFunc": "probe", "probe_trial": "probe"}
"""Process-title fragments (Ray names a worker process after the actor it hosts) → role."""
SAMPLE_S = 0.2


class CpuSampler:
    """CPU seconds of this process's descendants by role, while ``running``: a pid's CPU at
    its first sample is left out when it already lived before the run began."""

    def __init__(self):
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        for p in psutil.Process().children(recursive=True):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    title = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self._first.setdefault(p.pid, cpu if p.pid in self._before else 0.0)
            self._last[p.pid] = cpu
            role = next((r for fragment, r in ROLES.items() if fragment in title), None)
            if role is not None:
                self._role[p.pid] = role

    def seconds(self, role: str) -> float:
        return sum(self._last[p] - self._first[p] for p, r in self._role.items() if r == role)

    def processes(self, role: str) -> int:
        return sum(r == role for r in self._role.values())


def one_run(spec, steps_per_epoch: int) -> dict:
    from gblend_ray.distributed.ray_runner import fit_on_ray

    with tempfile.TemporaryDirectory(prefix="gblend-cost-") as out, CpuSampler() as cpu:
        began = time.perf_counter()
        results, result = fit_on_ray(spec, out)
        wall = time.perf_counter() - began
        with result.checkpoint.as_directory() as d:
            loop = load_checkpoint(d).results["seconds"]  # rank 0's, before the driver rewrote it
        trained = json.loads((Path(out) / TRAINED).read_text())
    boundary = sum(s for t in trained if t["rank"] == 0 for s in t["boundary_seconds"] if s is not None)
    applied = [r.get("applied") for r in results["trajectory"]]
    delays = [(a["epoch"] + a["step"] / steps_per_epoch if a is not None else spec.train.epochs) - r["epoch"]
              for a, r in zip(applied, results["trajectory"])]
    # a title Ray no longer gives these processes would read as 0 s: refuse it
    if cpu.processes("trainer") != spec.trainer.num_workers or (applied and not cpu.processes("probe")):
        raise RuntimeError(f"found {cpu.processes('trainer')} trainer and {cpu.processes('probe')} probe processes by "
                           f"their titles {sorted(ROLES)}; Ray names its worker processes otherwise now")
    probe_s = sum(h["probe_seconds"] for r in results["trajectory"] for h in r["heads"].values())
    return {"wall": wall, "loop": loop, "boundary": boundary, "probe_s": probe_s, "delay": statistics.fmean(delays) if delays else None,
            "trainer_cpu": cpu.seconds("trainer"), "probe_cpu": cpu.seconds("probe"),
            "top1": 100 * results["test"]["top1"], "never": sum(a is None for a in applied)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.config, ["tracking.backend=none", *args.overrides])
    import ray

    from gblend_ray.data.loading import ensure_dataset, prepare_data
    from gblend_ray.distributed.ray_runner import cpus_for

    logging.getLogger("gblend_ray").setLevel(logging.ERROR)  # the rounds' warnings: the table says it
    heads = len(ensure_dataset(base).modalities) + 1
    steps_per_epoch = math.ceil(len(prepare_data(base).train) / base.train.batch_size)
    ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS") else
             max(os.cpu_count() or 1, int(cpus_for(base, heads) + 0.999)),
             log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for seed in range(args.seeds):
        for name, (method, subset, overlap) in SETTINGS.items():
            spec = dataclasses.replace(base, method=method, seed=seed,
                                       probes=dataclasses.replace(base.probes, subset=subset, overlap=overlap))
            runs[name].append(one_run(spec, steps_per_epoch))
    ray.shutdown()

    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs[name])

    print(f"{args.config} {' '.join(args.overrides)}: {args.seeds} seed(s), {os.cpu_count()} cores, "
          f"trainer {base.trainer.num_workers} x {dict(base.trainer.resources_per_worker)}, "
          f"probe trials {dict(base.probes.resources)} each")
    print(f"{'':28}{'wall s':>7}{'/naive':>7}{'loop s':>7}{'/naive':>7}{'boundary s':>11}{'trainer CPU s':>14}"
          f"{'probe CPU s':>12}{'CPU /naive':>11}{'probe s':>8}{'delay ep':>9}{'test top-1 %':>15}")
    cpu_naive = mean("naive", "trainer_cpu") + mean("naive", "probe_cpu")
    for name in SETTINGS:
        top1 = [r["top1"] for r in runs[name]]
        spread = f" ± {statistics.pstdev(top1):.1f}" if len(top1) > 1 else ""
        cpu = mean(name, "trainer_cpu") + mean(name, "probe_cpu")
        delay = f"{mean(name, 'delay'):>9.2f}" if SETTINGS[name][2] else f"{'':>9}"
        print(f"{name:28}{mean(name, 'wall'):>7.1f}{mean(name, 'wall') / mean('naive', 'wall'):>7.2f}"
              f"{mean(name, 'loop'):>7.1f}{mean(name, 'loop') / mean('naive', 'loop'):>7.2f}"
              f"{mean(name, 'boundary'):>11.1f}{mean(name, 'trainer_cpu'):>14.1f}{mean(name, 'probe_cpu'):>12.1f}"
              f"{cpu / cpu_naive:>11.2f}{mean(name, 'probe_s'):>8.1f}{delay}{statistics.fmean(top1):>9.1f}{spread:<6}")
    never = sum(r["never"] for name in SETTINGS for r in runs[name])
    print(f"rounds that arrived after the last step (never trained with): {never}; load average (1, 5, 15 min) "
          f"before {' '.join(f'{x:.1f}' for x in load_before)}, after {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Helpers for the run-lifecycle tests: ``gblend`` as a real process, killed with SIGKILL
at a point read from its run directory, and the comparison of two run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TIMING = {"seconds", "probe_seconds", "probe_started", "probe_ended", "round_seconds", "boundary_seconds", "pids",
          "pid", "updated", "started"}
"""Fields that differ between any two runs (wall times, process ids): left out of comparisons."""
COMPARED = ("results.json", "trajectory.json", "metrics.jsonl", "rounds.jsonl", "rounds.csv")


def gblend(args: list[str], cwd: Path, env: dict | None = None, kill_when: Callable[[], bool] | None = None,
           timeout: float = 300, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """Run ``gblend ARGS`` in ``cwd``; with ``kill_when``, send ``sig`` (SIGKILL; SIGINT is
    a terminal's Ctrl-C) to its whole process group as soon as it returns true (polled
    every 20 ms). ``returncode`` is -9 when killed."""
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "gblend_ray.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    if kill_when is not None:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_when():
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.02)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"gblend {' '.join(args)} ran past {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def rounds_of(run: Path) -> list[int]:
    try:
        return [r["epoch"] for r in json.loads((run / "trajectory.json").read_text())]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _close(a, b, where: str, tol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=tol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _drop(value: dict, dotted: str) -> dict:
    head, _, rest = dotted.partition(".")
    if head in value and isinstance(value, dict):
        value = dict(value)
        if rest and isinstance(value[head], dict):
            value[head] = _drop(value[head], rest)
        elif not rest:
            del value[head]
    return value


def assert_same_run(resumed: Path, reference: Path, tol: float = 1e-6, extra: tuple[str, ...] = (),
                    ignore: tuple[str, ...] = ()) -> None:
    """Every record file of ``resumed`` holds what ``reference`` (an uninterrupted run of
    the same config) holds: no record lost, none doubled, numbers within ``tol``, test
    metrics equal. ``ignore``: dotted keys of ``results.json`` that may differ."""
    for name in (*COMPARED, *extra):
        a, b = resumed / name, reference / name
        assert a.is_file(), f"{a} is missing"
        if name.endswith(".csv"):
            assert a.read_text().splitlines()[0] == b.read_text().splitlines()[0]
            _close(_csv(a), _csv(b), name, tol)
        elif name.endswith(".jsonl"):
            _close(_strip(lines(a)), _strip(lines(b)), name, tol)
        else:
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for key in ignore if name == "results.json" else ():
                x, y = _drop(x, key), _drop(y, key)
            _close(_strip(x), _strip(y), name, tol)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (resumed, reference))
    assert ra["test"] == rb["test"]


def _csv(path: Path) -> list[list]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [[float(x) if x else None for x in row] for row in rows]


def wandb_epochs(run: Path) -> tuple[list[Path], list]:
    """The offline W&B run files of a run directory and the ``epoch`` series of the first."""
    from wandb_files import series, wandb_view

    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    return files, series(wandb_view(files[0])["rows"], "epoch") if files else []

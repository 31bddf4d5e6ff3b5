"""The reaper: when the driver that started a local Ray cluster dies, the cluster dies too.

``ray.init()`` starts a local cluster's processes (GCS, raylet, agents, workers) as the
driver's descendants; if the driver is killed (SIGKILL, a closed terminal), they are
left running — trainer workers that keep training and writing checkpoints, agents
re-parented to init. ``connect`` therefore marks the cluster's processes with an
environment variable they all inherit and starts this reaper in its own session. It
polls the driver; once the driver is gone it sends SIGTERM to every process carrying
the mark, then SIGKILL to those left after a grace period, and exits. Only psutil and
the standard library: it must start in a fraction of a second.

    python -m gblend_ray.distributed.reaper DRIVER_PID MARK
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

MARK_ENV = "GBLEND_LOCAL_CLUSTER"
POLL_S = 0.5
GRACE_S = 5.0


def _carries(proc: psutil.Process, entry: bytes) -> bool:
    """Whether ``proc``'s environment holds ``entry``. Read raw from /proc where there is
    one: a process that renames itself (Ray's ``ray::DashboardAgent``) overwrites the start
    of its environment block with NULs, and psutil's parser then sees an empty one."""
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except FileNotFoundError:
        pass
    except OSError:
        return False
    name, _, value = entry.decode().partition("=")
    return proc.environ().get(name) == value


def marked(mark: str) -> list[psutil.Process]:
    """The processes whose environment carries ``MARK_ENV=mark`` (this one excluded)."""
    entry = f"{MARK_ENV}={mark}".encode()
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if _carries(proc, entry):
                found.append(proc)
        except Exception:  # noqa: BLE001 - a process that vanished or cannot be read is not ours to end
            continue
    return found


def reap(mark: str, seen: dict[int, psutil.Process] | None = None, grace_s: float = GRACE_S) -> list[int]:
    """End every marked process and every one of ``seen`` still running (SIGTERM, then
    SIGKILL after ``grace_s``); their pids."""
    procs = {p.pid: p for p in marked(mark)}
    for pid, proc in (seen or {}).items():
        if pid == os.getpid():  # the driver's child too: never this process
            continue
        try:
            if proc.is_running():  # the same process: psutil checks its start time
                procs.setdefault(pid, proc)
        except psutil.Error:
            continue
    procs = list(procs.values())
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in procs]


def watch(driver_pid: int, mark: str) -> None:
    try:
        driver = psutil.Process(driver_pid)
        born = driver.create_time()
    except psutil.NoSuchProcess:
        born = None
    seen: dict[int, psutil.Process] = {}
    while born is not None:
        try:
            if driver.create_time() != born or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for child in driver.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    reap(mark, seen)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a cluster shutting down does not end its reaper
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2])

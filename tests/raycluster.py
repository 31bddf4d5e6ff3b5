"""Ray clusters that tests start themselves with ``ray start`` (their own temp dir and
ports, on loopback) and stop by the pids they started: never ``ray stop``, which would
end every Ray cluster on the machine."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def quiet_ports(n: int) -> list[int]:
    """``n`` distinct ports that no process of a Ray cluster takes by itself: above Ray's
    default worker ports (10002–19999) and below the kernel's ephemeral range, from which
    every port-0 listener and every outgoing connection's local end is drawn. A cluster in
    a network namespace of its own needs these: ``free_ports`` checks the test's namespace,
    and a port it returns (ephemeral) can be taken in the other by the time a node binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = random.sample(sorted(set(range(20000, min(ephemeral_low, 65536))) - _QUIET_GIVEN), n)
    _QUIET_GIVEN.update(ports)  # never the same port twice in one session (a test's nodes run at once)
    return ports


_QUIET_GIVEN: set[int] = set()


def cluster_pids(marker_env: str, marker: str, temp_dir: str | None) -> set[int]:
    """Live (non-zombie) processes of this user that belong to the test's cluster: those whose
    environment carries the marker or whose command line names its temp dir, and their
    descendants. With ``temp_dir=None`` the environment alone decides (the nodes of one
    cluster all name its temp dir)."""
    uid, me = os.getuid(), os.getpid()
    parent, matched = {}, set()
    tag = f"{marker_env}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state == "Z":
                continue
            parent[pid] = int(ppid)
            if (temp_dir is not None and f"{temp_dir}/".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()) \
                    or tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                matched.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in matched and pid not in matched}
        matched |= more
        grew = bool(more)
    return matched - {me}


def stop_cluster(marker_env: str, marker: str, temp_dir: str | None) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after a grace period (gcs_server
    and the autoscaler monitor outlive a SIGTERM by far: `ray stop` kills them after its 16 s
    grace period too); returns the pids still alive at the end (none, normally)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10), (signal.SIGKILL, 5)):
        pids = cluster_pids(marker_env, marker, temp_dir)
        if not pids:
            return set()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and cluster_pids(marker_env, marker, temp_dir):
            time.sleep(0.5)
    return cluster_pids(marker_env, marker, temp_dir)

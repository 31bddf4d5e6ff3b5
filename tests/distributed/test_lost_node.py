"""A lost node: a head and a second node started with ``ray start`` on loopback, the
trainer on the second node (a custom resource only it has), that node's processes killed
by pid in the middle of a super-epoch, a replacement node added, and the run completes
with every boundary of the trajectory exactly once.

Ray gives every node of a multi-node cluster the machine's interface address, so the
cluster runs in a network namespace of the test's own that has only a loopback interface
(``ip netns``, as root): its nodes then talk over 127.0.0.1 and nothing leaves it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from lifecycle import lines, rounds_of
from raycluster import cluster_pids, quiet_ports, stop_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = Path(sys.executable).parent / "ray"
MARK = "GBLEND_TEST_NODE"
# The head notices a dead node within seconds rather than the default ~30 s.
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_timeout_ms": "1000"}


def _env(mark: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", MARK)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # several nodes: not Ray's single-node local mode
    return {**env, **FAST_HEALTH, MARK: mark, "RAY_AUTH_MODE": "disabled",
            # a loaded 2-core machine can take longer than Ray's 30 s to register a raylet
            "RAY_raylet_start_wait_time_s": "120",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture
def netns():
    """A network namespace with only a loopback interface; the prefix that runs a command in it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip netns` for a loopback-only network namespace")
    name = f"gblend-{os.getpid()}-{time.monotonic_ns() % 100000}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def _start(args: list[str], mark: str, cwd: str, netns: list[str]) -> None:
    ports = quiet_ports(6)
    cmd = [*netns, str(RAY), "start", *args, "--node-ip-address=127.0.0.1", "--disable-usage-stats",
           f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
           f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
           f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}"]
    done = subprocess.run(cmd, env=_env(mark), capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(600)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the nodes' processes in /proc")
def test_a_lost_trainer_node_is_replaced_and_the_run_completes(av_overfit, tmp_path, netns):
    temp_dir = tempfile.mkdtemp(prefix="n", dir="/tmp")  # unix socket paths must stay short
    gcs, client = quiet_ports(2)
    marks = {"head": f"{Path(temp_dir).name}-head", "a": f"{Path(temp_dir).name}-a", "b": f"{Path(temp_dir).name}-b"}
    try:
        _start(["--head", f"--port={gcs}", "--num-cpus=3", '--resources={"gblend_stable": 1000}',
                "--include-dashboard=false", f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}"],
               marks["head"], temp_dir, netns)
        node = ["--address=127.0.0.1:%d" % gcs, "--num-cpus=1", '--resources={"trainer_node": 1}']
        _start(node, marks["a"], temp_dir, netns)
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({
            "data": {"path": str(av_overfit)}, "method": "gblend:online", "tracking": {"backend": "none"},
            "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
            "train": {"epochs": 10, "batch_size": 8, "threads": 1}, "blend": {"warmup_epochs": 2, "super_epoch": 4},
            "trainer": {"resources_per_worker": {"CPU": 1, "trainer_node": 1}, "max_failures": 1,
                        "resource_wait_s": 0},
            "probes": {"resources": {"CPU": 0.5}}}))
        run = tmp_path / "run"
        env = {**_env(marks["head"]), "RAY_ADDRESS": f"127.0.0.1:{gcs}", "WANDB_MODE": "offline"}
        proc = subprocess.Popen([*netns, sys.executable, "-m", "gblend_ray.cli", "run", str(cfg), "--out", str(run)],
                                cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

        def trained() -> list[dict]:
            try:
                return json.loads((run / "trained_weights.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return []

        def inside_the_second_super_epoch() -> bool:  # epochs 3-6: killed with three epochs still to train
            return (any(t["epoch"] == 2 for t in trained())
                    and any(r["epoch"] >= 3 for r in lines(run / "metrics.jsonl")))

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not inside_the_second_super_epoch():
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        worker = next(t for t in trained() if t["epoch"] == 2)["pids"][0]
        doomed = cluster_pids(MARK, marks["a"], None)
        assert worker in doomed, "the trainer worker is not on the second node"
        for pid in doomed:  # the node dies: its raylet, its workers, its agents
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _start(node, marks["b"], temp_dir, netns)  # the replacement the worker group restarts on
        out, err = proc.communicate(timeout=420)
        assert proc.returncode == 0, err[-4000:]
        assert rounds_of(run) == [0, 2, 6]  # every boundary exactly once
        records = {t["epoch"]: t for t in trained()}
        assert sorted(records) == [0, 2, 6] and len(records[2]["pids"]) == 2  # the segment trained again
        assert records[2]["pids"][0] == worker != records[2]["pids"][1]
        # the segments after the loss trained on the replacement node
        assert records[6]["pids"][0] in cluster_pids(MARK, marks["b"], None) | {records[2]["pids"][1]} or not \
            psutil.pid_exists(records[6]["pids"][0])
        results = json.loads((run / "results.json").read_text())
        assert [h["epoch"] for h in results["history"]] == list(range(1, 11))
    finally:
        for mark in (marks["a"], marks["b"], marks["head"]):
            stop_cluster(MARK, mark, None)
        left = set().union(*(cluster_pids(MARK, m, None) for m in marks.values()))
        assert not left, f"processes of the test's cluster still alive: {sorted(left)}"

"""Cluster-launch files: launch/cluster.yaml, launch/rayjob.yaml and launch/submit.sh.

The end-to-end test starts its own Ray cluster with `ray start --head` (separate temp dir,
ports and processes), submits the quickstart sweep (shrunk with --set) to it with launch/submit.sh, and stops
exactly that cluster afterwards. It never runs `ray stop`: that kills every Ray process
of the user on the machine, which would take down the session's `ray_cluster` fixture
(started by `ray.init()` in this pytest process) and any other Ray on the machine.
Instead every process of the test's cluster carries a marker in its environment (which
children inherit, the job's driver and Ray workers included) and is found through /proc.
The cluster runs in Ray's local-only mode, so that it listens and connects on loopback only.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SUBMIT = LAUNCH / "submit.sh"
BIN = Path(sys.executable).parent  # `ray` and `python` of this environment
RAY = BIN / "ray"
MARKER = "GBLEND_TEST_LAUNCH_CLUSTER"

TINY = {"model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 4, "batch_size": 32, "threads": 1},
        "blend": {"warmup_epochs": 2, "super_epoch": 2}}


def _env(**extra) -> dict:
    """This environment, minus what would point a child at another Ray, with this venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_CLIENT_MODE", "PYTHONBREAKPOINT", MARKER)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# --- the YAML files ---------------------------------------------------------------------

def test_cluster_yaml_is_a_ray_cluster_config_with_a_gpu_worker():
    config = yaml.safe_load((LAUNCH / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in config, key
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0
    gpu = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu and config["head_node_type"] not in gpu
    (worker,) = gpu.values()
    assert worker["node_config"]["InstanceType"].startswith("g5.")
    assert worker["min_workers"] == 0 and worker["max_workers"] == 4
    assert any("pip install" in c and "gblend_ray" in c for c in config["setup_commands"])
    # Ray's own schema for cluster configs (what `ray up` checks first); no cloud is contacted.
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import validate_config

    validate_config(config)


def test_rayjob_yaml_is_a_kuberay_rayjob_with_a_gpu_worker_group():
    docs = [d for d in yaml.safe_load_all((LAUNCH / "rayjob.yaml").read_text()) if d]
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"] == ("python -m gblend_ray.cli sweep search_spaces/quickstart.yaml "
                                  "--out /mnt/runs/quickstart")
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    (group,) = cluster["workerGroupSpecs"]
    worker_pod = group["template"]["spec"]
    assert worker_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in head_pod["containers"][0]["resources"].get("limits", {})
    for pod in (head_pod, worker_pod):  # the shared OUT_DIR, on every pod
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "/mnt/runs" in mounts and mounts["/mnt/runs"] in volumes
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["WANDB_MODE"] == "offline"


# --- submit.sh without a cluster ---------------------------------------------------------

def test_submit_sh_is_executable_bash():
    assert os.access(SUBMIT, os.X_OK)
    assert SUBMIT.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in SUBMIT.read_text()
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)


def test_submit_sh_refuses_without_ray_address_or_arguments(tmp_path):
    done = subprocess.run([str(SUBMIT), "search_spaces/quickstart.yaml", str(tmp_path / "out")],
                          env=_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "RAY_ADDRESS" in done.stderr
    env = _env(RAY_ADDRESS="http://127.0.0.1:1")
    done = subprocess.run([str(SUBMIT), "search_spaces/quickstart.yaml"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "usage:" in done.stderr
    done = subprocess.run([str(SUBMIT), "search_spaces/quickstart.yaml", "runs/relative"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "absolute" in done.stderr


def test_submit_sh_builds_the_ray_job_submit_command(tmp_path):
    """A stand-in `ray` first on PATH records what submit.sh would run."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGS_FILE"\n')
    (fake / "ray").chmod(0o755)
    args_file = tmp_path / "args"
    env = _env(RAY_ADDRESS="http://127.0.0.1:8265", ARGS_FILE=str(args_file), WANDB_MODE='dis"abled')
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    out = tmp_path / "out dir"
    subprocess.run([str(SUBMIT), str(REPO / "search_spaces" / "quickstart.yaml"), str(out),
                    "--set", "train.epochs=2"], env=env, check=True, cwd=tmp_path, timeout=30)
    args = args_file.read_bytes().decode().split("\0")[:-1]
    assert args[:2] == ["job", "submit"]
    assert args[args.index("--address") + 1] == "http://127.0.0.1:8265"
    assert Path(args[args.index("--working-dir") + 1]).resolve() == REPO.resolve()
    runtime_env = json.loads(args[args.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"] == {"WANDB_MODE": 'dis"abled'}
    assert {"/data/", "/runs/", "/.venv/"} <= set(runtime_env["excludes"])
    assert "pip" not in runtime_env
    entrypoint = args[args.index("--") + 1:]
    assert entrypoint == ["python", "-m", "gblend_ray.cli", "sweep", "search_spaces/quickstart.yaml",
                          "--out", str(out), "--set", "train.epochs=2"]


# --- end to end: a local cluster started with `ray start`, a job submitted with submit.sh ---

def _free_ports(n: int) -> list[int]:
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


def _cluster_pids(marker: str, temp_dir: str) -> set[int]:
    """Live (non-zombie) processes of this user that belong to the test's cluster: those whose
    environment carries the marker or whose command line names its temp dir, and their
    descendants."""
    uid, me = os.getuid(), os.getpid()
    parent, matched = {}, set()
    tag = f"{MARKER}={marker}".encode()
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
            if f"{temp_dir}/".encode() in Path(f"/proc/{pid}/cmdline").read_bytes() \
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


def _stop_cluster(marker: str, temp_dir: str) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after a grace period (gcs_server
    and the autoscaler monitor outlive a SIGTERM by far: `ray stop` kills them after its 16 s
    grace period too); returns the pids still alive at the end (none, normally)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10), (signal.SIGKILL, 5)):
        pids = _cluster_pids(marker, temp_dir)
        if not pids:
            return set()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and _cluster_pids(marker, temp_dir):
            time.sleep(0.5)
    return _cluster_pids(marker, temp_dir)


def _wait_for_dashboard(url: str, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    deadline = time.time() + timeout
    while True:
        try:
            with opener.open(f"{url}/api/version", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"the dashboard at {url} did not answer in {timeout:.0f} s")
        time.sleep(1)


def _quickstart_overrides(data: Path) -> list[str]:
    """The quickstart sweep itself, shrunk for a test: every method, one seed, tiny runs,
    each trial trained in its Tune trial's process."""
    sets = [f"data.path={data}", "tracking.backend=none", "sweep.engine=inline", "sweep.grid.seed=[0]"]
    for section, values in TINY.items():
        sets += [f"{section}.{k}={v}" for k, v in values.items()]
    return [x for s in sets for x in ("--set", s)]


@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the cluster's processes in /proc")
@pytest.mark.ray
@pytest.mark.slow
def test_submit_sh_runs_a_sweep_on_a_cluster_started_with_ray_start(tmp_path):
    if not RAY.exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    data = tmp_path / "av-overfit"
    subprocess.run([sys.executable, "-m", "gblend_ray.cli", "make-synthetic", str(data), "--preset", "av-overfit"],
                   env=_env(), check=True, capture_output=True, timeout=120)
    out = tmp_path / "sweep"

    # Unix socket paths (under the temp dir's session dir) must stay short: not under tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    marker = Path(temp_dir).name
    gcs, dashboard, *more = _free_ports(9)
    url = f"http://127.0.0.1:{dashboard}"
    start = [str(RAY), "start", "--head", f"--port={gcs}", "--num-cpus=4",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}",
             # every port explicit, so that nothing collides with another Ray on this machine
             f"--dashboard-agent-listen-port={more[0]}", f"--dashboard-agent-grpc-port={more[1]}",
             f"--runtime-env-agent-port={more[2]}", f"--metrics-export-port={more[3]}",
             f"--node-manager-port={more[4]}", f"--object-manager-port={more[5]}",
             f"--ray-client-server-port={more[6]}"]
    output = ""
    try:
        # On Linux Ray ignores --node-ip-address=127.0.0.1 and uses the machine's interface
        # address; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (local-only mode) keeps it on loopback.
        env = _env(**{MARKER: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr
        assert (Path(temp_dir) / "ray_current_cluster").read_text().startswith("127.0.0.1:")
        _wait_for_dashboard(url, timeout=60)

        submit = subprocess.Popen([str(SUBMIT), str(REPO / "search_spaces" / "quickstart.yaml"), str(out),
                                   *_quickstart_overrides(data)], env=_env(RAY_ADDRESS=url),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True, cwd=tmp_path)
        try:
            output, _ = submit.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(submit.pid, signal.SIGKILL)
            output, _ = submit.communicate()
            pytest.fail(f"the job did not finish in 180 s:\n{output[-6000:]}")
        assert submit.returncode == 0, output[-6000:]
        assert "succeeded" in output, output[-6000:]

        rows = json.loads((out / "sweep.json").read_text())
        quickstart = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
        assert sorted(r["overrides"]["method"] for r in rows) == sorted(quickstart["sweep"]["grid"]["method"])
        assert all(r["status"] == "ok" for r in rows), rows
        for r in rows:
            run_dir = Path(r["run_dir"])
            assert run_dir.parent.resolve() == (out / "trials").resolve()
            assert json.loads((run_dir / "results.json").read_text())["method"] == r["overrides"]["method"]
    finally:
        left = _stop_cluster(marker, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of the test's cluster still alive: {sorted(left)}"

"""Cluster-launch files: launch/cluster.yaml, launch/rayjob.yaml, launch/submit.sh and .rayignore.

The fast tests read the files: cluster.yaml against Ray's own schema for cluster configs,
the RayJob manifest's fields, submit.sh against a stand-in `ray` that records what it is
asked to run and answers `ray job status` as told, and the one exclusion list, .rayignore.

The end-to-end tests start one Ray cluster with `ray start --head` (separate temp dir,
ports and processes) for the module, submit jobs to it with launch/submit.sh (the
quickstart sweep shrunk with --set, a second submit over the same OUT_DIR, a job that fails,
a job that is stopped), and stop exactly that cluster afterwards. They never run `ray stop`:
that kills every Ray process of the user on the machine, which would take down the
session's `ray_cluster` fixture (started by `ray.init()` in this pytest process) and any
other Ray on the machine. Instead every process of the test's cluster carries a marker in
its environment (which children inherit, the job's driver and Ray workers included) and is
found through /proc. The cluster runs in Ray's local-only mode, so that it listens and
connects on loopback only.
"""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from raycluster import free_ports, stop_cluster

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SUBMIT = LAUNCH / "submit.sh"
RAYIGNORE = REPO / ".rayignore"
BIN = Path(sys.executable).parent  # `ray` and `python` of this environment
RAY = BIN / "ray"
MARKER = "GBLEND_TEST_LAUNCH_CLUSTER"
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
STABLE = "gblend_stable"
# submit.sh's exit codes (its header documents them)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_NOT_SUBMITTED, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5

TINY = {"model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 4, "batch_size": 32, "threads": 1},
        "blend": {"warmup_epochs": 2, "super_epoch": 2}}


def _env(**extra) -> dict:
    """This environment, minus what would point a child at another Ray or pick its
    submission id, with this venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_CLIENT_MODE", "PYTHONBREAKPOINT", MARKER,
                        "GBLEND_SUBMISSION_ID", "GBLEND_SUBMIT_ARGS", "WANDB_MODE", "WANDB_API_KEY")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def _rayignore() -> list[str]:
    """The patterns of .rayignore, in order."""
    lines = (line.strip() for line in RAYIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _default_submission_id(out: str) -> str:
    """What submit.sh derives from OUT_DIR (its header says how)."""
    key = out.rstrip("/") or "/"
    name = re.sub(r"[^A-Za-z0-9_-]", "-", key.split("?", 1)[0].rsplit("/", 1)[-1])[:40]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"gblend-{name}-{digest}" if name else f"gblend-{digest}"


# --- .rayignore: the one exclusion list ----------------------------------------------------

def test_rayignore_lists_what_no_job_upload_takes():
    patterns = _rayignore()
    assert {"/data", "/runs", "/.venv", "/.git", "/wandb", "__pycache__", "*.egg-info", ".pytest_cache"} <= set(patterns)
    assert not [p for p in patterns if p.endswith("/")]  # Ray would walk such a directory and upload it empty
    assert len(patterns) == len(set(patterns))


def test_ray_reads_rayignore_from_the_working_dir():
    """What `ray job submit --working-dir REPO` leaves out: Ray's own reading of the repo's
    .rayignore (the function its upload uses), so submit.sh needs no excludes of its own."""
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    matchers = get_excludes_from_ignore_files(REPO, include_gitignore=False)
    assert len(matchers) == 1  # .rayignore alone, .gitignore left out on purpose

    def excluded(rel: str) -> bool:
        return any(m(REPO / rel) for m in matchers)

    for rel in ("data", "data/av-overfit/x.npy", "runs", "wandb", ".venv", ".git", "gblend_ray/__pycache__",
                "gblend_ray.egg-info", ".pytest_cache", ".ruff_cache"):
        assert excluded(rel), rel
    for rel in ("gblend_ray", "gblend_ray/cli.py", "search_spaces/quickstart.yaml", "launch/submit.sh",
                "gblend_ray/data", "tests/data"):
        assert not excluded(rel), rel


def test_rayjob_and_cluster_yaml_use_rayignore():
    job = _rayjob()
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["excludes"] == _rayignore()
    cluster = yaml.safe_load((LAUNCH / "cluster.yaml").read_text())
    assert ".rayignore" in cluster["rsync_filter"]
    # the image build: .dockerignore made from .rayignore, as the header shows
    assert ".rayignore > .dockerignore" in (LAUNCH / "rayjob.yaml").read_text()


# --- cluster.yaml ------------------------------------------------------------------------------

def _cluster() -> dict:
    return yaml.safe_load((LAUNCH / "cluster.yaml").read_text())


def _is_spot(node_type: dict) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_cluster_yaml_validates_against_rays_schema():
    """The schema that the installed Ray ships and `ray up` checks first; no cloud is contacted."""
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = _cluster()
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import validate_config

    validate_config(config)  # the same schema, plus Ray's own checks of a loaded config


def test_cluster_yaml_has_a_stable_head_and_spot_gpu_workers():
    config = _cluster()
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and not _is_spot(head)
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu and config["head_node_type"] not in gpu
    (worker,) = gpu.values()
    assert worker["node_config"]["InstanceType"].startswith("g5.")
    assert worker["min_workers"] == 0 and worker["max_workers"] == 4
    # gblend_stable on every on-demand type (the head among them), on no spot type
    for name, node_type in types.items():
        if _is_spot(node_type):
            assert STABLE not in node_type["resources"], name
        else:
            assert node_type["resources"].get(STABLE, 0) >= 1, name
    assert _is_spot(worker)
    assert any("pip install" in c and "gblend_ray" in c for c in config["setup_commands"])


def test_cluster_yaml_names_a_current_gpu_image():
    config = _cluster()
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["ImageId"] == f"resolve:ssm:{DLAMI_PARAMETER}", name
    text = (LAUNCH / "cluster.yaml").read_text()
    assert "latest_dlami" not in yaml.safe_dump(config)
    assert "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)" in text
    assert re.search(r"NVIDIA\s+driver \d{3}\.", text) and re.search(r"CUDA 1[23]\.\d", text)
    version = ray.__version__
    assert config["docker"]["head_image"] == f"rayproject/ray:{version}-py311-cpu"
    assert config["docker"]["worker_image"] == f"rayproject/ray:{version}-py311-gpu"


def test_cluster_yaml_writes_runs_to_object_storage():
    config = _cluster()
    text = (LAUNCH / "cluster.yaml").read_text()
    assert re.search(r"launch/submit\.sh [^\n]*(\\\n#\s*)?s3://", text)  # the usage line's OUT_DIR
    assert not any("/mnt/runs" in opt for opt in config["docker"]["run_options"])
    assert not any("mount" in c for c in config["initialization_commands"])


def test_cluster_yaml_passes_the_wandb_key_to_the_containers_without_writing_it(tmp_path):
    """`docker run` gets WANDB_API_KEY from the host shell that Ray runs it in (asked of AWS
    Secrets Manager there); no key is in the file. Checked with Ray's own wrapping of host
    commands and a stand-in `docker` and `aws`."""
    from ray.autoscaler._private.command_runner import _with_interactive

    config = _cluster()
    (env_opt,) = [o for o in config["docker"]["run_options"] if o.startswith("--env WANDB_API_KEY")]
    assert env_opt.startswith('--env WANDB_API_KEY="$(aws secretsmanager get-secret-value ')
    assert not re.search(r"WANDB_API_KEY[=:]\s*['\"]?[0-9a-f]{20,}", (LAUNCH / "cluster.yaml").read_text())

    home, fake = tmp_path / "home", tmp_path / "home" / "bin"
    fake.mkdir(parents=True)
    (fake / "docker").write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$HOME/docker-args"\n')
    (fake / "aws").write_text("#!/usr/bin/env bash\necho test-key-123\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    (home / ".bashrc").write_text(f"export PATH={fake}:$PATH\n")  # a login shell resets PATH
    docker_run = " ".join(["docker", "run", "--rm", "-d", *config["docker"]["run_options"], "--net=host", "IMAGE"])
    host_command = " ".join(_with_interactive(docker_run))  # what Ray's SSH runner sends
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "TERM": "dumb"}
    subprocess.run(["bash", "-c", host_command], env=env, check=True, capture_output=True, timeout=30)
    args = (home / "docker-args").read_bytes().decode().split("\0")[:-1]
    assert args[args.index("--env") + 1] == "WANDB_API_KEY=test-key-123"
    (fake / "aws").unlink()  # no secret to read: an empty key, and W&B offline
    subprocess.run(["bash", "-c", host_command], env=env, check=True, capture_output=True, timeout=30)
    args = (home / "docker-args").read_bytes().decode().split("\0")[:-1]
    assert args[args.index("--env") + 1] == "WANDB_API_KEY="


# --- rayjob.yaml -------------------------------------------------------------------------------

def _rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((LAUNCH / "rayjob.yaml").read_text()) if d]
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    return job


def _ray_start_resources(params: dict) -> dict:
    """rayStartParams.resources as KubeRay expects it ('"{\\"name\\": n}"'), parsed."""
    value = params.get("resources")
    if value is None:
        return {}
    assert value.startswith('"') and value.endswith('"'), value
    return json.loads(value[1:-1].replace('\\"', '"'))


def test_rayjob_yaml_is_a_kuberay_rayjob():
    docs = [d for d in yaml.safe_load_all((LAUNCH / "rayjob.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["RayJob"]  # no shared volume: runs go to object storage
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    if "backoffLimit" in spec:  # a KubeRay >= 1.2 field, and the header says so
        assert re.search(r"KubeRay operator v1\.[2-9]|KubeRay >= 1\.2", (LAUNCH / "rayjob.yaml").read_text())


def test_rayjob_yaml_autoscales_its_gpu_workers():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    for group in cluster["workerGroupSpecs"]:
        low, n, high = group.get("minReplicas", 0), group.get("replicas", 0), group.get("maxReplicas", 0)
        assert low <= n <= high
        if not autoscaling:  # a maxReplicas above replicas would never be used
            assert low == n == high
    assert autoscaling is True
    (gpu,) = [g for g in cluster["workerGroupSpecs"]
              if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1]
    assert gpu["minReplicas"] >= 1 and gpu["maxReplicas"] > gpu["minReplicas"]


def test_rayjob_yaml_head_is_stable_and_gpu_workers_are_not():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert _ray_start_resources(head["rayStartParams"]).get(STABLE, 0) >= 1
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if limits.get("nvidia.com/gpu", 0) >= 1:
            assert STABLE not in _ray_start_resources(group.get("rayStartParams", {})), group["groupName"]


def test_rayjob_yaml_resumes_a_sweep_in_object_storage():
    spec = _rayjob()["spec"]
    words = shlex.split(spec["entrypoint"], comments=True)
    assert words[:4] == ["python", "-m", "gblend_ray.cli", "sweep"]
    assert words[4] == "search_spaces/quickstart.yaml"
    assert words[words.index("--out") + 1].startswith("s3://")
    assert "--resume" in words and "--overwrite" not in words
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/app"
    assert "WANDB_MODE" not in runtime_env.get("env_vars", {})  # a W&B key decides: online with one


def test_rayjob_yaml_holds_no_secret():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"} <= set(env)
        for name, entry in env.items():
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", name):
                assert "value" not in entry, name
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["optional"] is True and ref["key"] == name


# --- submit.sh without a cluster: a stand-in `ray` ---------------------------------------------

FAKE_RAY = r"""#!/usr/bin/env bash
# Records each call (NUL-separated words) under $CALLS; `job status` answers the next of
# $FAKE_STATUSES (separated by |, the last one repeated), {id} standing for the job's id.
n=$(ls "$CALLS" | wc -l | tr -d ' ')
printf '%s\0' "$@" > "$CALLS/$n"
case "$2" in
    submit)
        if [[ -n "${FAKE_SUBMIT_ERROR:-}" ]]; then echo "$FAKE_SUBMIT_ERROR" >&2; exit 1; fi
        echo "Job submitted successfully" ;;
    logs)
        echo "the job's logs" ;;
    status)
        k=$(cat "$CALLS/.status" 2>/dev/null || echo 0)
        echo $((k + 1)) > "$CALLS/.status"
        IFS='|' read -r -a answers <<< "$FAKE_STATUSES"
        [[ $k -lt ${#answers[@]} ]] || k=$((${#answers[@]} - 1))
        answer="${answers[$k]}"
        [[ "$answer" != "ERROR" ]] || { echo "could not reach the cluster" >&2; exit 1; }
        printf '%b\n' "${answer//\{id\}/${@: -1}}" ;;
esac
"""


@dataclass
class Submitted:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]

    def call(self, verb: str) -> list[str]:
        (found,) = [c for c in self.calls if c[:2] == ["job", verb]][:1]
        return found

    def submit_args(self) -> list[str]:
        args = self.call("submit")
        return args[:args.index("--")]

    def entrypoint(self) -> list[str]:
        args = self.call("submit")
        return args[args.index("--") + 1:]

    def option(self, name: str) -> str:
        args = self.submit_args()
        return args[args.index(name) + 1]


@pytest.fixture
def fake_submit(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text(FAKE_RAY)
    (fake / "ray").chmod(0o755)
    runs = iter(range(1000))

    def submit(*args: str, statuses: str = "Job '{id}' succeeded", **env) -> Submitted:
        calls = tmp_path / f"calls{next(runs)}"
        calls.mkdir()
        full_env = _env(RAY_ADDRESS="http://127.0.0.1:8265", CALLS=str(calls), FAKE_STATUSES=statuses,
                        GBLEND_SUBMIT_POLL_SECONDS="0", **env)
        full_env["PATH"] = f"{fake}{os.pathsep}{full_env['PATH']}"
        done = subprocess.run([str(SUBMIT), *args], env=full_env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=60, check=False)
        recorded = sorted((p for p in calls.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        return Submitted(done.returncode, done.stdout, done.stderr,
                         [p.read_bytes().decode().split("\0")[:-1] for p in recorded])

    return submit


QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")


def test_submit_sh_is_executable_bash():
    assert os.access(SUBMIT, os.X_OK)
    assert SUBMIT.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in SUBMIT.read_text()
    assert "read -r -a" not in SUBMIT.read_text()  # no word splitting of options
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)


def test_submit_sh_refuses_without_ray_address_or_arguments(tmp_path):
    def run(*args, **env):
        return subprocess.run([str(SUBMIT), *args], env=_env(**env), capture_output=True, text=True, timeout=30,
                              check=False)

    done = run("search_spaces/quickstart.yaml", str(tmp_path / "out"))
    assert done.returncode == EXIT_BAD_INPUT and "RAY_ADDRESS" in done.stderr
    address = {"RAY_ADDRESS": "http://127.0.0.1:1"}
    done = run("search_spaces/quickstart.yaml", **address)
    assert done.returncode == EXIT_BAD_INPUT and "usage:" in done.stderr
    done = run("search_spaces/quickstart.yaml", "runs/relative", **address)
    assert done.returncode == EXIT_BAD_INPUT and "absolute" in done.stderr
    done = run("--entrypoint-num-cpus", "1", "search_spaces/quickstart.yaml", "/tmp/x", **address)
    assert done.returncode == EXIT_BAD_INPUT and "must end with --" in done.stderr
    done = run("--working-dir", "/elsewhere", "--", "search_spaces/quickstart.yaml", "/tmp/x", **address)
    assert done.returncode == EXIT_BAD_INPUT and "--working-dir" in done.stderr
    done = run("search_spaces/quickstart.yaml", "/tmp/x", GBLEND_SUBMIT_ARGS="--no-wait", **address)
    assert done.returncode == EXIT_BAD_INPUT and "GBLEND_SUBMIT_ARGS" in done.stderr


def test_submit_sh_builds_the_ray_job_submit_command(fake_submit, tmp_path):
    out = tmp_path / "out dir"
    done = fake_submit(QUICKSTART, str(out), "--set", "train.epochs=2", WANDB_MODE='dis"abled')
    assert done.returncode == EXIT_OK, done.stderr
    assert [c[:2] for c in done.calls] == [["job", "submit"], ["job", "logs"], ["job", "status"]]
    assert done.option("--address") == "http://127.0.0.1:8265"
    working_dir = Path(done.option("--working-dir")).resolve()
    assert working_dir == REPO.resolve() and (working_dir / ".rayignore").is_file()
    runtime_env = json.loads(done.option("--runtime-env-json"))
    assert runtime_env == {"env_vars": {"WANDB_MODE": 'dis"abled'}}  # no excludes: Ray reads .rayignore
    assert "--no-wait" in done.submit_args()
    assert done.option("--submission-id") == _default_submission_id(str(out))
    assert done.entrypoint() == ["python", "-m", "gblend_ray.cli", "sweep", "search_spaces/quickstart.yaml",
                                 "--out", str(out), "--resume", "--set", "train.epochs=2"]
    job_id = done.option("--submission-id")
    assert done.call("logs")[-2:] == ["--follow", job_id] and done.call("status")[-1] == job_id
    # WANDB_MODE unset: gblend decides on the cluster (online with a key there)
    done = fake_submit(QUICKSTART, str(out))
    assert "env_vars" not in json.loads(done.option("--runtime-env-json"))


def test_submit_sh_passes_ray_job_submit_options_before_a_double_dash_as_given(fake_submit):
    resources, metadata = '{"gblend_stable": 1}', '{"note": "two words", "x": "a  b"}'
    done = fake_submit("--entrypoint-num-cpus", "1", "--entrypoint-resources", resources,
                       f"--metadata-json={metadata}", "--headers", '{"Authorization": "Bearer t"}', "--",
                       QUICKSTART, "s3://bucket/runs/q")
    assert done.returncode == EXIT_OK, done.stderr
    args = done.submit_args()
    assert args[args.index("--entrypoint-num-cpus") + 1] == "1"
    assert args[args.index("--entrypoint-resources") + 1] == resources
    assert f"--metadata-json={metadata}" in args
    for verb in ("submit", "logs", "status"):  # headers reach every call
        call = done.call(verb)
        assert call[call.index("--headers") + 1] == '{"Authorization": "Bearer t"}', verb
    # a leading -- alone: no options
    done = fake_submit("--", QUICKSTART, "/mnt/runs/q")
    assert done.returncode == EXIT_OK and done.entrypoint()[5:7] == ["--out", "/mnt/runs/q"]


def test_submit_sh_derives_one_submission_id_per_out_dir(fake_submit):
    def job_id(out: str, *options: str, **env) -> str:
        done = fake_submit(*options, QUICKSTART, out, **env)
        assert done.returncode == EXIT_OK, done.stderr
        return done.option("--submission-id")

    uri = "s3://bucket/runs/quickstart?endpoint_override=127.0.0.1:9000&scheme=http"
    assert job_id(uri) == _default_submission_id(uri)
    assert re.fullmatch(r"gblend-quickstart-[0-9a-f]{12}", job_id(uri))
    assert job_id("/mnt/runs/a") == job_id("/mnt/runs/a/") != job_id("/mnt/runs/b")
    assert job_id("s3://bucket/runs/a") != job_id("s3://other/runs/a")
    assert job_id("/mnt/runs/a", GBLEND_SUBMISSION_ID="mine-2") == "mine-2"
    assert job_id("/mnt/runs/a", "--submission-id", "given", "--", GBLEND_SUBMISSION_ID="mine-2") == "given"
    assert job_id("/mnt/runs/a", "--submission-id=given", "--") == "given"


def test_submit_sh_passes_resume_unless_the_sweep_args_decide(fake_submit):
    done = fake_submit(QUICKSTART, "/mnt/runs/q", "--overwrite")
    assert done.entrypoint()[5:] == ["--out", "/mnt/runs/q", "--overwrite"]
    done = fake_submit(QUICKSTART, "/mnt/runs/q", "--resume", "--set", "seed=1")
    assert done.entrypoint()[5:] == ["--out", "/mnt/runs/q", "--resume", "--set", "seed=1"]


@pytest.mark.parametrize(("statuses", "code"), [
    ("Job '{id}' succeeded", EXIT_OK),
    ("Job '{id}' was stopped", EXIT_STOPPED),
    ("Job '{id}' failed\\nStatus message: Job entrypoint command failed with exit code 1, last logs: ...", 1),
    ("Job '{id}' failed\\nStatus message: Job entrypoint command failed with exit code 2, last logs: ...", 2),
    ("Job '{id}' failed\\nStatus message: Job entrypoint command failed with exit code 130, last logs", 130),
    ("Job '{id}' failed\\nStatus message: Job entrypoint command failed with exit code -9. No logs.", 1),
    ("Job '{id}' failed\\nStatus message: runtime_env setup failed", 1),
    ("Status for job '{id}': RUNNING|Status for job '{id}': RUNNING|Job '{id}' was stopped", EXIT_STOPPED),
    ("ERROR|Job '{id}' succeeded", EXIT_OK),
    ("ERROR", EXIT_UNKNOWN),
])
def test_submit_sh_exits_with_the_jobs_outcome(fake_submit, statuses, code):
    done = fake_submit(QUICKSTART, "/mnt/runs/q", statuses=statuses)
    assert done.returncode == code, done.stderr
    if code in (EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED):  # how to go on
        assert "GBLEND_SUBMISSION_ID=" in done.stderr


def test_submit_sh_reports_a_refused_submission(fake_submit):
    done = fake_submit(QUICKSTART, "/mnt/runs/q", statuses="Job '{id}' succeeded",
                       FAKE_SUBMIT_ERROR="ValueError: Job with submission_id x already exists. "
                                         "Please use a different submission_id.")
    assert done.returncode == EXIT_NOT_SUBMITTED
    assert "refused" in done.stderr and "SUCCEEDED" in done.stderr and "GBLEND_SUBMISSION_ID=" in done.stderr
    assert [c[:2] for c in done.calls] == [["job", "submit"], ["job", "status"]]
    done = fake_submit(QUICKSTART, "/mnt/runs/q", FAKE_SUBMIT_ERROR="ConnectionError: no dashboard")
    assert done.returncode == EXIT_NOT_SUBMITTED and "not submitted" in done.stderr


def test_submit_sh_no_wait_returns_after_submitting(fake_submit):
    done = fake_submit("--no-wait", "--", QUICKSTART, "/mnt/runs/q", statuses="ERROR")
    assert done.returncode == EXIT_OK
    assert [c[:2] for c in done.calls] == [["job", "submit"]]
    assert done.submit_args().count("--no-wait") == 1


# --- end to end: a cluster started with `ray start`, jobs submitted with submit.sh ----------

_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def _wait_for_dashboard(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with _LOOPBACK.open(f"{url}/api/version", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"the dashboard at {url} did not answer in {timeout:.0f} s")
        time.sleep(1)


def _job_info(url: str, job_id: str) -> dict | None:
    """The job's record from the dashboard's REST API (no `ray` CLI start-up per poll)."""
    try:
        with _LOOPBACK.open(f"{url}/api/jobs/{job_id}", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


@dataclass
class LoopbackCluster:
    url: str
    temp_dir: str
    data: Path  # the av-overfit preset, generated once for the module


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """One `ray start --head` cluster for the module's end-to-end tests, on loopback, with its
    own temp dir and ports; its head declares gblend_stable as the launch files' heads do."""
    if not sys.platform.startswith("linux"):
        pytest.skip("finds the cluster's processes in /proc")
    if not RAY.exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    data = tmp_path_factory.mktemp("launch") / "av-overfit"
    subprocess.run([sys.executable, "-m", "gblend_ray.cli", "make-synthetic", str(data), "--preset", "av-overfit"],
                   env=_env(), check=True, capture_output=True, timeout=120)
    # Unix socket paths (under the temp dir's session dir) must stay short: not under tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    marker = Path(temp_dir).name
    gcs, dashboard, *more = free_ports(9)
    url = f"http://127.0.0.1:{dashboard}"
    start = [str(RAY), "start", "--head", f"--port={gcs}", "--num-cpus=4", f"--resources={{\"{STABLE}\": 1000}}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}",
             # every port explicit, so that nothing collides with another Ray on this machine
             f"--dashboard-agent-listen-port={more[0]}", f"--dashboard-agent-grpc-port={more[1]}",
             f"--runtime-env-agent-port={more[2]}", f"--metrics-export-port={more[3]}",
             f"--node-manager-port={more[4]}", f"--object-manager-port={more[5]}",
             f"--ray-client-server-port={more[6]}"]
    try:
        # On Linux Ray ignores --node-ip-address=127.0.0.1 and uses the machine's interface
        # address; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (local-only mode) keeps it on loopback.
        env = _env(**{MARKER: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120, cwd=temp_dir,
                                 check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        assert (Path(temp_dir) / "ray_current_cluster").read_text().startswith("127.0.0.1:")
        _wait_for_dashboard(url, timeout=60)
        yield LoopbackCluster(url, temp_dir, data)
    finally:
        left = stop_cluster(MARKER, marker, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test's cluster still alive: {sorted(left)}"


def _quickstart_overrides(data: Path, **train) -> list[str]:
    """The quickstart sweep itself, shrunk for a test: every method, one seed, tiny runs,
    each trial trained in its Tune trial's process."""
    sets = [f"data.path={data}", "tracking.backend=none", "sweep.engine=inline", "sweep.grid.seed=[0]"]
    for section, values in TINY.items():
        values = {**values, **train} if section == "train" else values
        sets += [f"{section}.{k}={v}" for k, v in values.items()]
    return [x for s in sets for x in ("--set", s)]


def _start_submit(cluster: LoopbackCluster, cwd: Path, *args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([str(SUBMIT), *args], env=_env(RAY_ADDRESS=cluster.url, WANDB_MODE="offline", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=cwd)


def _finish(submit: subprocess.Popen, timeout: float) -> str:
    try:
        output, _ = submit.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(submit.pid, signal.SIGKILL)
        output, _ = submit.communicate()
        pytest.fail(f"submit.sh did not finish in {timeout:.0f} s:\n{output[-6000:]}")
    return output


def _uploaded_working_dir(cluster: LoopbackCluster, job_id: str) -> Path:
    """The copy of the repo the job ran in, as Ray unpacked it on the (only) node."""
    info = _job_info(cluster.url, job_id)
    package = info["runtime_env"]["working_dir"]  # gcs://_ray_pkg_<hash>.zip
    name = package.rsplit("/", 1)[-1].removesuffix(".zip")
    (found,) = Path(cluster.temp_dir).glob(f"session_latest/runtime_resources/working_dir_files/{name}")
    return found


@pytest.mark.timeout(300)
@pytest.mark.ray
@pytest.mark.slow
def test_submit_sh_runs_a_sweep_once_per_out_dir(loopback_cluster, tmp_path):
    cluster, out = loopback_cluster, tmp_path / "sweep"
    args = [QUICKSTART, str(out), *_quickstart_overrides(cluster.data)]
    output = _finish(_start_submit(cluster, tmp_path, *args), timeout=180)
    job_id = _default_submission_id(str(out))
    assert f"Job '{job_id}' succeeded" in output, output[-6000:]
    assert f"job {job_id} SUCCEEDED" in output

    rows = json.loads((out / "sweep.json").read_text())
    quickstart = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    assert sorted(r["overrides"]["method"] for r in rows) == sorted(quickstart["sweep"]["grid"]["method"])
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert run_dir.parent.resolve() == (out / "trials").resolve()
        assert json.loads((run_dir / "results.json").read_text())["method"] == r["overrides"]["method"]
    info = _job_info(cluster.url, job_id)
    assert info["status"] == "SUCCEEDED" and "--resume" in shlex.split(info["entrypoint"])

    # The upload left out what .rayignore lists (of what this checkout has), and nothing else.
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    uploaded = _uploaded_working_dir(cluster, job_id)
    (ignored,) = get_excludes_from_ignore_files(REPO, include_gitignore=False)
    for entry in REPO.iterdir():
        if ignored(entry):
            assert not (uploaded / entry.name).exists(), entry.name
    assert (uploaded / "gblend_ray" / "cli.py").is_file() and (uploaded / ".rayignore").is_file()

    # The same OUT_DIR again: Ray already has a job of that id, so nothing is submitted.
    again = _start_submit(cluster, tmp_path, *args)
    output = _finish(again, timeout=120)
    assert again.returncode == EXIT_NOT_SUBMITTED, output[-6000:]
    assert "already exists" in output and "refused" in output and "GBLEND_SUBMISSION_ID=" in output
    assert _job_info(cluster.url, job_id)["status"] == "SUCCEEDED"


@pytest.mark.timeout(300)
@pytest.mark.ray
@pytest.mark.slow
def test_submit_sh_exits_with_a_failed_jobs_code(loopback_cluster, tmp_path):
    """A sweep whose space has an unknown key: gblend exits 2 (bad input) on the cluster, and so
    does submit.sh."""
    cluster, out = loopback_cluster, tmp_path / "bad"
    submit = _start_submit(cluster, tmp_path, QUICKSTART, str(out), *_quickstart_overrides(cluster.data),
                           "--set", "train.no_such_key=1")
    output = _finish(submit, timeout=120)
    assert submit.returncode == EXIT_BAD_INPUT, output[-6000:]
    job_id = _default_submission_id(str(out))
    assert "train.no_such_key: unknown key" in output and f"job {job_id} FAILED: its driver exited 2" in output
    info = _job_info(cluster.url, job_id)
    assert info["status"] == "FAILED" and info["driver_exit_code"] == 2


@pytest.mark.timeout(300)
@pytest.mark.ray
@pytest.mark.slow
def test_submit_sh_exits_nonzero_for_a_stopped_job(loopback_cluster, tmp_path):
    """`ray job submit` itself exits 0 for a stopped job; submit.sh exits 3."""
    cluster, out = loopback_cluster, tmp_path / "stopped"
    job_id = "gblend-test-stop-1"
    submit = _start_submit(cluster, tmp_path, QUICKSTART, str(out), *_quickstart_overrides(cluster.data, epochs=50),
                           GBLEND_SUBMISSION_ID=job_id)
    try:
        deadline = time.time() + 90
        while (_job_info(cluster.url, job_id) or {}).get("status") != "RUNNING":
            assert time.time() < deadline and submit.poll() is None, "the job never ran"
            time.sleep(0.5)
        stop = urllib.request.Request(f"{cluster.url}/api/jobs/{job_id}/stop", method="POST")
        with _LOOPBACK.open(stop, timeout=30) as r:
            assert json.loads(r.read())["stopped"] is True
        output = _finish(submit, timeout=120)
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
    assert submit.returncode == EXIT_STOPPED, output[-6000:]
    assert f"Job '{job_id}' was stopped" in output and "GBLEND_SUBMISSION_ID=" in output
    assert _job_info(cluster.url, job_id)["status"] == "STOPPED"

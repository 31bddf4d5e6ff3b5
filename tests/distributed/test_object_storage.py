"""Runs in object storage: an S3-compatible server (moto) on 127.0.0.1, a Ray run with
probe trials and a sweep written into a bucket, a run interrupted and resumed against the
bucket, ``gblend report`` on the URI, and nothing of the run written beside it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from lifecycle import gblend

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUCKET = "runs"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with an empty bucket; yields ``(uri_of, keys)``."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                            env={**os.environ, **CREDENTIALS})
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"})
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)

    def uri_of(prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))

    def read(key: str) -> str:
        return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()

    yield {"uri": uri_of, "keys": keys, "read": read}
    proc.terminate()
    proc.wait(10)
    log.close()


def _config(path, data, **extra) -> str:
    cfg = {"data": {"path": str(data)}, "method": "gblend:online",
           "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
           "train": {"epochs": 6, "batch_size": 16, "threads": 1},
           "blend": {"warmup_epochs": 2, "super_epoch": 2}, "tracking": {"backend": "wandb"}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_ray_run_in_a_bucket_interrupted_resumed_and_reported(s3, ray_cluster, av_overfit, tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", av_overfit)
    work = tmp_path / "work"  # the commands' working directory: nothing may be written here
    work.mkdir()
    env = {**CREDENTIALS, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    out = s3["uri"]("one")

    def mid_run() -> bool:
        try:
            return json.loads(s3["read"]("one/trajectory.json"))[-1]["epoch"] >= 2
        except Exception:
            return False

    killed = gblend(["run", cfg, "--out", out], cwd=work, env=env, kill_when=mid_run)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = gblend(["run", cfg, "--out", out, "--resume"], cwd=work, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keys = s3["keys"]("one")
    for key in ("run.json", "config.yaml", "results.json", "trajectory.json", "trained_weights.json",
                "metrics.jsonl", "rounds.jsonl", "rounds.csv", "ray.log", "ray/train/epoch_0006_final/state.pt"):
        assert key in keys, key
    assert any(k.startswith("ray/probes/") for k in keys)  # the probe trials' Tune experiment
    assert any(k.startswith("wandb/offline-run-") and k.endswith(".wandb") for k in keys)
    assert [r["epoch"] for r in json.loads(s3["read"]("one/trajectory.json"))] == [0, 2, 4]
    assert [json.loads(line)["epoch"] for line in s3["read"]("one/metrics.jsonl").splitlines()] == list(range(1, 7))
    reported = gblend(["report", out], cwd=work, env=env)
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert {"report.md", "report.csv"} <= set(s3["keys"]("one")) and "gblend:online" in s3["read"]("one/report.md")
    assert list(work.iterdir()) == []  # nothing of the run beside the bucket


def test_a_sweep_into_a_bucket(s3, ray_cluster, av_overfit, tmp_path):
    space = tmp_path / "space.yaml"
    _config(space, av_overfit, tracking={"backend": "none"})
    raw = yaml.safe_load(space.read_text())
    raw["sweep"] = {"grid": {"method": ["naive", "gblend:online"]}, "engine": "inline", "max_concurrent_trials": 2}
    space.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    work.mkdir()
    env = {**CREDENTIALS, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    done = gblend(["sweep", str(space), "--out", s3["uri"]("sweep")], cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(s3["read"]("sweep/sweep.json"))
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    keys = s3["keys"]("sweep")
    trials = {k.split("/")[1] for k in keys if k.startswith("trials/") and k.split("/")[1]}
    assert len(trials) == 2
    for trial in trials:
        assert {f"trials/{trial}/results.json", f"trials/{trial}/metrics.jsonl"} <= set(keys)
    assert any(k.startswith("tune/sweep/") for k in keys)  # Tune's experiment state, for --resume
    assert gblend(["report", s3["uri"]("sweep")], cwd=work, env=env).returncode == 0
    assert "naive" in s3["read"]("sweep/report.md") and list(work.iterdir()) == []

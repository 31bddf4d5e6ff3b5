"""Sweeps end to end on the session's local cluster: Tune over whole runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.distributed.sweep import (
    SweepError,
    param_space,
    trial_name,
    trial_overrides,
)

TINY = {"model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 4, "batch_size": 32, "threads": 1},
        "blend": {"warmup_epochs": 2, "super_epoch": 2}}


def _space(tmp_path, data, sweep, tracking="none"):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(data)}, **TINY, "tracking": {"backend": tracking},
                                    "sweep": sweep}))
    return path


def test_param_space_and_trial_names():
    space = param_space({"grid": {"seed": [0, 1]}, "cases": [{"method": "naive"}], "sample": {"optim.lr": {"loguniform": [0.01, 0.1]}}})
    assert set(space) == {"seed", "case", "optim.lr"}
    assert trial_overrides({"case": {"method": "naive"}, "seed": 1}) == {"method": "naive", "seed": 1}
    assert trial_name({"seed": 1, "method": "gblend:online"}) == trial_name({"method": "gblend:online", "seed": 1})
    with pytest.raises(SweepError, match="sweep.grid.seed"):
        param_space({"grid": {"seed": 3}})
    with pytest.raises(SweepError, match="unknown key"):
        param_space({"grid": {"seed": [1]}, "trials": 3})


def test_one_failing_trial_does_not_stop_the_others(ray_cluster, av_overfit, tmp_path):
    space = _space(tmp_path, av_overfit, {
        "cases": [{"method": "naive"}, {"method": "uni:video"}, {"method": "aux", "optim.lr": 1.0e9}],
        "engine": "inline", "max_concurrent_trials": 2})
    out = tmp_path / "sweep"
    assert main(["sweep", str(space), "--out", str(out)]) == 1  # the sweep finished; one of its runs failed
    rows = {r["overrides"]["method"]: r for r in json.loads((out / "sweep.json").read_text())}
    assert rows["naive"]["status"] == rows["uni:video"]["status"] == "ok"
    assert rows["aux"]["status"] == "failed" and rows["aux"]["error"].startswith("training diverged at epoch 1")
    assert "diverged" in (out / "trials" / trial_name(rows["aux"]["overrides"]) / "error.txt").read_text()
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "FAILED" in md and "diverged" in md


def test_a_bad_trial_in_the_space_is_caught_before_any_trial_runs(av_overfit, tmp_path, capsys):
    space = _space(tmp_path, av_overfit, {"grid": {"method": ["naive", "uni:depth"], "seed": [0, 1]}})
    assert main(["sweep", str(space), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "uni:depth" in err and "method" in err and "video" in err
    assert not (tmp_path / "s").exists()


def test_a_trial_that_fails_for_its_config_is_not_retried_one_that_loses_its_process_is(ray_cluster, av_overfit,
                                                                                       tmp_path):
    space = _space(tmp_path, av_overfit, {
        "cases": [{"method": "aux", "optim.lr": 1.0e9}, {"method": "naive", "train.epochs": 12}],
        "engine": "inline", "max_concurrent_trials": 2})
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "gblend_ray.cli", "sweep", str(space), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    naive = None
    deadline = time.time() + 240
    while time.time() < deadline and naive is None:
        for run in out.glob("trials/*method=naive*"):
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                naive = run
        time.sleep(0.05)
    assert naive is not None, "the naive trial never trained"
    first = json.loads((naive / "run.json").read_text())
    os.kill(first["pid"], signal.SIGKILL)  # the trial's process dies, as on a lost node
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]  # the sweep finished; the diverging trial failed
    rows = {r["overrides"]["method"]: r for r in json.loads((out / "sweep.json").read_text())}
    assert rows["naive"]["status"] == "ok" and rows["aux"]["status"] == "failed"
    assert rows["aux"]["error"].startswith("training diverged at epoch 1")
    aux = next(out.glob("trials/*method=aux*"))
    assert json.loads((aux / "run.json").read_text())["attempts"] == 1  # its own config: not retried
    again = json.loads((naive / "run.json").read_text())
    assert again["attempts"] == 2 and again["pid"] != first["pid"] and again["status"] == "finished"  # retried
    epochs = [json.loads(line)["epoch"] for line in (naive / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13))  # it resumed: every epoch recorded once

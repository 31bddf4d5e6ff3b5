"""``gblend compare`` on Ray: its (method, seed) runs are concurrent Tune trials, and what
it writes is what the in-process compare writes for the same seeds."""

import json
import re

import pytest
import yaml

from gblend_ray.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path, data_path):
    cfg = {"data": {"path": str(data_path)},
           "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
           "train": {"epochs": 4, "batch_size": 32, "threads": 1},
           "blend": {"warmup_epochs": 2, "super_epoch": 2}, "probes": {"resources": {"CPU": 0.5}},
           "tracking": {"backend": "none"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_concurrent_compare_on_ray_writes_the_summary_of_a_sequential_one(tmp_path, tiny_dataset, ray_cluster,
                                                                          capsys):
    cfg = _config(tmp_path, tiny_dataset)
    args = ["compare", cfg, "--methods", "naive,gblend:online", "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path / "inline"), "--inline"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ray"), "--max-concurrent", "2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    sequential = json.loads((tmp_path / "inline" / "summary.json").read_text())
    concurrent = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert list(concurrent) == list(sequential) == ["naive", "gblend:online"]
    for method, s in sequential.items():
        assert concurrent[method]["runs"] == pytest.approx(s["runs"], abs=1e-6), method
        assert concurrent[method]["mean"] == pytest.approx(s["mean"], abs=1e-6)
    for method in ("naive", "gblend_online"):
        assert (tmp_path / "ray" / method / "seed0" / "results.json").is_file()
    # the runs were the trials of one Tune experiment
    assert len([d for d in (tmp_path / "ray" / "tune" / "sweep").iterdir() if d.is_dir()]) == 2
    # on the session's cluster (joined, not its own) --trial-engine auto keeps Ray Train runs
    assert shown[0] == "[compare] 2 runs, 2 at a time, each a Ray Train run", shown
    # one line per finished run with the compare's count, then the table
    done = [line for line in shown if line.startswith("[compare ")]
    assert len(done) == 2 and done[-1].startswith("[compare 2/2: 2 ok, 0 failed]"), shown
    assert any(line.startswith("gblend:online") and "±" in line for line in shown)
    # nothing but the product's lines: counted runs, rounds, the table (no Ray or Tune output)
    product = re.compile(r"^(\[compare\] 2 runs, |\[compare \d+/2: "
                         r"|\[gblend:online-seed\d\] super-epoch \d+ from epoch "
                         r"|method |naive |gblend:online |2 methods x 1 seeds? in |$)")
    assert [line for line in shown if not product.match(line)] == [], shown

    # a second compare into it reads every run back (nothing trains again)
    assert main([*args, "--out", str(tmp_path / "ray"), "--resume"]) == 0
    again = capsys.readouterr().out
    assert again.count("(finished before)") == 2
    assert json.loads((tmp_path / "ray" / "summary.json").read_text()) == concurrent

    # --trial-engine inline: the same trials, each run in-process inside its trial
    assert main([*args, "--out", str(tmp_path / "trials"), "--max-concurrent", "2", "--trial-engine", "inline"]) == 0
    in_trials = json.loads((tmp_path / "trials" / "summary.json").read_text())
    for method, s in sequential.items():
        assert in_trials[method]["runs"] == pytest.approx(s["runs"], abs=1e-6), method
    assert len([d for d in (tmp_path / "trials" / "tune" / "sweep").iterdir() if d.is_dir()]) == 2


def test_a_compare_on_its_own_local_cluster_trains_each_run_in_its_trial(tmp_path, tiny_dataset):
    """Without RAY_ADDRESS, ``gblend compare`` starts a local cluster of its own; its
    one-worker CPU runs then train in their Tune trials' processes (``--trial-engine
    auto``), says so on its first line, and writes the in-process compare's summary."""
    import os
    import subprocess
    import sys

    cfg = _config(tmp_path, tiny_dataset)
    args = ["compare", cfg, "--methods", "naive,gblend:online", "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path / "inline"), "--inline"]) == 0
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "gblend_ray.cli", *args, "--out", str(tmp_path / "own")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == (
        "[compare] 2 runs, 2 at a time, each in its Ray Tune trial's process (auto: a local cluster, one CPU "
        "worker per run; --trial-engine ray makes each a Ray Train run)"), done.stdout
    sequential = json.loads((tmp_path / "inline" / "summary.json").read_text())
    own = json.loads((tmp_path / "own" / "summary.json").read_text())
    for method, s in sequential.items():
        assert own[method]["runs"] == pytest.approx(s["runs"], abs=1e-6), method
    assert not (tmp_path / "own" / "naive" / "seed0" / "ray").exists()  # no Ray Train run's checkpoints

"""A run's life through the ``gblend`` command, on the in-process engine: one run per
directory, resume after a SIGKILL with nothing lost or doubled, no code executed from a
checkpoint, the error's last line and the exit codes. (The same on Ray:
``tests/distributed/test_lifecycle_ray.py``.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from lifecycle import assert_same_run, gblend, lines, rounds_of, wandb_epochs

from gblend_ray.cli import main
from gblend_ray.storage.rundir import RunDir

pytestmark = pytest.mark.slow

EPOCHS = 12


def _config(tmp_path, data, **extra) -> str:
    cfg = {"data": {"path": str(data)}, "method": "gblend:online",
           "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
           "train": {"epochs": EPOCHS, "batch_size": 32, "threads": 1},
           "blend": {"warmup_epochs": 4, "super_epoch": 4}, "tracking": {"backend": "wandb"}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def parent_wandb_service(tmp_path_factory):
    """A W&B service in this (the parent) process, as a notebook or a launcher that logs to
    W&B has: wandb exports its address to every child, and it outlives a killed child."""
    import wandb

    wandb.teardown()  # a fresh service of this process, whatever tests before left
    wandb.init(mode="offline", dir=str(tmp_path_factory.mktemp("parent-wandb")), project="parent").finish()
    assert os.environ.get("WANDB_SERVICE", "").split("-")[1:2] == [str(os.getpid())]


@pytest.fixture(scope="module")
def reference(av_overfit, tmp_path_factory, parent_wandb_service):
    """An uninterrupted in-process run: what every resumed run must end up writing."""
    root = tmp_path_factory.mktemp("reference")
    cfg = _config(root, av_overfit)
    done = gblend(["run", cfg, "--out", "ref", "--inline"], cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "ref", cfg


KILL_POINTS = {
    "in the warm-up": lambda run: len(lines(run / "metrics.jsonl")) >= 2,
    "inside a round": lambda run: (run / "checkpoints" / "epoch_0004").is_dir() and rounds_of(run) == [0],
    "in the last super-epoch": lambda run: rounds_of(run) == [0, 4, 8] and len(lines(run / "metrics.jsonl")) >= 9,
}


def test_a_run_killed_three_times_resumes_to_the_files_of_an_uninterrupted_one(reference, tmp_path):
    """SIGKILL in the warm-up, resume; SIGKILL inside a round (its checkpoint written, the
    round not yet recorded), resume; SIGKILL in the last super-epoch, resume: the files
    are the uninterrupted run's."""
    ref, cfg = reference
    run = tmp_path / "run"
    args = ["run", cfg, "--out", str(run), "--inline"]
    for n, (point, reached) in enumerate(KILL_POINTS.items()):
        killed = gblend(args + (["--resume"] if n else []), cwd=tmp_path, kill_when=lambda: reached(run))
        assert killed.returncode == -signal.SIGKILL, f"the run ended before it was killed {point}"
    again = gblend(args, cwd=tmp_path)
    assert again.returncode == 2 and "--resume continues it" in again.stderr.strip().splitlines()[-1]
    resumed = gblend(args + ["--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, ref)
    files, epochs = wandb_epochs(run)
    # one W&B run, every step once
    assert len(files) == 1 and epochs == list(range(1, EPOCHS + 1)), resumed.stderr[-3000:]
    assert RunDir(run).identity()["status"] == "finished"


def test_a_second_run_into_a_used_directory_never_reports_the_first(reference, tmp_path, capsys):
    ref, cfg = reference
    before = {p: p.stat().st_mtime_ns for p in ref.rglob("*") if p.is_file()}
    assert main(["run", cfg, "--out", str(ref), "--inline", "--set", "method=naive"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "another config" in err and "method: 'gblend:online' -> 'naive'" in err and "--overwrite" in err
    assert main(["run", cfg, "--out", str(ref), "--inline"]) == 0  # the same config, finished: its results
    assert "already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in ref.rglob("*") if p.is_file()} == before  # nothing touched

    fresh = tmp_path / "copy"
    assert main(["run", cfg, "--out", str(fresh), "--inline", "--set", "train.epochs=2"]) == 0
    assert main(["run", cfg, "--out", str(fresh), "--inline", "--set", "method=naive", "--set", "train.epochs=2",
                 "--overwrite"]) == 0
    results = json.loads((fresh / "results.json").read_text())
    assert results["method"] == "naive" and json.loads((fresh / "trajectory.json").read_text()) == []
    assert [r["epoch"] for r in lines(fresh / "metrics.jsonl")] == [1, 2]  # the old run's records are gone
    assert not (fresh / "rounds.jsonl").exists() and len(list(fresh.glob("wandb/offline-run-*"))) == 1


def test_a_planted_checkpoint_never_runs_its_code(av_overfit, tmp_path, capsys):
    cfg = _config(tmp_path, av_overfit)
    run = tmp_path / "run"
    assert main(["run", cfg, "--out", str(run), "--inline", "--set", "train.epochs=2",
                 "--set", "blend.warmup_epochs=1", "--set", "blend.super_epoch=1"]) == 0
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    RunDir(run).mark("running")  # someone else's file in a run directory others can write to
    (run / "results.json").unlink()
    torch.save({"model": Planted(), "meta": "{}"}, run / "checkpoints" / "epoch_0001" / "state.pt")
    assert main(["run", cfg, "--out", str(run), "--inline", "--resume", "--set", "train.epochs=2",
                 "--set", "blend.warmup_epochs=1", "--set", "blend.super_epoch=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gblend: error:") and "weights_only=True" in err and "epoch_0001" in err
    assert not marker.exists()


def test_a_failed_run_ends_on_its_cause_and_keeps_the_traceback(av_overfit, tmp_path):
    cfg = _config(tmp_path, av_overfit, method="naive")
    done = gblend(["run", cfg, "--out", "run", "--inline", "--set", "optim.lr=1e6"], cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gblend: error: training diverged at epoch 1") and "lower optim.lr" in last
    assert "Traceback" not in done.stderr
    error = (tmp_path / "run" / "error.txt").read_text()
    assert error.startswith("training diverged at epoch 1") and "Traceback (most recent call last)" in error
    assert RunDir(tmp_path / "run").identity()["status"] == "failed"


def test_bad_input_exits_2_before_anything_starts(av_overfit, tmp_path):
    import numpy as np

    from gblend_ray.data.arrays import load_dataset, save_dataset

    ds = load_dataset(av_overfit)
    path = save_dataset(tmp_path / "no-test", ds.modalities, ds.labels, ds.classes,
                        split=np.where(ds.split == "test", "val", ds.split))
    cfg = _config(tmp_path, path)
    done = gblend(["run", cfg, "--out", "run", "--inline"], cwd=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gblend: error:") and "split.npy: the test part is empty" in last
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no epoch trained


def test_ctrl_c_exits_130_saying_where_the_run_stopped(av_overfit, tmp_path):
    cfg = _config(tmp_path, av_overfit)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gblend_ray.cli", "run", cfg, "--out", str(run), "--inline"],
                            cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "checkpoints" / "epoch_0004").is_dir():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("gblend: interrupted") and "last checkpoint at epoch 4" in last
    assert last.endswith(f"--out {run} --inline --resume")


def test_an_interrupted_compare_resumes_without_training_its_finished_runs_again(av_overfit, tmp_path):
    cfg = _config(tmp_path, av_overfit)
    out = tmp_path / "cmp"
    args = ["compare", cfg, "--methods", "naive,gblend:online", "--seeds", "1", "--out", str(out), "--inline"]
    killed = gblend(args, cwd=tmp_path, kill_when=lambda: len(lines(out / "gblend_online" / "seed0" / "metrics.jsonl")) >= 2)
    assert killed.returncode == -signal.SIGKILL
    naive = out / "naive" / "seed0" / "results.json"
    finished = naive.stat().st_mtime_ns
    refused = gblend(args, cwd=tmp_path)
    assert refused.returncode == 2 and "gblend_online/seed0 holds this run, unfinished" in refused.stderr
    resumed = gblend(args + ["--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "naive            seed 0: test top-1" in resumed.stdout and "(finished before)" in resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["naive", "gblend:online"] and all(len(s["runs"]) == 1 for s in summary.values())
    assert naive.stat().st_mtime_ns == finished  # not trained again
    assert rounds_of(out / "gblend_online" / "seed0") == [0, 4, 8]

"""A run's life on Ray: ``gblend`` processes killed with SIGKILL at three points of a run
and resumed, compared file by file with an uninterrupted run; a relative ``--out``; no
Ray process of a run outlives its killed driver; a resumed sweep trial; a failed run's
last line and its log file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from lifecycle import assert_same_run, gblend, lines, rounds_of, wandb_epochs

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6


def _config(path, data, **extra) -> str:
    cfg = {"data": {"path": str(data)}, "method": "gblend:online",
           "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
           "train": {"epochs": EPOCHS, "batch_size": 16, "threads": 1},
           "blend": {"warmup_epochs": 2, "super_epoch": 2}, "probes": {"resources": {"CPU": 0.5}},
           "tracking": {"backend": "wandb"}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def on_cluster(ray_cluster):
    """``gblend`` processes join the session's cluster (a local cluster each would cost
    seconds of start-up per process)."""
    return {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}


@pytest.fixture(scope="module")
def reference(av_overfit, on_cluster, tmp_path_factory):
    """An uninterrupted Ray run, into a relative --out."""
    root = tmp_path_factory.mktemp("ray-reference")
    cfg = _config(root / "cfg.yaml", av_overfit)
    done = gblend(["run", cfg, "--out", "runs/ref"], cwd=root, env=on_cluster)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "ref", cfg, done


def test_a_relative_out_puts_every_file_in_the_run_directory(reference, ray_cluster):
    ref, _, done = reference
    for name in ("run.json", "config.yaml", "results.json", "trajectory.json", "trained_weights.json",
                 "metrics.jsonl", "rounds.jsonl", "rounds.csv", "ray.log"):
        assert (ref / name).is_file(), name
    assert [r["epoch"] for r in lines(ref / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
    files, epochs = wandb_epochs(ref)
    assert len(files) == 1 and epochs == list(range(1, EPOCHS + 1))
    # nothing of the run landed in the Train workers' working directory
    session = Path(ray_cluster._private.worker._global_node.get_session_dir_path())
    assert not list(session.rglob("metrics.jsonl"))
    # the terminal shows the product's lines (a line per round, one for the finished run;
    # no bar on a pipe); Ray's own output is in ray.log
    shown = done.stdout.splitlines()
    rounds = json.loads((ref / "trajectory.json").read_text())
    assert [line.split(": weights")[0] for line in shown[:-1]] == [
        f"[gblend:online-seed0] super-epoch {k + 1} from epoch {r['epoch']}" for k, r in enumerate(rounds)], shown
    assert shown[-1].startswith("gblend:online: test top-1") and "(TrainController" not in done.stdout + done.stderr
    assert "(TrainController" in (ref / "ray.log").read_text()


def test_verbose_shows_every_epoch_and_rays_own_lines(av_overfit, on_cluster, tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", av_overfit, method="naive", train={"epochs": 2, "batch_size": 16,
                                                                          "threads": 1})
    done = gblend(["run", cfg, "--out", str(tmp_path / "run"), "--verbose"], cwd=tmp_path, env=on_cluster)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[naive-seed0] epoch 2/2" in done.stdout
    assert "(TrainController" in done.stdout + done.stderr


def _trained_at(run) -> list[int]:
    try:
        return [t["epoch"] for t in json.loads((run / "trained_weights.json").read_text())]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _checkpointed(run, epoch: int) -> bool:
    return (run / "ray" / "train" / f"epoch_{epoch:04d}").is_dir()


KILL_POINTS = {  # read from files the run writes synchronously (the mirror lags the workers by the relay)
    "in the warm-up": lambda run: _trained_at(run) == [0] and not _checkpointed(run, 2),
    "inside a round": lambda run: any(_checkpointed(run, e) and e not in rounds_of(run) for e in (2, 4)),
    "in the last super-epoch": lambda run: 4 in _trained_at(run),
}


def _trainer_pids(run) -> set[int]:
    try:
        return {p for t in json.loads((run / "trained_weights.json").read_text()) for p in t["pids"]}
    except (FileNotFoundError, json.JSONDecodeError):
        return set()


def test_a_driver_killed_twice_and_interrupted_resumes_to_the_files_of_an_uninterrupted_run(reference, on_cluster,
                                                                                           tmp_path):
    """SIGKILL in the warm-up, resumed; SIGKILL inside a round, resumed; Ctrl-C in the last
    super-epoch (exit 130 within seconds, naming the checkpoint and the resume command),
    resumed: the run ends with the uninterrupted run's files."""
    ref, cfg, _ = reference
    run = tmp_path / "run"
    args = ["run", cfg, "--out", str(run)]
    for n, (point, reached) in enumerate(KILL_POINTS.items()):
        sig = signal.SIGINT if n == len(KILL_POINTS) - 1 else signal.SIGKILL
        began = []
        stopped = gblend(args + (["--resume"] if n else []), cwd=tmp_path, env=on_cluster, sig=sig,
                         kill_when=lambda: reached(run) and not began.append(time.monotonic()))
        if sig == signal.SIGKILL:
            assert stopped.returncode == -signal.SIGKILL, f"the run ended before it was killed {point}"
        else:
            assert stopped.returncode == 130 and time.monotonic() - began[0] < 30, stopped.stderr[-3000:]
            last = stopped.stderr.strip().splitlines()[-1]
            assert last.startswith("gblend: interrupted") and "last checkpoint at epoch 4" in last, last
            assert last.endswith(f"--out {run} --resume"), last
        # the dead driver's trainer workers stop (Ray ends a dead job's actors), writing nothing more
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in _trainer_pids(run)):
            time.sleep(0.2)
        assert not any(psutil.pid_exists(p) for p in _trainer_pids(run)), f"workers outlived the driver {point}"
    refused = gblend(args, cwd=tmp_path, env=on_cluster)
    assert refused.returncode == 2 and "--resume continues it" in refused.stderr.strip().splitlines()[-1]
    resumed = gblend(args + ["--resume"], cwd=tmp_path, env=on_cluster)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, ref, extra=("trained_weights.json",))
    files, epochs = wandb_epochs(run)
    assert len(files) == 1 and epochs == list(range(1, EPOCHS + 1)), resumed.stderr[-3000:]


def test_a_driver_stopped_after_the_final_checkpoint_resumes_with_every_epoch_recorded(reference, on_cluster,
                                                                                      tmp_path):
    """Ctrl-C late in the last super-epoch can stop the driver after Ray Train persisted the
    final checkpoint but before the driver recorded the last epochs and wrote the results.
    The resume restores that checkpoint (nothing trains again) and its record is whole."""
    ref, cfg, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    assert (run / "ray" / "train" / f"epoch_{EPOCHS:04d}_final").is_dir()
    (run / "results.json").unlink()
    (run / "metrics.jsonl").write_text("".join((ref / "metrics.jsonl").read_text().splitlines(keepends=True)[:4]))
    resumed = gblend(["run", cfg, "--out", str(run), "--resume"], cwd=tmp_path, env=on_cluster)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, ref, extra=("trained_weights.json",))


def test_no_ray_process_outlives_a_killed_driver(av_overfit, tmp_path):
    """Without RAY_ADDRESS the command starts its own local cluster: killing the command
    alone (not its process group) must end every process that cluster started."""
    cfg = _config(tmp_path / "cfg.yaml", av_overfit, train={"epochs": 40, "batch_size": 16, "threads": 1})
    run = tmp_path / "run"
    seen: dict[int, psutil.Process] = {}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def training() -> bool:
        if not lines(run / "metrics.jsonl"):
            return False
        driver = psutil.Process(driver_pid[0])
        for child in driver.children(recursive=True):
            seen[child.pid] = child
        return True

    driver_pid = []
    proc = subprocess.Popen([sys.executable, "-m", "gblend_ray.cli", "run", cfg, "--out", str(run)], cwd=tmp_path,
                            env={**env, "WANDB_MODE": "offline", "RAY_AUTH_MODE": "disabled",
                                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},  # its own cluster, on 127.0.0.1
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    driver_pid.append(proc.pid)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not training():
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it was killed"
    names = {p.pid: " ".join(p.cmdline()[:2]) for p in seen.values() if p.is_running()}
    assert any("raylet" in n or "gcs_server" in n for n in names.values()), names  # a local cluster of its own
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its cluster's processes are left to the reaper
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [p for p in seen.values() if _alive(p)]:
        time.sleep(0.2)
    left = {p.pid: names.get(p.pid) for p in seen.values() if _alive(p)}
    assert left == {}, f"left running after the driver died: {left}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_failed_ray_run_ends_on_its_cause_with_the_logs_in_the_run_directory(av_overfit, on_cluster, tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", av_overfit, method="naive")
    done = gblend(["run", cfg, "--out", "run", "--set", "optim.lr=1e6"], cwd=tmp_path, env=on_cluster)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gblend: error: training diverged at epoch 1") and "lower optim.lr" in last
    assert "Traceback" not in done.stdout + done.stderr
    log = (tmp_path / "run" / "ray.log").read_text()  # Ray's own output, off the terminal
    error = (tmp_path / "run" / "error.txt").read_text()
    assert "RayTrainWorker" in log and error.startswith("training diverged") and "Traceback" in error


def test_a_resumed_sweep_keeps_its_finished_trial_and_its_resumed_trial_has_all_its_rounds(reference, on_cluster,
                                                                                           tmp_path):
    """A sweep (Ray engine) killed when its naive trial has finished and its G-Blend trial is
    mid-run, then resumed: the finished trial is not run again; the G-Blend trial continues
    its run and ends with the files of the uninterrupted run of its config."""
    ref, cfg, _ = reference
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(open(cfg).read()),
                                     "sweep": {"grid": {"method": ["naive", "gblend:online"]},
                                               "max_concurrent_trials": 1}}))
    out = tmp_path / "sweep"

    def trial(method: str):
        return next(iter(out.glob(f"trials/method={method}*")), None)

    def mid_run() -> bool:  # in its second super-epoch, read from the file rank 0 writes (the mirror lags)
        t = trial("gblend_online")
        return t is not None and _trained_at(t) == [0, 2]

    killed = gblend(["sweep", str(space), "--out", str(out)], cwd=tmp_path, env=on_cluster, kill_when=mid_run)
    assert killed.returncode == -signal.SIGKILL
    finished = {p: p.stat().st_mtime_ns for p in trial("naive").rglob("*") if p.is_file()}
    assert trial("naive") / "results.json" in finished, "the naive trial had not finished first"
    refused = gblend(["sweep", str(space), "--out", str(out)], cwd=tmp_path, env=on_cluster)
    assert refused.returncode == 2 and "--resume continues it" in refused.stderr.strip().splitlines()[-1]
    resumed = gblend(["sweep", str(space), "--out", str(out), "--resume"], cwd=tmp_path, env=on_cluster)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert sorted(r["overrides"]["method"] for r in rows) == ["gblend:online", "naive"]
    assert all(r["status"] == "ok" for r in rows)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not run again
    assert rounds_of(trial("gblend_online")) == [0, 2, 4]
    # the reference is the same config; the trial's runs are grouped under the sweep in W&B
    assert_same_run(trial("gblend_online"), ref, extra=("trained_weights.json",), ignore=("config.tracking.group",))
    files, epochs = wandb_epochs(trial("gblend_online"))  # the trial's W&B run, offline: one, every epoch once
    assert len(files) == 1 and epochs == list(range(1, EPOCHS + 1))
    from gblend_ray.cli import main

    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "gblend:online" in md and "naive" in md and "[video,audio,fused]=[" in md

"""Overlapped G-Blend rounds (``probes.overlap``) on the session's local Ray cluster: the
trainer trains on while a round's probes run, every rank switches at the same step, no step
trains with a round's weights before its boundary, and a worker group restarted from a
boundary checkpoint goes on with the weights that checkpoint holds."""

import json
import os
import signal
import threading
import time

from gblend_ray.core.rounds import warmup_weights
from gblend_ray.core.spec import RunSpec
from gblend_ray.distributed.ray_runner import run_on_ray
from gblend_ray.distributed.trainer import latest_state
from gblend_ray.storage.rundir import RunDir

HEADS = ["video", "audio", "fused"]


def _spec(path, workers: int) -> RunSpec:
    spec = RunSpec(method="gblend:online", seed=1)
    spec.data.path = str(path)
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 32, 16, 32
    spec.train.epochs, spec.train.batch_size, spec.train.threads = 8, 16, 1
    # short probes on a quarter of T: a round usually arrives inside the super-epoch it estimates
    spec.blend.warmup_epochs, spec.blend.super_epoch, spec.blend.probe_epochs = 4, 2, 1
    spec.probes.overlap, spec.probes.subset = True, 0.25
    spec.trainer.num_workers = workers
    spec.tracking.backend = "none"
    return spec


def _point(applied: dict) -> tuple[int, int]:
    return applied["epoch"], applied["step"]


def _check_schedule(trajectory: list[dict], history: list[dict], warmup: dict) -> None:
    """Every round takes effect at or after its boundary and at or before the next one (at
    most one in flight); only the last may never take effect; each epoch record's weights
    are those of the last round in force by its epoch (the warm-up weights before any)."""
    boundaries = [r["epoch"] for r in trajectory]
    for k, r in enumerate(trajectory):
        if r["applied"] is None:
            assert k == len(trajectory) - 1, f"round at epoch {r['epoch']} never took effect"
            continue
        assert _point(r["applied"]) >= (r["epoch"], 0), r
        if k + 1 < len(trajectory):
            assert _point(r["applied"]) <= (boundaries[k + 1], 0), r
    for record in history:
        e = record["epoch"] - 1  # the 0-based epoch it trained
        in_force = [r for r in trajectory if r["applied"] is not None and r["applied"]["epoch"] <= e]
        expected = in_force[-1]["weights"] if in_force else warmup
        assert {h: record[f"weights/{h}"] for h in HEADS} == expected, record["epoch"]
        switched_here = [r["applied"]["step"] for r in in_force if r["applied"]["epoch"] == e]
        if switched_here and switched_here[-1] > 0:  # a switch inside the epoch is named on its record
            assert record["weights_from_step"] == switched_here[-1]
        if "weights_from_step" in record:
            assert record["weights_from_step"] in switched_here


def test_two_ddp_workers_train_on_during_rounds_and_switch_at_the_same_step(ray_cluster, av_overfit, tmp_path):
    spec = _spec(av_overfit, workers=2)
    results = run_on_ray(spec, tmp_path / "run")
    trajectory = results["trajectory"]
    assert [r["epoch"] for r in trajectory] == [0, 4, 6]
    assert json.loads((tmp_path / "run" / "trajectory.json").read_text()) == trajectory
    warmup = warmup_weights(spec.blend, HEADS, "fused")
    _check_schedule(trajectory, results["history"], warmup)
    # the trainer went on while a round ran: some round took effect after its boundary's
    # first step and before the next boundary (not waited for there)
    ends = [r["epoch"] for r in trajectory[1:]] + [spec.train.epochs]
    assert any(r["applied"] is not None and (r["epoch"], 0) < _point(r["applied"]) < (end, 0)
               for r, end in zip(trajectory, ends)), [r["applied"] for r in trajectory]
    # both ranks switched to each round at the same step, and so trained the same model
    trained = json.loads((tmp_path / "run" / "trained_weights.json").read_text())
    for r in trajectory:
        ranks = {t["rank"]: t for t in trained if t["epoch"] == r["epoch"]}
        if r["applied"] is None:
            assert not ranks  # no rank trained with it
            continue
        assert set(ranks) == {0, 1}
        assert ranks[0]["applied"] == ranks[1]["applied"] == r["applied"]
        assert ranks[0]["weights"] == ranks[1]["weights"] == r["weights"]
    digests = results["rank_parameters"]
    assert len(digests) == 2 and digests[0] == digests[1]
    last = [r for r in trajectory if r["applied"] is not None][-1]
    assert results["final_weights"] == last["weights"]
    # the last boundary's checkpoint holds the weights in force at its first step
    state = latest_state(RunDir(tmp_path / "run"))
    assert state.epoch == 6
    at_six = [r for r in trajectory if r["applied"] is not None and _point(r["applied"]) <= (6, 0)]
    assert state.weights == (at_six[-1]["weights"] if at_six else warmup)
    assert results["test"]["top1"] > 0.15  # it learned: chance is 0.1


class _Epochs:
    """The run's epoch records as the driver gets them."""

    def __init__(self):
        self.epochs: list[int] = []

    def on_resume(self, epoch, history, rounds):
        pass

    def on_epoch(self, record):
        self.epochs.append(record["epoch"])

    def on_round(self, record):
        pass

    def on_end(self, results):
        pass


def test_a_worker_killed_after_a_boundary_restarts_from_its_checkpoint_with_the_weights_in_force(
        ray_cluster, av_overfit, tmp_path):
    spec = _spec(av_overfit, workers=1)
    spec.trainer.max_failures = 1
    run = tmp_path / "run"
    seen = _Epochs()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(results=run_on_ray(spec, run, observer=seen)), daemon=True)
    thread.start()

    def trained() -> list[dict]:
        try:
            return json.loads((run / "trained_weights.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []

    def registered(name: str) -> bool:  # Ray Train's controller knows the checkpoint (it restores from it)
        try:
            return name in (run / "ray" / "train" / "checkpoint_manager_snapshot.json").read_text()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive() and not (
            5 in seen.epochs and trained() and registered("epoch_0004")):
        time.sleep(0.05)
    assert thread.is_alive() and 5 in seen.epochs and not registered("epoch_0006"), \
        "the run ended (or stalled, or passed epoch 6) before the kill"
    (first,) = [t for t in trained() if t["epoch"] == 0]  # round 0 took effect by the boundary at 4
    os.kill(first["pids"][0], signal.SIGKILL)  # the trainer worker, in the super-epoch from epoch 4
    thread.join(300)
    assert not thread.is_alive() and "results" in box
    results = box["results"]
    trajectory = results["trajectory"]
    assert [r["epoch"] for r in trajectory] == [0, 4, 6]  # every boundary's round exactly once
    assert [r["epoch"] for r in results["history"]] == list(range(1, 9))
    _check_schedule(trajectory, results["history"], warmup_weights(spec.blend, HEADS, "fused"))
    records = {t["epoch"]: t for t in trained()}
    # round 0's weights came back with the boundary checkpoint at 4: nothing re-applied them
    assert records[0]["pids"] == first["pids"]
    # the restarted worker (another process) took up round 4, answered once by the coordinator
    assert records[4]["pids"][-1] != first["pids"][0]
    assert _point(trajectory[1]["applied"]) >= (4, 0)

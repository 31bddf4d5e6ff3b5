"""Sweeps that search: the objective's checks, Tune's searchers and schedulers, per-epoch
validation reports, early-stopped trials and the best trial by validation."""

import json

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.distributed.search import (
    SearchError,
    best_trial,
    epoch_metrics,
    final_test_metrics,
    objective,
    scheduler,
    searcher,
)
from gblend_ray.storage.rundir import RunDir


def test_a_test_metric_is_refused_as_the_objective_and_says_why():
    with pytest.raises(SearchError, match=r"'test/top1' is a test metric; a sweep selects on validation"):
        objective({"metric": "test/top1", "mode": "max"})
    with pytest.raises(SearchError, match="sweep.mode: expected one of max, min"):
        objective({"metric": "val/top1"})
    with pytest.raises(SearchError, match="expected a validation metric"):
        objective({"metric": "train/fused/loss", "mode": "min"})
    with pytest.raises(SearchError, match="needs the metric it optimises"):
        objective({"scheduler": {"name": "asha"}})
    assert objective({"grid": {"seed": [0, 1]}}) is None  # an enumeration needs none
    assert objective({"metric": "val/fused/loss", "mode": "min"}) == ("val/fused/loss", "min")


def test_searchers_and_schedulers_are_tunes_own_and_their_options_are_checked():
    goal = ("val/top1", "max")
    sample = {"sample": {"optim.lr": {"loguniform": [0.01, 0.1]}}}
    limited = searcher({**sample, "search": {"name": "optuna", "seed": 0}}, goal, 3)
    assert type(limited).__name__ == "ConcurrencyLimiter" and type(limited.searcher).__name__ == "OptunaSearch"
    assert searcher({**sample, "search": {"name": "random"}}, goal, 3) is None
    with pytest.raises(SearchError, match="optuna searches the sample: section only"):
        searcher({"grid": {"seed": [0, 1]}, "search": {"name": "optuna"}}, goal, 2)
    with pytest.raises(SearchError, match="sweep.search.name: expected one of random, optuna, hyperopt"):
        searcher({"search": {"name": "bayes"}}, goal, 2)
    asha = scheduler({"scheduler": {"name": "asha", "reduction_factor": 3}}, goal, 12)
    assert type(asha).__name__ == "AsyncHyperBandScheduler"
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("epoch", 12, 3)  # max_t: train.epochs
    with pytest.raises(SearchError, match=r"unknown ASHA option\(s\) \['patience'\]"):
        scheduler({"scheduler": {"name": "asha", "patience": 2}}, goal, 12)
    with pytest.raises(SearchError, match="sweep.scheduler.grace_period: expected a number >= 1"):
        scheduler({"scheduler": {"name": "asha", "grace_period": 0}}, goal, 12)


def test_epoch_and_test_metrics_name_their_split():
    record = {"epoch": 3, "lr": 0.1, "train/fused/top1": 0.9, "val/fused/top1": 0.6, "val/fused/loss": 1.2,
              "val/video/top1": 0.5, "weights/video": 0.7, "weights/fused": 0.3}
    assert epoch_metrics(record, "fused") == {
        "epoch": 3, "val/fused/top1": 0.6, "val/fused/loss": 1.2, "val/video/top1": 0.5, "val/top1": 0.6,
        "val/loss": 1.2, "weights/video": 0.7, "weights/fused": 0.3}
    assert epoch_metrics(record, "video")["val/top1"] == 0.5  # a uni-modal run's prediction head
    assert final_test_metrics({"test": {"top1": 0.7, "loss": 0.9}}) == {"test/top1": 0.7, "test/loss": 0.9}


def test_the_best_trial_is_the_best_finished_one_by_the_metric():
    rows = [{"status": "ok", "val/top1": 0.6}, {"status": "stopped", "val/top1": 0.9},
            {"status": "ok", "val/top1": 0.7}, {"status": "failed", "val/top1": float("nan")}]
    assert best_trial(rows, ("val/top1", "max")) is rows[2]
    assert best_trial(rows, ("val/top1", "min")) is rows[0]
    assert best_trial([{"status": "failed", "val/top1": None}], ("val/top1", "max")) is None


def _space(tmp_path, data, sweep):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": str(data)}, "tracking": {"backend": "none"}, "method": "gblend:online",
        "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 4, "batch_size": 32, "threads": 1}, "blend": {"warmup_epochs": 1, "super_epoch": 2},
        "sweep": sweep}))
    return path


def test_a_sweep_naming_a_test_metric_is_refused_before_anything_runs(av_overfit, tmp_path, capsys):
    space = _space(tmp_path, av_overfit, {"sample": {"optim.lr": {"loguniform": [0.01, 0.1]}},
                                          "metric": "test/top1", "mode": "max"})
    assert main(["sweep", str(space), "--out", str(tmp_path / "s")]) == 2
    assert "is a test metric; a sweep selects on validation" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "s").exists()


def test_optuna_and_asha_stop_trials_early_and_the_best_is_chosen_on_validation(ray_cluster, av_overfit, tmp_path,
                                                                                capsys):
    space = _space(tmp_path, av_overfit, {
        "sample": {"optim.lr": {"loguniform": [0.0005, 0.3]}, "blend.floor": {"uniform": [0.1, 0.5]}},
        "num_samples": 6, "engine": "inline", "max_concurrent_trials": 2,
        "metric": "val/top1", "mode": "max", "search": {"name": "optuna", "seed": 0},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}})
    out = tmp_path / "sweep"
    assert main(["sweep", str(space), "--out", str(out)]) == 0
    printed, errors = capsys.readouterr()
    # the terminal has the sweep's lines, not Tune's experiment heading or Optuna's logs
    assert "Configuration for experiment" not in printed + errors and "A new study" not in printed + errors
    assert len(printed.strip().splitlines()) <= 6 + 3, printed
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 6 and {r["status"] for r in rows} <= {"ok", "stopped"}
    stopped = [r for r in rows if r["status"] == "stopped"]
    finished = [r for r in rows if r["status"] == "ok"]
    assert stopped and finished, rows  # ASHA cut some trials short
    for r in stopped:  # recorded as stopped, not failed, at the epoch they got to
        assert r["epochs"] < 4 and r["test"] == {}
        assert RunDir(out / "trials" / r["run_dir"].rsplit("/", 1)[-1]).identity()["status"] == "stopped"
    (best,) = [r for r in rows if r["best"]]
    assert best["status"] == "ok" and best["val/top1"] == max(r["val/top1"] for r in finished)
    assert set(best["test"]) >= {"top1", "loss"}
    # the value it was chosen by is its last epoch's validation top-1 of the prediction head
    results = json.loads((out / "trials" / best["run_dir"].rsplit("/", 1)[-1] / "results.json").read_text())
    assert best["val/top1"] == pytest.approx(results["history"][-1]["val/fused/top1"])
    assert best["test"]["top1"] == pytest.approx(results["test"]["top1"])
    # the searcher sampled the space: six different learning rates in its range
    lrs = [r["overrides"]["optim.lr"] for r in rows]
    assert len(set(lrs)) == 6 and all(0.0005 <= lr <= 0.3 for lr in lrs)
    assert f"{len(stopped)} stopped early" in printed and "best by val/top1 (max)" in printed
    # the report names the best trial and the stopped ones (which have no results to tabulate)
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    (line,) = [line for line in md.splitlines() if line.startswith("Best trial by val/top1 (validation, last epoch)")]
    assert f"optim.lr={best['overrides']['optim.lr']:.4g}" in line and f"val/top1 {best['val/top1']:.4f}" in line
    assert f"Stopped early by the scheduler ({len(stopped)}, not failed)" in md


def test_a_killed_sweep_with_a_searcher_resumes_to_its_budget(ray_cluster, av_overfit, tmp_path):
    """An Optuna sweep killed after two of its four trials finished, then resumed: Tune
    restores its experiment and the searcher's state, the finished trials are not run
    again, and the sweep ends with its four trials, no more."""
    import signal

    from lifecycle import gblend

    space = _space(tmp_path, av_overfit, {
        "sample": {"optim.lr": {"loguniform": [0.005, 0.2]}}, "num_samples": 4, "engine": "inline",
        "max_concurrent_trials": 1, "metric": "val/top1", "mode": "max", "search": {"name": "optuna", "seed": 0}})
    out = tmp_path / "sweep"
    env = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}

    def finished():
        return sorted(out.glob("trials/*/results.json"))

    killed = gblend(["sweep", str(space), "--out", str(out)], cwd=tmp_path, env=env,
                    kill_when=lambda: len(finished()) >= 2)
    assert killed.returncode == -signal.SIGKILL
    kept = {p: p.stat().st_mtime_ns for p in finished()}
    assert len(kept) >= 2 and list(out.glob("tune/sweep/searcher-state-*.pkl"))
    resumed = gblend(["sweep", str(space), "--out", str(out), "--resume"], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    assert len(list(out.glob("trials/*"))) == 4  # the budget, no trial more
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # not run again
    assert len({r["overrides"]["optim.lr"] for r in rows}) == 4
    assert sum(r["best"] for r in rows) == 1

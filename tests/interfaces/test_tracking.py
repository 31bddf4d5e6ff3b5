"""The run tracker: local mirror, W&B offline run files read back from disk, pickling,
secret scrubbing and the W&B mode rule. No network: W&B runs with WANDB_MODE=offline."""

import csv
import json
import pickle
import time
from pathlib import Path

import pytest
from wandb_files import series, wandb_view

from gblend_ray.interfaces.tracking import (
    RunTracker,
    TrackingSpec,
    run_id,
    scrub,
    wandb_mode,
)

SECRET = "abc123"
EPOCHS = 4
ROUNDS = [  # (epoch, weight of video, G, dO, ogr)
    (1, 0.25, 0.011, 0.31, 0.5),
    (2, 0.40, 0.022, 0.32, 0.6),
    (3, 0.55, 0.033, 0.33, None),
]


def epoch_record(epoch: int) -> dict:
    r = {"epoch": epoch, "lr": 0.1 / epoch}
    for h, w in (("video", 0.5), ("audio", 0.3), ("fused", 0.2)):
        r.update({f"loss/{h}": 1.0 / epoch + w, f"weights/{h}": w,
                  f"train/{h}/loss": 0.9 / epoch, f"train/{h}/top1": 0.1 * epoch,
                  f"val/{h}/loss": 1.1 / epoch, f"val/{h}/top1": 0.09 * epoch})
    return r


def round_record(epoch, w, g, do, ogr) -> dict:
    heads = {}
    for h, scale in (("video", 1.0), ("audio", 2.0), ("fused", 3.0)):
        heads[h] = {"train_before": 1.0, "val_before": 1.1, "train_after": 0.8, "val_after": 0.95,
                    "G": g * scale, "dO": do * scale, "ogr": None if ogr is None else ogr * scale,
                    "estimated_weight": w, "weight": w}
    return {"epoch": epoch, "probe_epochs": 2, "metric": "loss", "heads": heads,
            "weights": {"video": w, "audio": (1 - w) / 2, "fused": (1 - w) / 2},
            "fallback": "uniform" if epoch == 2 else None, "prediction_head_starved": epoch == 3,
            "safeguard": None, "round_seconds": 0.5 * epoch}


RESULTS = {"method": "gblend", "seed": 7, "test": {"loss": 0.8, "top1": 0.625, "top5": 0.95}}
CONFIG = {"method": "gblend", "seed": 7, "optim": {"lr": 0.1},
          "tracking": {"backend": "wandb"}, "wandb": {"api_key": SECRET}}


def offline_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(root / "wandb_dir"))
    mp.setenv("HOME", str(root / "home"))
    mp.delenv("WANDB_API_KEY", raising=False)
    (root / "home").mkdir(exist_ok=True)


def _settled_view(path: Path, deadline: float) -> dict:
    """The run file's view once it holds the exit record (or at ``deadline``)."""
    while True:
        try:
            view = wandb_view(path)
        except Exception:  # a record still being written (DecodeError, a torn chunk)
            if time.monotonic() >= deadline:
                raise
            view = None
        if view is not None and (view["exited"] or time.monotonic() >= deadline):
            return view
        time.sleep(0.2)


# -- one tracked run, shared by the tests below (W&B offline init costs seconds) --------

@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    run_dir = root / "sweep" / "gblend" / "seed7"
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, root)
        fresh = RunTracker(run_dir, TrackingSpec(group="sweep-a"), "gblend-seed7", CONFIG)
        tracker = pickle.loads(pickle.dumps(fresh))  # shipped to a worker before its first call
        assert not run_dir.exists()  # nothing is created before first use
        rounds = iter(ROUNDS)
        for epoch in range(1, EPOCHS + 1):
            tracker.on_epoch(epoch_record(epoch))
            if epoch <= len(ROUNDS):
                tracker.on_round(round_record(*next(rounds)))
        after_use = pickle.loads(pickle.dumps(tracker))
        tracker.on_end(RESULTS)
        tracker.on_end(RESULTS)  # idempotent
        files = sorted(run_dir.rglob("run-*.wandb"))
        # W&B's service process may still be writing the run's last records when finish()
        # returns (seen on a loaded 2-core machine; a record read half-written does not
        # parse): wait for the exit record, briefly.
        deadline = time.monotonic() + 30
        view = _settled_view(files[0], deadline) if files else None
        yield {"root": root, "run_dir": run_dir, "tracker": tracker, "after_use": after_use,
               "files": files, "view": view}


def test_wandb_offline_run_is_written_once(tracked):
    assert len(tracked["files"]) == 1
    assert tracked["files"][0].name == f"run-{run_id(tracked['run_dir'])}.wandb"
    assert tracked["files"][0].parent.parent == tracked["run_dir"] / "wandb"
    view = tracked["view"]
    assert view["exited"]
    assert view["run"].run_id == run_id(tracked["run_dir"])
    assert view["run"].run_group == "sweep-a"
    assert view["run"].display_name == "gblend-seed7"
    assert view["run"].project == "gblend_ray"


def test_wandb_round_series_has_one_point_per_round(tracked):
    rows = tracked["view"]["rows"]
    assert series(rows, "weights/video") == pytest.approx([w for _, w, _, _, _ in ROUNDS])
    assert series(rows, "G/video") == pytest.approx([g for _, _, g, _, _ in ROUNDS])
    assert series(rows, "dO/audio") == pytest.approx([2 * d for _, _, _, d, _ in ROUNDS])
    assert series(rows, "ogr/fused") == pytest.approx([3 * o for *_, o in ROUNDS if o is not None])
    assert series(rows, "round/epoch") == [1, 2, 3]
    assert series(rows, "round/fallback") == [0, 1, 0]
    assert series(rows, "round/starved") == [0, 0, 1]
    # round points sit on the round axis, not on the epoch one
    for row in rows:
        if "weights/video" in row:
            assert "epoch" not in row and "loss/video" not in row
    metrics = tracked["view"]["metrics"]
    assert metrics["weights/video"].step_metric == "round/epoch"
    assert metrics["ogr/video"].step_metric == "round/epoch"


def test_wandb_epoch_series_has_one_point_per_epoch(tracked):
    rows = tracked["view"]["rows"]
    assert series(rows, "epoch") == list(range(1, EPOCHS + 1))
    assert series(rows, "loss/video") == pytest.approx([epoch_record(e)["loss/video"] for e in range(1, EPOCHS + 1)])
    assert series(rows, "val/fused/top1") == pytest.approx([0.09 * e for e in range(1, EPOCHS + 1)])
    assert series(rows, "lr") == pytest.approx([0.1 / e for e in range(1, EPOCHS + 1)])
    # the weights in effect each epoch, kept apart from the per-round weights/<head> series
    assert series(rows, "epoch_weights/audio") == pytest.approx([0.3] * EPOCHS)
    metrics = tracked["view"]["metrics"]
    assert metrics["loss/video"].step_metric == "epoch"
    assert metrics["train/audio/top1"].step_metric == "epoch"


def test_wandb_has_one_chart_of_every_heads_weight_over_the_epochs(tracked):
    """The paper's Fig. 5a as a W&B chart (``line_series``): its table holds each head's
    weight in force at every epoch; the run's job type and tags name its method."""
    view = tracked["view"]
    (row,) = [r for r in view["rows"] if "weights_chart_table/path" in r]
    assert "_wandb/visualize/weights_chart" in view["config"]
    table = json.loads((tracked["files"][0].parent / "files" / row["weights_chart_table/path"]).read_text())
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    points = {(r["lineKey"], r["step"]): r["lineVal"] for r in rows}
    weights = {"video": 0.5, "audio": 0.3, "fused": 0.2}
    assert points == {(h, e): pytest.approx(w) for h, w in weights.items() for e in range(1, EPOCHS + 1)}
    assert view["run"].job_type == "gblend" and list(view["run"].tags) == ["gblend", "all"]


def test_wandb_summary_and_config(tracked):
    summary, config = tracked["view"]["summary"], tracked["view"]["config"]
    assert summary["test/top1"] == pytest.approx(0.625)
    assert summary["test/top5"] == pytest.approx(0.95)
    assert summary["test/loss"] == pytest.approx(0.8)
    assert config["wandb"] == {"api_key": "***"}
    assert config["optim"] == {"lr": 0.1}


def test_local_mirror(tracked):
    run_dir = tracked["run_dir"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    assert metrics[2] == pytest.approx(epoch_record(3))
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 3
    assert rounds[2]["heads"]["video"]["ogr"] is None
    assert rounds[1]["fallback"] == "uniform"
    with open(run_dir / "rounds.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    header = reader.fieldnames
    assert header[0] == "epoch"
    for col in ("weights/video", "G/video", "dO/video", "ogr/video", "weights/fused", "ogr/audio"):
        assert col in header
    assert len(rows) == 3
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["weights/video"]) for r in rows] == pytest.approx([0.25, 0.40, 0.55])
    assert [r["ogr/video"] for r in rows][2] == ""  # None stays empty
    assert float(rows[0]["G/audio"]) == pytest.approx(0.022)


def test_pickling(tracked):
    tracker = tracked["tracker"]
    clone = pickle.loads(pickle.dumps(tracker))  # after on_end
    assert clone._run is None and clone.run_dir == tracker.run_dir and clone.name == tracker.name
    after_use = tracked["after_use"]  # pickled mid-run, with a live W&B run
    assert after_use._run is None and after_use.spec == TrackingSpec(group="sweep-a")
    assert pickle.loads(pickle.dumps(RunTracker("/nonexistent/x", TrackingSpec(), "n", {}))).name == "n"


def test_no_secret_is_written_anywhere(tracked):
    files = [p for p in tracked["root"].rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "metrics.jsonl" for p in files)
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert SECRET not in repr(tracked["tracker"].config)


def test_restarted_tracker_resumes_the_same_run_id(tmp_path):
    a = tmp_path / "runs" / "r0"
    assert run_id(a) == run_id(str(a)) == run_id(tmp_path / "runs" / ".." / "runs" / "r0")
    assert run_id(a) != run_id(tmp_path / "runs" / "r1")


# -- backend "none" -----------------------------------------------------------------------

def test_backend_none_writes_only_the_local_mirror(tmp_path, monkeypatch):
    offline_env(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    tracker = RunTracker(run_dir, TrackingSpec(backend="none"), "n", CONFIG)
    for epoch in (1, 2):
        tracker.on_epoch(epoch_record(epoch))
    tracker.on_round(round_record(*ROUNDS[0]))
    tracker.on_end(RESULTS)
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "rounds.csv", "rounds.jsonl"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "wandb_dir").exists()
    assert not list(tmp_path.rglob("*.wandb"))


# -- scrub ----------------------------------------------------------------------------------

def test_scrub_hides_nested_secrets_and_copies():
    config = {"lr": 0.1, "API_KEY": "k1", "wandb": {"apiKey": "k2", "project": "p", "deep": {"hf_token": "k3"}},
              "db": [{"Password": "k4", "user": "u"}], "client_secret": {"a": "k5"}, "tokens_seen": 10}
    out = scrub(config)
    assert out == {"lr": 0.1, "API_KEY": "***", "wandb": {"apiKey": "***", "project": "p", "deep": {"hf_token": "***"}},
                   "db": [{"Password": "***", "user": "u"}], "client_secret": "***", "tokens_seen": "***"}
    assert config["wandb"]["apiKey"] == "k2" and config["db"][0]["Password"] == "k4"  # the original is untouched
    assert scrub({}) == {}


# -- wandb_mode -----------------------------------------------------------------------------

@pytest.fixture
def no_wandb_env(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_wandb_mode_offline_without_a_key(no_wandb_env):
    assert wandb_mode() == "offline"
    assert wandb_mode(None) == "offline"


def test_wandb_mode_online_with_a_key(no_wandb_env):
    no_wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


def test_wandb_mode_online_with_a_netrc_entry(no_wandb_env, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode() == "online"
    netrc.write_text("machine example.com\n  login user\n  password z\n")
    assert wandb_mode() == "offline"


def test_wandb_mode_explicit(no_wandb_env):
    assert wandb_mode("disabled") == "disabled"
    no_wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("offline") == "offline"
    no_wandb_env.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    assert wandb_mode("online") == "offline"  # the environment variable wins
    no_wandb_env.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode() == "offline"
    no_wandb_env.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ValueError):
        wandb_mode()


def test_spec_validation():
    from gblend_ray.interfaces.config import ConfigError, spec_from_dict

    with pytest.raises(ConfigError, match="tracking.backend"):
        spec_from_dict({"data": {"path": "x"}, "tracking": {"backend": "mlflow"}})
    with pytest.raises(ConfigError, match="tracking.mode"):
        spec_from_dict({"data": {"path": "x"}, "tracking": {"mode": "sometimes"}})
    assert TrackingSpec() == TrackingSpec(backend="wandb", project="gblend_ray", group=None, mode=None)


def test_a_sweeps_wandb_summary_names_its_best_trial_and_tabulates_every_trial(tmp_path):
    from gblend_ray.interfaces.tracking import log_sweep_summary
    from gblend_ray.storage.location import resolve

    rows = [{"overrides": {"optim.lr": 0.01}, "run_dir": "s/trials/a", "status": "ok", "val/top1": 0.61,
             "test": {"top1": 0.58, "loss": 1.2}, "best": False},
            {"overrides": {"optim.lr": 0.05}, "run_dir": "s/trials/b", "status": "ok", "val/top1": 0.66,
             "test": {"top1": 0.63, "loss": 1.1}, "best": True},
            {"overrides": {"optim.lr": 0.3}, "run_dir": "s/trials/c", "status": "stopped", "val/top1": 0.2,
             "test": {}, "best": False}]
    out = tmp_path / "s"
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, tmp_path)
        log_sweep_summary(resolve(out), rows, ("val/top1", "max"), TrackingSpec(), group="s")
    (file,) = sorted(out.rglob("run-*.wandb"))
    view = _settled_view(file, time.monotonic() + 30)
    assert view["run"].job_type == "sweep" and view["run"].run_group == "s"
    summary = view["summary"]
    assert summary["best/optim.lr"] == 0.05 and summary["best/val/top1"] == pytest.approx(0.66)
    assert summary["best/test/top1"] == pytest.approx(0.63) and summary["best/run_dir"] == "s/trials/b"
    assert (summary["trials/ok"], summary["trials/stopped"], summary["trials/failed"]) == (2, 1, 0)
    (row,) = [r for r in view["rows"] if "trials/path" in r]
    table = json.loads((file.parent / "files" / row["trials/path"]).read_text())
    assert table["columns"] == ["run_dir", "status", "optim.lr", "val/top1", "test/loss", "test/top1", "best"]
    assert [r[2] for r in table["data"]] == [0.01, 0.05, 0.3] and [r[-1] for r in table["data"]] == [False, True,
                                                                                                     False]

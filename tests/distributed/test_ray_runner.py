"""The Ray engine end to end on the session's local cluster: Ray Train workers, probe
trials on Ray Tune, the coordinator actor."""

import json
import os
import time

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.core.spec import RunSpec
from gblend_ray.distributed.cluster import ResourceError, check_resources
from gblend_ray.distributed.ray_runner import fit_on_ray, run_on_ray
from gblend_ray.training.runner import run_inline


def _spec(path, **train):
    spec = RunSpec(method="gblend:online", seed=1)
    spec.data.path = str(path)
    spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 32, 16, 32
    spec.train.epochs, spec.train.batch_size, spec.train.threads = 8, 32, 1
    spec.blend.warmup_epochs, spec.blend.super_epoch = 4, 2
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


def test_one_worker_matches_the_in_process_runner_and_probes_overlap(ray_cluster, av_overfit, tmp_path):
    spec = _spec(av_overfit)
    on_ray, result = fit_on_ray(spec, tmp_path / "ray")
    inline = run_inline(spec)
    # Ray Train's Result: the final report's test and validation metrics and every epoch's
    # history; each kept checkpoint with its epoch's validation metrics
    assert result.metrics["test/top1"] == on_ray["test"]["top1"] and result.metrics["epoch"] == 8
    assert [h["epoch"] for h in result.metrics["history"]] == list(range(1, 9))
    assert result.metrics["val/fused/top1"] == on_ray["history"][-1]["val/fused/top1"]
    boundary = {m["epoch"]: m for _, m in result.best_checkpoints}
    assert boundary[6]["val/video/loss"] == on_ray["history"][5]["val/video/loss"]
    assert boundary[6]["weights/fused"] == on_ray["history"][5]["weights/fused"]
    assert [r["epoch"] for r in on_ray["trajectory"]] == [0, 4, 6]
    for a, b in zip(on_ray["trajectory"], inline["trajectory"], strict=True):
        assert a["weights"] == pytest.approx(b["weights"], abs=1e-6)
    assert on_ray["test"]["top1"] == pytest.approx(inline["test"]["top1"], abs=1e-6)
    # one copy of each checkpoint, the last two kept: the final one and the last boundary's
    kept = sorted(p.name for p in (tmp_path / "ray" / "ray" / "train").glob("epoch_*"))
    assert kept == ["epoch_0006", "epoch_0008_final"]
    assert not (tmp_path / "ray" / "checkpoint_staging").exists()
    saved = json.loads((tmp_path / "ray" / "trajectory.json").read_text())
    assert [r["epoch"] for r in saved] == [0, 4, 6]
    # the k+1 probes of a round ran at the same time: every probe started before any ended
    for record in saved:
        starts = [h["probe_started"] for h in record["heads"].values()]
        ends = [h["probe_ended"] for h in record["heads"].values()]
        assert max(starts) < min(ends), record["heads"]


def test_two_worker_ddp_run_through_the_cli(ray_cluster, av_overfit, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": str(av_overfit)}, "method": "gblend:online",
        "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 6, "batch_size": 32, "threads": 1},
        "blend": {"warmup_epochs": 2, "super_epoch": 2},
        "trainer": {"num_workers": 2}, "probes": {"resources": {"CPU": 0.5}},
    }))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert [r["epoch"] for r in trajectory] == [0, 2, 4]
    assert results["test"]["top1"] > 0.15  # it learned: chance is 0.1 (10 classes)
    trained = json.loads((out / "trained_weights.json").read_text())
    for record in trajectory:
        by_rank = {t["rank"]: t["weights"] for t in trained if t["epoch"] == record["epoch"]}
        assert set(by_rank) == {0, 1}
        assert by_rank[0] == by_rank[1] == record["weights"]


@pytest.mark.parametrize("method", ["uncertainty", "pretrain", "early_stop"])
def test_baselines_train_with_two_ddp_workers(ray_cluster, av_overfit, tmp_path, method):
    spec = _spec(av_overfit, epochs=6)
    spec.method, spec.trainer.num_workers, spec.baselines.patience = method, 2, 1
    if method == "early_stop":  # a learning rate at which the fused loss on V soon rises
        spec.train.epochs, spec.optim.lr = 12, 0.3
    results = run_on_ray(spec, tmp_path)
    history = results["history"]
    assert results["test"]["top1"] > 0.15
    if method == "uncertainty":  # the ranks' learned weights stayed equal: DDP averaged their gradients
        assert all(w > 0 for w in results["final_weights"].values())
        assert results["final_weights"] == pytest.approx({h: history[-1][f"learned/{h}"] for h in results["final_weights"]})
    if method == "pretrain":
        assert len(history) == 12 and (tmp_path / "pretrained" / "video.pt").exists()
        assert (tmp_path / "pretrained" / "rank_1" / "video.pt").exists()
    if method == "early_stop":
        stop = results["early_stopping"]
        # it fired, on every rank at the same epoch (a rank that trained on would hang the
        # others at the next all-reduce), and kept the best epoch's model
        assert stop["stopped_at"] == len(history) < 12
        assert stop["stopped_at"] - stop["best_epoch"] == 1
        val = [r["val/fused/loss"] for r in history]
        assert val.index(min(val)) + 1 == stop["best_epoch"]


def test_more_than_the_cluster_has_fails_at_once(ray_cluster, av_overfit, tmp_path):
    spec = _spec(av_overfit)
    spec.trainer.num_workers = 64
    began = time.time()
    with pytest.raises(ResourceError, match=r"needs 64.25 CPU.*cluster has 8 CPU.*trainer.num_workers"):
        run_on_ray(spec, tmp_path / "too-big")
    assert time.time() - began < 10


def test_resource_check_counts_trainer_and_one_probe():
    spec = RunSpec()
    spec.trainer.num_workers = 2
    spec.probes.resources = {"CPU": 0.5}
    check_resources(spec, 3, available={"CPU": 2.5})
    with pytest.raises(ResourceError, match="probes.mode=inline"):
        check_resources(spec, 3, available={"CPU": 2.0})
    spec.trainer.use_gpu = True
    with pytest.raises(ResourceError, match="2 GPU"):
        check_resources(spec, 0, available={"CPU": 8.0})


def test_probe_trials_never_take_the_trainers_share():
    from gblend_ray.distributed.cluster import probe_trials_that_fit

    spec = RunSpec()
    spec.probes.resources = {"CPU": 1.0}  # 1 trainer worker x 1 CPU, 1 CPU per probe trial
    assert probe_trials_that_fit(spec, 3, available={"CPU": 2.0}) == 1
    assert probe_trials_that_fit(spec, 3, available={"CPU": 8.0}) == 3
    spec.probes.resources = {"CPU": 0.5}
    assert probe_trials_that_fit(spec, 3, available={"CPU": 2.0}) == 2


def test_fractional_gpu_probe_trials_fit_beside_a_trainer_on_a_gpu_share():
    from gblend_ray.distributed.cluster import probe_trials_that_fit
    from gblend_ray.distributed.ray_runner import resources_for

    spec = RunSpec()
    spec.trainer.use_gpu = True
    spec.trainer.resources_per_worker = {"CPU": 1.0, "GPU": 0.25}
    spec.probes.resources = {"CPU": 0.25, "GPU": 0.25}
    one_gpu = {"CPU": 4.0, "GPU": 1.0}
    assert resources_for(spec, 3) == {"CPU": 1.75, "GPU": 1.0}  # trainer + a probe trial per head, one GPU
    check_resources(spec, 3, available=one_gpu)
    assert probe_trials_that_fit(spec, 3, available=one_gpu) == 3
    spec.probes.resources = {"CPU": 0.25, "GPU": 0.5}
    assert probe_trials_that_fit(spec, 3, available=one_gpu) == 1  # 0.75 GPU left: one trial, the queue shared
    spec.trainer.resources_per_worker = {"CPU": 1.0}  # the trainer takes a whole GPU: no share is left
    with pytest.raises(ResourceError, match=r"1.5 GPU.*probes.resources"):
        check_resources(spec, 3, available=one_gpu)


def test_a_media_run_on_ray_decodes_clips_in_the_workers(ray_cluster, tmp_path):
    """mp4 files through Ray Train and the Tune probe trials: every process loads the
    manifest and decodes its own clips."""
    from gblend_ray.data.media.testmedia import write_test_media

    manifest = write_test_media(tmp_path / "media", classes=3, per_class=5, seconds=1.5, fps=12, size=48)
    spec = _spec(manifest, epochs=2)
    spec.blend.warmup_epochs, spec.blend.super_epoch = 1, 1
    spec.data.heldout_fraction, spec.data.test_fraction, spec.data.val_fraction = 0.2, 0.25, 0.0
    m = spec.data.media
    m.frames, m.stride, m.resize, m.size, m.n_mels, m.mel_frames, m.eval_clips, m.num_workers = 2, 2, 20, 16, 8, 12, 2, 1
    spec.train.batch_size = 4
    results = run_on_ray(spec, tmp_path / "run")
    assert [r["epoch"] for r in results["trajectory"]] == [0, 1]
    assert set(results["trajectory"][0]["weights"]) == {"video", "audio", "fused"}
    assert {"video_top1", "video_top5"} <= set(results["test"])


def test_a_planted_checkpoint_is_refused_before_a_resumed_run_starts(ray_cluster, av_overfit, tmp_path):
    from gblend_ray.interfaces.config import spec_to_dict
    from gblend_ray.storage.rundir import RunDir
    from gblend_ray.training.checkpoint import CheckpointError

    spec = _spec(av_overfit)
    run = RunDir(tmp_path / "run")
    run.start(spec_to_dict(spec))
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = tmp_path / "run" / "ray" / "train" / "epoch_0004"
    planted.mkdir(parents=True)
    import torch

    torch.save({"model": Planted(), "meta": "{}"}, planted / "state.pt")
    with pytest.raises(CheckpointError, match=r"epoch_0004/state\.pt.*weights_only=True"):
        run_on_ray(spec, run, resume=True)
    assert not marker.exists()


def test_an_autoscaling_cluster_is_asked_and_waited_for_then_the_shortfall_named(ray_cluster, caplog):
    spec = _spec("unused")
    spec.trainer.num_workers = 64
    began = time.time()
    with pytest.raises(ResourceError, match=r"needs 64.25 CPU.*has 8 CPU in all after waiting 1 s for the autoscaler"):
        check_resources(spec, 3, wait_s=1.0)
    assert 1.0 <= time.time() - began < 10
    (warning,) = [r.message for r in caplog.records if "waiting up to" in r.message]
    assert "waiting up to 1 s (trainer.resource_wait_s) for the autoscaler to add 64.25 CPU" in warning


def test_a_local_cluster_beyond_the_machines_cores_is_a_warning_naming_the_settings(caplog):
    from gblend_ray.distributed.cluster import local_cpus

    assert local_cpus(1.75, cores=2) == 2 and not caplog.records
    assert local_cpus(301.0, cores=2) == 301
    (warning,) = [r.message for r in caplog.records]
    assert "asks for 301 logical CPUs" in warning and "2 cores" in warning and "probes.resources.CPU" in warning


def test_sweep_concurrency_comes_from_the_limiting_resource():
    from gblend_ray.distributed.sweep import concurrent_trials

    assert concurrent_trials({}, {"CPU": 1.75}, {"CPU": 8.0}) == 4
    assert concurrent_trials({}, {"CPU": 1.75, "GPU": 2.0}, {"CPU": 64.0, "GPU": 4.0}) == 2  # GPUs limit
    assert concurrent_trials({"max_concurrent_trials": 3}, {"GPU": 2.0}, {"GPU": 4.0}) == 3
    assert concurrent_trials({}, {"GPU": 8.0}, {"GPU": 4.0}) == 1


def test_ray_trains_controller_polls_every_half_second_unless_the_user_says_otherwise(tmp_path, monkeypatch):
    from gblend_ray.distributed.trainer import build_trainer
    from gblend_ray.storage.rundir import RunDir

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    build_trainer(RunSpec(), RunDir(tmp_path / "a"), "coord", "ns", None)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    build_trainer(RunSpec(), RunDir(tmp_path / "b"), "coord", "ns", None)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"

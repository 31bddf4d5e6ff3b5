import json
import os
import subprocess
import sys

import yaml

from gblend_ray.cli import main
from gblend_ray.data.arrays import load_dataset


def _config(tmp_path, data_path, **extra):
    cfg = {
        "data": {"path": str(data_path)},
        "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
        "train": {"epochs": 4, "batch_size": 32},
        "blend": {"warmup_epochs": 2, "super_epoch": 2},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_make_synthetic_writes_a_loadable_preset(tmp_path):
    assert main(["make-synthetic", str(tmp_path / "av"), "--preset", "av-overfit", "--seed", "3"]) == 0
    ds = load_dataset(tmp_path / "av")
    assert list(ds.modalities) == ["video", "audio"] and ds.num_classes == 10
    assert (tmp_path / "av" / "generator.yaml").read_text().startswith("preset: av-overfit\nseed: 3\n")


def test_run_writes_results_and_trajectory(tmp_path, tiny_dataset, capsys):
    cfg = _config(tmp_path, tiny_dataset, method="gblend:online")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--inline", "--set", "seed=2"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    trajectory = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert results["seed"] == 2 and results["config"]["seed"] == 2
    assert set(results["test"]) == {"loss", "top1", "top5"}
    assert [r["epoch"] for r in trajectory] == [0, 2]
    assert "test top-1" in capsys.readouterr().out


def test_compare_writes_summary(tmp_path, tiny_dataset, capsys):
    cfg = _config(tmp_path, tiny_dataset)
    out = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--methods", "uni:video,naive", "--seeds", "2", "--out", str(out), "--inline"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["uni:video", "naive"]
    for s in summary.values():
        assert len(s["runs"]) == 2 and abs(s["mean"] - sum(s["runs"]) / 2) < 1e-12
    assert (out / "naive" / "seed1" / "results.json").exists()
    assert "uni:video" in capsys.readouterr().out


def test_compare_defaults_to_every_modality_alone_then_the_fusions(tmp_path, tiny_dataset):
    cfg = _config(tmp_path, tiny_dataset, train={"epochs": 2, "batch_size": 32},
                  data={"path": str(tiny_dataset), "modalities": ["audio"]})
    out = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--seeds", "1", "--out", str(out), "--inline"]) == 0
    # data.modalities keeps audio alone, so its one uni-modal run comes first
    assert list(json.loads((out / "summary.json").read_text())) == [
        "uni:audio", "naive", "aux", "gblend:offline", "gblend:online"]


def test_compare_on_its_own_local_cluster_trains_one_cpu_worker_runs_in_their_trials(tmp_path, tiny_dataset):
    """--trial-engine auto: a Ray Train run would only add its start-up to a one-worker CPU
    run on a local cluster; DDP, GPU, custom resources, overlapped rounds, a joined
    cluster, or an explicit choice keep what they need."""
    from gblend_ray.interfaces.compare import engine_line, trial_engine
    from gblend_ray.interfaces.config import load_config

    def spec(*sets):
        return load_config(_config(tmp_path, tiny_dataset), list(sets))

    one = spec()
    assert trial_engine("auto", [one, spec("method=naive")], own_local_cluster=True) == "inline"
    assert trial_engine("auto", [one], own_local_cluster=False) == "ray"  # a cluster it joined
    for needs_ray in (["trainer.num_workers=2"], ["trainer.use_gpu=true"],
                      ["trainer.use_gpu=true", "probes.resources={GPU: 0.25}"],
                      ["trainer.resources_per_worker={CPU: 1, accel: 1}"], ["probes.overlap=true"]):
        assert trial_engine("auto", [one, spec(*needs_ray)], own_local_cluster=True) == "ray", needs_ray
    assert trial_engine("auto", [spec("probes.overlap=true", "method=naive")], own_local_cluster=True) == "inline"
    assert trial_engine("ray", [one], own_local_cluster=True) == "ray"
    assert trial_engine("inline", [one], own_local_cluster=False) == "inline"
    assert engine_line(18, 2, "inline", True).startswith("[compare] 18 runs, 2 at a time, each in its Ray Tune trial")
    assert "--trial-engine ray" in engine_line(18, 2, "inline", True)
    assert engine_line(2, 4, "ray", False) == "[compare] 2 runs, 2 at a time, each a Ray Train run"


def test_compare_refuses_overlapped_rounds_in_its_trials_process(tmp_path, tiny_dataset, capsys):
    cfg = _config(tmp_path, tiny_dataset, method="gblend:online", probes={"overlap": True})
    assert main(["compare", str(cfg), "--methods", "gblend:online", "--seeds", "1", "--out", str(tmp_path / "c"),
                 "--trial-engine", "inline"]) == 2
    assert "probes.overlap" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_bad_config_gets_a_clear_error(tmp_path, tiny_dataset, capsys):
    cfg = _config(tmp_path, tiny_dataset, method="uni:depth")
    assert main(["run", str(cfg), "--out", str(tmp_path / "x"), "--inline"]) == 2
    err = capsys.readouterr().err
    assert "method" in err and "depth" in err and "video" in err


def test_module_entry_point_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gblend_ray.cli", "make-synthetic", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "wrote av-overfit" in out.stdout


def test_an_inherited_wandb_service_is_dropped_and_this_processs_own_kept(monkeypatch):
    from gblend_ray.interfaces.cli import _drop_inherited_wandb_service

    monkeypatch.setenv("WANDB_SERVICE", "3-1-unix-/tmp/wandb-1-2-3/socket")  # a parent's (pid 1)
    _drop_inherited_wandb_service()
    assert "WANDB_SERVICE" not in os.environ
    own = f"3-{os.getpid()}-unix-/tmp/wandb-{os.getpid()}-2-3/socket"
    monkeypatch.setenv("WANDB_SERVICE", own)
    _drop_inherited_wandb_service()
    assert os.environ["WANDB_SERVICE"] == own


def test_a_sweep_case_may_name_its_own_data_set_relative_to_the_space(tmp_path):
    """Each trial is checked against its own data set, generated once before the trials
    start; a case's relative data.path is relative to the space file, like the config's."""
    import pytest

    from gblend_ray.interfaces.config import ConfigError, load_config_with_sweep
    from gblend_ray.interfaces.sweep_space import check_trials, resolve_trial_paths

    space = tmp_path / "spaces" / "s.yaml"
    space.parent.mkdir()
    space.write_text(yaml.safe_dump({
        "data": {"path": "../d/av", "preset": "av-overfit"},
        "sweep": {"cases": [{"data.modalities": ["video", "audio"]},
                            {"data.path": "../d/av3", "data.preset": "av3",
                             "data.modalities": ["video", "flow", "audio"]}],
                  "grid": {"method": ["naive", "agm"]}},
    }))
    base, sweep = load_config_with_sweep(space)
    sweep = resolve_trial_paths(sweep, space.parent)
    assert sweep["cases"][1]["data.path"] == str(tmp_path / "d" / "av3")
    assert check_trials(base, sweep, str(space)) == 3
    assert list(load_dataset(tmp_path / "d" / "av3").modalities) == ["video", "audio", "flow"]
    sweep["cases"][0]["data.modalities"] = ["video", "flow"]  # av-overfit has no flow
    with pytest.raises(ConfigError, match=r"data\.modalities: the dataset has no modality 'flow'"):
        check_trials(base, sweep, str(space))

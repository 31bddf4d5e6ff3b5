"""``gblend compare --tune``: the same search for every method, selected on validation,
then the chosen configuration rerun on every seed with test reported."""

import json

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.interfaces.config import ConfigError
from gblend_ray.interfaces.tuning import check_tuning_space

SPACE = {"sample": {"optim.lr": {"loguniform": [0.005, 0.2]}}, "num_samples": 3, "metric": "val/top1",
         "mode": "max", "search": {"name": "optuna"}, "max_concurrent_trials": 2}


def _space(tmp_path, data_path, sweep):
    cfg = {"data": {"path": str(data_path)},
           "model": {"hidden_dim": 32, "feature_dim": 16, "fusion_hidden_dim": 32},
           "train": {"epochs": 3, "batch_size": 32, "threads": 1},
           "blend": {"warmup_epochs": 1, "super_epoch": 1}, "tracking": {"backend": "none"}, "sweep": sweep}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(("sweep", "field", "says"), [
    (None, "sweep", "needs a sweep: section"),
    ({"num_samples": 3, "metric": "val/top1", "mode": "max"}, "sweep.sample", "add at least one"),
    ({**SPACE, "grid": {"method": ["naive"]}}, "sweep.grid", "from --methods"),
    ({k: v for k, v in SPACE.items() if k != "metric"}, "sweep.metric", "validation metric"),
])
def test_a_tuning_space_without_a_search_or_an_objective_is_refused(sweep, field, says):
    with pytest.raises(ConfigError, match=says) as err:
        check_tuning_space(sweep, "space.yaml")
    assert err.value.field == field and str(err.value).startswith("space.yaml: ")


def test_selecting_on_a_test_metric_is_refused_before_anything_runs(tmp_path, tiny_dataset, capsys):
    space = _space(tmp_path, tiny_dataset, {**SPACE, "metric": "test/top1"})
    assert main(["compare", space, "--tune", "--methods", "naive", "--seeds", "1", "--out", str(tmp_path / "o"),
                 "--inline"]) == 2
    assert "test metric" in capsys.readouterr().err and not (tmp_path / "o" / "search").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_compare_tune_chooses_on_validation_and_reports_test_over_seeds(tmp_path, tiny_dataset, ray_cluster,
                                                                        capsys):
    out = tmp_path / "fair"
    space = _space(tmp_path, tiny_dataset, SPACE)
    assert main(["compare", space, "--tune", "--methods", "naive,gblend:online", "--seeds", "2", "--out", str(out),
                 "--inline"]) == 0
    shown = capsys.readouterr().out
    tuning = json.loads((out / "tuning.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for method, name in (("naive", "naive"), ("gblend:online", "gblend_online")):
        rows = json.loads((out / "search" / name / "sweep.json").read_text())
        assert len(rows) == 3  # the same budget for every method
        done = [r for r in rows if r["status"] == "ok"]
        best = max(done, key=lambda r: r["val/top1"])  # by the validation metric, not the test one
        assert tuning[method]["overrides"] == best["overrides"] and set(best["overrides"]) == {"optim.lr"}
        assert tuning[method]["value"] == pytest.approx(best["val/top1"])
        s = summary[method]
        assert s["chosen"] == best["overrides"] and s["selected_by"]["metric"] == "val/top1"
        assert len(s["runs"]) == 2 and s["mean"] == pytest.approx(sum(s["runs"]) / 2)
        for seed in (0, 1):  # each seed's rerun trained the chosen configuration
            results = json.loads((out / name / f"seed{seed}" / "results.json").read_text())
            assert results["config"]["optim"]["lr"] == pytest.approx(best["overrides"]["optim.lr"])
            assert results["config"]["seed"] == seed and results["test"]["top1"] in s["runs"]
    assert "chosen on val/top1 (validation), then rerun on 2 seeds:" in shown
    assert "optim.lr=" in shown.split("chosen on val/top1")[1]

"""The Python API, through the README's own examples (run as written, in a directory with
the quickstart config), and ``load_spec``'s checks."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gblend_ray
from gblend_ray.interfaces.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):readme.index("## Reading the results")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(code: str, cwd: Path, ray_cluster) -> subprocess.CompletedProcess:
    (cwd / "search_spaces").mkdir(exist_ok=True)
    shutil.copy(ROOT / "search_spaces" / "quickstart.yaml", cwd / "search_spaces")
    (cwd / "example.py").write_text(code)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "WANDB_MODE": "offline",
           "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "example.py"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_load_spec_applies_overrides_and_names_a_bad_field(tmp_path):
    spec = gblend_ray.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["train.epochs=4", "method=naive"])
    assert (spec.train.epochs, spec.method, spec.optim.lr) == (4, "naive", 0.05)
    with pytest.raises(ConfigError, match="train.epochs"):
        gblend_ray.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["train.epochs=-1"])


def test_the_readme_trainer_example_trains_a_registered_encoder_in_the_ray_workers(ray_cluster, tmp_path):
    trainer_example = _examples()[0]
    assert "GBlendTrainer" in trainer_example and "register_encoder" in trainer_example
    out = _run(trainer_example, tmp_path, ray_cluster).stdout.splitlines()
    # the example's own lines (Ray's workers print to the same terminal)
    printed = [line for line in out if line.startswith("test top-1") or re.fullmatch(r"\d+ [\d.]+ [\d.]+", line)]
    run = tmp_path / "runs" / "api" / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["model"]["encoder"] == "tiny_mlp"  # built from the script's registration
    assert printed[0] == f"test top-1 {results['test']['top1']:.3f}; checkpoint " \
                         f"{run / 'ray' / 'train' / 'epoch_0004_final'}"
    # the Result's metrics hold every epoch's validation values, as results.json's history
    assert printed[1:] == [f"{h['epoch']} {round(h['val/fused/top1'], 3)} {round(h['weights/audio'], 3)}"
                           for h in results["history"]]
    assert len(printed) == 1 + 4
    assert json.loads((run / "trajectory.json").read_text())[0]["epoch"] == 0  # G-Blend's rounds, as on the CLI


def test_the_readme_tuner_example_runs_two_trials_and_picks_on_validation(ray_cluster, tmp_path):
    tuner_example = _examples()[1]
    assert "gblend_ray.trainable(spec)" in tuner_example
    printed = _run(tuner_example, tmp_path, ray_cluster).stdout.strip().splitlines()[-1]
    trials = sorted((tmp_path / "runs" / "tuned" / "api").glob("*/run/results.json"))
    assert len(trials) == 2
    by_val = {}
    for path in trials:
        results = json.loads(path.read_text())
        by_val[results["history"][-1]["val/fused/top1"]] = results
    best = by_val[max(by_val)]  # the best by the last epoch's validation top-1
    assert f"'method': '{best['method']}'" in printed
    assert f"val top-1 {max(by_val):.3f}, test top-1 {best['test']['top1']:.3f}" in printed

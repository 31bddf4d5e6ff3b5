"""gblend_ray.interfaces.report: run discovery, the summary numbers, report.md / report.csv and the plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gblend_ray.interfaces.report import (
    find_runs,
    summarize,
    weights_string,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADS = ("video", "audio", "fused")


def _history(epochs: int, weights: dict[str, float], err0: float = 0.8) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 0.1}
        for h in HEADS:
            row[f"weights/{h}"] = weights[h]
            row[f"train/{h}/loss"] = 1.0 / e
            row[f"train/{h}/top1"] = 1 - err0 / e
            row[f"val/{h}/loss"] = 1.2 / e
            row[f"val/{h}/top1"] = 1 - err0 / e - 0.05
        rows.append(row)
    return rows


def _write_run(path: Path, method: str, seed: int, top1: float, top5: float, final_weights: dict[str, float],
               per_class: list[float | None] | None = None, trajectory: list[dict] | None = None,
               modalities: list[str] | None = None) -> Path:
    pred = method.partition(":")[2] if method.startswith("uni:") else "fused"
    heads = {h: {"loss": 1.0, "top1": top1 if h == pred else 0.3, "top5": top5 if h == pred else 0.6} for h in HEADS}
    results = {
        "method": method,
        "seed": seed,
        "prediction_head": pred,
        "test": dict(heads[pred]),
        "heads": heads,
        "classes": ["cat", "dog", "owl"],
        "per_class": {h: (per_class if h == pred else [0.3, 0.3, 0.3]) for h in HEADS} if per_class else {},
        "final_weights": final_weights,
        "splits": {"train": 100, "val": 20, "test": 30},
        "history": _history(4, final_weights),
        "seconds": 1.0,
        "config": {"data": {"path": "x", **({"modalities": modalities} if modalities else {})},
                   "method": method, "seed": seed},
    }
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    (path / "trajectory.json").write_text(json.dumps(trajectory or []))
    (path / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    return path


def _rounds(w0: dict[str, float], w1: dict[str, float]) -> list[dict]:
    return [{"epoch": ep, "probe_epochs": 2, "metric": "accuracy",
             "heads": {h: {"G": 0.1, "dO": 0.1, "weight": w[h]} for h in HEADS},
             "weights": w, "fallback": None, "prediction_head_starved": False, "safeguard": None,
             "round_seconds": 0.5}
            for ep, w in ((0, w0), (2, w1))]


@pytest.fixture
def cmp_dir(tmp_path: Path) -> Path:
    """A `gblend compare`-like directory: uni:video ×2, naive (1 ok, 1 failed), gblend:online ×2."""
    root = tmp_path / "cmp"
    uni_w = {"video": 1.0, "audio": 0.0, "fused": 0.0}
    _write_run(root / "uni_video/seed0", "uni:video", 0, 0.70, 0.90, uni_w, per_class=[0.5, 0.9, 0.7])
    _write_run(root / "uni_video/seed1", "uni:video", 1, 0.72, 0.94, uni_w, per_class=[0.7, 0.9, 0.7])
    _write_run(root / "naive/seed0", "naive", 0, 0.75, 0.96, {"video": 0.0, "audio": 0.0, "fused": 1.0},
               per_class=[0.8, 0.8, 0.7])
    failed = root / "naive/seed1"
    failed.mkdir(parents=True)
    (failed / "error.txt").write_text("RuntimeError: CUDA out of memory\nTraceback (most recent call last):\n")
    (failed / "config.yaml").write_text("data:\n  path: x\n  modalities: null\nmethod: naive\nseed: 1\nname: null\n")
    _write_run(root / "gblend_online/seed0", "gblend:online", 0, 0.80, 0.98,
               {"video": 0.6, "audio": 0.1, "fused": 0.3}, per_class=[0.9, 0.7, 0.8],
               trajectory=_rounds({"video": 0.2, "audio": 0.2, "fused": 0.6}, {"video": 0.6, "audio": 0.1, "fused": 0.3}))
    _write_run(root / "gblend_online/seed1", "gblend:online", 1, 0.84, 1.0,
               {"video": 0.4, "audio": 0.3, "fused": 0.3}, per_class=[0.9, 0.7, 0.8],
               trajectory=_rounds({"video": 0.4, "audio": 0.2, "fused": 0.4}, {"video": 0.4, "audio": 0.3, "fused": 0.3}))
    (root / "summary.json").write_text("{}")
    return root


def _md_row(md: str, method: str) -> str:
    rows = [line for line in md.splitlines() if line.startswith(f"| {method} |")]
    assert len(rows) == 1, rows
    return rows[0]


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE)
    assert data[:8] == PNG_SIGNATURE


def test_find_runs_reads_ok_and_failed_runs(cmp_dir):
    runs = find_runs(cmp_dir)
    assert [(r.method, r.seed, r.ok) for r in runs] == [
        ("gblend:online", 0, True), ("gblend:online", 1, True),
        ("naive", 0, True), ("naive", 1, False),
        ("uni:video", 0, True), ("uni:video", 1, True),
    ]
    failed = runs[3]
    assert failed.results is None and failed.modalities == ()
    assert failed.error.startswith("RuntimeError: CUDA out of memory")
    assert failed.path == cmp_dir / "naive/seed1"
    assert [rd["epoch"] for rd in runs[0].trajectory] == [0, 2]
    assert runs[4].trajectory == []


def test_find_runs_recurses_and_accepts_a_single_run_dir(tmp_path):
    w = {"video": 0.5, "audio": 0.2, "fused": 0.3}
    deep = _write_run(tmp_path / "sweep/trials/t0/inner", "gblend:offline", 3, 0.6, 0.9, w, modalities=["video", "audio"])
    bad = tmp_path / "sweep/trials/t1"
    bad.mkdir(parents=True)
    (bad / "error.txt").write_text("ValueError: boom")
    (bad / "config.yaml").write_text("data:\n  path: x\n  modalities:\n  - video\n  - audio\nmethod: 'gblend:offline'\nseed: 4\n")
    # A results.json that is not a run's (a sweep's own) is not a run.
    (tmp_path / "sweep/results.json").write_text(json.dumps({"best": "t0"}))

    runs = find_runs(tmp_path / "sweep")
    assert [(r.method, r.modalities, r.seed, r.ok) for r in runs] == [
        ("gblend:offline", ("video", "audio"), 3, True),
        ("gblend:offline", ("video", "audio"), 4, False),
    ]
    rows = summarize(runs)
    assert len(rows) == 1 and rows[0]["n_ok"] == 1 and rows[0]["n_failed"] == 1

    single = find_runs(deep)
    assert len(single) == 1 and single[0].path == deep and single[0].results["seed"] == 3


def test_summarize_numbers(cmp_dir):
    rows = summarize(find_runs(cmp_dir))
    assert [r["method"] for r in rows] == ["uni:video", "naive", "gblend:online"]
    uni, naive, gb = rows
    assert uni["modalities"] == ()
    assert (uni["n_ok"], uni["n_failed"]) == (2, 0)
    assert uni["mean"] == pytest.approx(0.71, abs=1e-12)
    assert uni["std"] == pytest.approx(0.01, abs=1e-12)
    assert uni["top5_mean"] == pytest.approx(0.92, abs=1e-12)
    assert uni["seeds"] == [0, 1]
    assert uni["failed_paths"] == []
    assert uni["weights"] == {"video": 1.0, "audio": 0.0, "fused": 0.0}

    assert (naive["n_ok"], naive["n_failed"]) == (1, 1)
    assert naive["mean"] == pytest.approx(0.75, abs=1e-12) and naive["std"] == 0.0
    assert naive["seeds"] == [0] and naive["failed_seeds"] == [1]
    assert naive["failed_paths"] == [cmp_dir / "naive/seed1"]
    assert naive["errors"] == ["RuntimeError: CUDA out of memory"]

    assert gb["mean"] == pytest.approx(0.82, abs=1e-12)
    assert gb["std"] == pytest.approx(0.02, abs=1e-12)
    assert gb["top5_mean"] == pytest.approx(0.99, abs=1e-12)
    assert list(gb["weights"]) == ["video", "audio", "fused"]
    assert gb["weights"] == pytest.approx({"video": 0.5, "audio": 0.2, "fused": 0.3}, abs=1e-12)


def test_summarize_orders_kinds_and_splits_modality_combinations(tmp_path):
    w = {"video": 0.5, "audio": 0.2, "fused": 0.3}
    _write_run(tmp_path / "a", "gblend:online", 0, 0.6, 0.9, w)
    _write_run(tmp_path / "b", "aux", 0, 0.6, 0.9, w)
    _write_run(tmp_path / "c", "gblend:online", 0, 0.5, 0.9, w, modalities=["video"])
    _write_run(tmp_path / "d", "naive", 0, 0.6, 0.9, w)
    _write_run(tmp_path / "e", "mystery", 0, 0.6, 0.9, w)
    _write_run(tmp_path / "f", "uni:audio", 0, 0.6, 0.9, w)
    _write_run(tmp_path / "g", "gblend:offline", 0, 0.6, 0.9, w)
    rows = summarize(find_runs(tmp_path))
    assert [(r["method"], r["modalities"]) for r in rows] == [
        ("uni:audio", ()), ("naive", ()), ("aux", ()), ("mystery", ()),
        ("gblend:online", ()), ("gblend:online", ("video",)), ("gblend:offline", ()),
    ]


def test_weights_string():
    assert weights_string({"video": 0.63, "audio": 0.0142, "fused": 0.3558}) == \
        "[video,audio,fused]=[0.630,0.014,0.356]"
    assert weights_string({"rgb": 1.0}) == "[rgb]=[1.000]"


def test_write_report_markdown(cmp_dir):
    paths = write_report(cmp_dir)
    assert paths["md"] == cmp_dir / "report.md"
    md = paths["md"].read_text()
    assert md.startswith("# ")
    assert str(cmp_dir.resolve()) in md

    uni = _md_row(md, "uni:video")
    assert "71.0 ± 1.0" in uni and "92.0" in uni and "2/0" in uni
    assert "FAILED" not in uni and "=[" not in uni  # no G-Blend weights for a baseline
    gb = _md_row(md, "gblend:online")
    assert "82.0 ± 2.0" in gb and "[video,audio,fused]=[0.500,0.200,0.300]" in gb
    naive = _md_row(md, "naive")
    assert "75.0 ± 0.0" in naive and "1/1 FAILED" in naive

    lines = md.splitlines()
    order = [lines.index(_md_row(md, m)) for m in ("uni:video", "naive", "gblend:online")]
    assert order == sorted(order)
    failure = [line for line in lines if line.startswith("- FAILED")]
    assert len(failure) == 1
    assert "naive" in failure[0] and "seed 1" in failure[0] and "naive/seed1" in failure[0]
    assert failure[0].endswith("RuntimeError: CUDA out of memory")
    assert "Traceback" not in md  # first line of the message only

    for p in paths["plots"]:
        assert f"]({p.name})" in md


def test_write_report_csv(cmp_dir):
    paths = write_report(cmp_dir)
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["uni:video", "naive", "gblend:online"]
    uni, naive, gb = rows
    assert float(uni["top1_mean"]) == pytest.approx(0.71, abs=1e-12)
    assert float(uni["top1_std"]) == pytest.approx(0.01, abs=1e-12)
    assert float(uni["top5_mean"]) == pytest.approx(0.92, abs=1e-12)
    assert (int(uni["n_ok"]), int(uni["n_failed"])) == (2, 0)
    assert uni["modalities"] == "all" and uni["seeds"] == "0;1"
    assert [float(v) for v in uni["top1_per_seed"].split(";")] == [0.70, 0.72]
    assert uni["weights"] == "" and uni["weight_video"] == ""
    assert (int(naive["n_ok"]), int(naive["n_failed"])) == (1, 1)
    assert naive["failed_seeds"] == "1" and naive["errors"] == "RuntimeError: CUDA out of memory"
    assert float(gb["top1_mean"]) == pytest.approx(0.82, abs=1e-12)
    assert gb["weights"] == "[video,audio,fused]=[0.500,0.200,0.300]"
    assert float(gb["weight_video"]) == pytest.approx(0.5, abs=1e-12)
    assert float(gb["weight_audio"]) == pytest.approx(0.2, abs=1e-12)
    assert float(gb["weight_fused"]) == pytest.approx(0.3, abs=1e-12)


def test_write_report_plots_are_pngs(cmp_dir, tmp_path):
    out = tmp_path / "elsewhere"
    paths = write_report(cmp_dir, out)
    assert paths["md"] == out / "report.md" and paths["csv"] == out / "report.csv"
    assert not (cmp_dir / "report.md").exists()
    names = {p.name for p in paths["plots"]}
    assert names == {"weights_gblend_online.png", "curves_uni_video.png", "curves_naive.png",
                     "curves_gblend_online.png", "per_class.png"}
    for p in paths["plots"]:
        assert p.parent == out
        _assert_png(p)
    md = paths["md"].read_text()
    assert "gblend:online minus uni:video: better on 2 of 3 classes, worse on 1" in md


def test_per_class_skipped_without_a_unimodal_run(tmp_path):
    w = {"video": 0.5, "audio": 0.2, "fused": 0.3}
    _write_run(tmp_path / "g0", "gblend:online", 0, 0.8, 0.9, w, per_class=[0.1, 0.2, 0.3], trajectory=_rounds(w, w))
    _write_run(tmp_path / "n0", "naive", 0, 0.7, 0.9, w, per_class=[0.1, 0.2, 0.3])
    paths = write_report(tmp_path)
    assert "per_class.png" not in {p.name for p in paths["plots"]}
    assert not (tmp_path / "per_class.png").exists()
    assert "Per-class plot skipped: no uni-modal run." in paths["md"].read_text()


def test_per_class_skipped_without_per_class_data(tmp_path):
    w = {"video": 0.5, "audio": 0.2, "fused": 0.3}
    _write_run(tmp_path / "g0", "gblend:offline", 0, 0.8, 0.9, w, trajectory=_rounds(w, w))
    _write_run(tmp_path / "u0", "uni:video", 0, 0.7, 0.9, w)
    paths = write_report(tmp_path)
    assert {p.name for p in paths["plots"]} == {"weights_gblend_offline.png", "curves_gblend_offline.png",
                                               "curves_uni_video.png"}
    assert "Per-class plot skipped: no per-class test accuracy" in paths["md"].read_text()


def test_report_with_restricted_modalities_and_an_all_failed_group(tmp_path):
    w = {"video": 0.5, "audio": 0.2, "fused": 0.3}
    _write_run(tmp_path / "all", "gblend:online", 0, 0.8, 0.9, w, trajectory=_rounds(w, w))
    _write_run(tmp_path / "va", "gblend:online", 0, 0.6, 0.9, w, trajectory=_rounds(w, w), modalities=["video", "audio"])
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "error.txt").write_text("boom\n")
    (dead / "config.yaml").write_text("method: aux\nseed: 2\n")
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    aux = _md_row(md, "aux")
    assert "—" in aux and "0/1 FAILED" in aux
    va = [line for line in md.splitlines() if line.startswith("| gblend:online | video+audio |")]
    assert len(va) == 1 and "60.0 ± 0.0" in va[0]
    names = {p.name for p in paths["plots"]}
    assert {"weights_gblend_online.png", "weights_gblend_online__video-audio.png"} <= names
    with paths["csv"].open(newline="") as f:
        rows = {(r["method"], r["modalities"]): r for r in csv.DictReader(f)}
    assert rows[("aux", "all")]["top1_mean"] == "" and rows[("aux", "all")]["errors"] == "boom"
    assert float(rows[("gblend:online", "video+audio")]["top1_mean"]) == pytest.approx(0.6)


def test_write_report_rejects_a_directory_without_runs(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="no such directory"):
        write_report(tmp_path / "missing")


def test_import_is_cheap():
    code = "import sys, gblend_ray.interfaces.report; print('matplotlib' in sys.modules, 'torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_a_real_compare_directory(tiny_dataset, tmp_path):
    """``gblend compare`` (in-process, tiny runs) then its report: the report's numbers are
    the compare's summary."""
    import yaml

    from gblend_ray.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": str(tiny_dataset)}, "tracking": {"backend": "none"},
        "model": {"hidden_dim": 16, "feature_dim": 8, "fusion_hidden_dim": 16},
        "train": {"epochs": 3, "batch_size": 32}, "blend": {"warmup_epochs": 2, "super_epoch": 1}}))
    sample = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--methods", "uni:video,naive,gblend:online", "--seeds", "2", "--inline",
                 "--out", str(sample)]) == 0
    summary = json.loads((sample / "summary.json").read_text())
    runs = find_runs(sample)
    rows = summarize(runs)
    assert {r["method"] for r in rows} == set(summary)
    for row in rows:
        s = summary[row["method"]]
        assert row["n_ok"] == len(s["runs"]) and row["n_failed"] == 0
        assert row["mean"] == pytest.approx(s["mean"], abs=1e-12)
        assert row["std"] == pytest.approx(s["std"], abs=1e-12)
        assert sorted(r.results["test"]["top1"] for r in runs if r.method == row["method"]) == sorted(s["runs"])
        assert sum(row["weights"].values()) == pytest.approx(1.0, abs=1e-6)
    kinds = [r["method"].partition(":")[0] for r in rows]
    assert kinds == sorted(kinds, key=["uni", "naive", "aux", "gblend"].index)

    paths = write_report(sample, tmp_path / "report")
    md = paths["md"].read_text()
    for row in rows:
        assert f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}" in _md_row(md, row["method"])
    for p in paths["plots"]:
        _assert_png(p)
    if any(r["method"].startswith("gblend") for r in rows):
        assert any(p.name.startswith("weights_gblend") for p in paths["plots"])


def test_runs_that_differ_in_a_setting_are_different_rows(tmp_path):
    """An optimizer sweep: same method, different optim.name → one row per optimizer."""
    for i, (opt, top1) in enumerate([("sgd", 0.70), ("sgd", 0.72), ("adam", 0.60), ("adam", 0.64)]):
        run = _write_run(tmp_path / f"r{i}", "naive", i % 2, top1, 0.9, {"video": 0.0, "audio": 0.0, "fused": 1.0})
        results = json.loads((run / "results.json").read_text())
        results["config"]["optim"] = {"name": opt, "lr": 0.05}
        (run / "results.json").write_text(json.dumps(results))
    rows = {row["setting"]: row for row in summarize(find_runs(tmp_path))}
    assert set(rows) == {"optim.name=sgd", "optim.name=adam"}
    assert rows["optim.name=sgd"]["mean"] == pytest.approx(0.71)
    assert rows["optim.name=adam"]["mean"] == pytest.approx(0.62)
    written = write_report(tmp_path)
    md = written["md"].read_text()
    assert "| setting |" in md and "optim.name=adam" in md


def test_a_gblend_run_that_estimated_nothing_says_so_everywhere(tiny_dataset, tmp_path, capsys):
    """Every G forced to 0 (a learning rate too small to move any float32 parameter, so no
    probe changes its losses): offline G-Blend falls back to uniform weights. Its results,
    the command's last line and the report's row say so; the report can leave it out."""
    import yaml

    from gblend_ray.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": str(tiny_dataset)}, "tracking": {"backend": "none"}, "optim": {"lr": 1.0e-30},
        "model": {"hidden_dim": 16, "feature_dim": 8, "fusion_hidden_dim": 16},
        "train": {"epochs": 2, "batch_size": 32}, "blend": {"warmup_epochs": 1, "super_epoch": 1}}))
    runs = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(runs / "offline"), "--inline", "--set", "method=gblend:offline"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "no estimate: every G <= 0 in its round; trained with uniform weights (= aux)" in last
    results = json.loads((runs / "offline" / "results.json").read_text())
    assert results["estimation"]["status"] == "none" and results["estimation"]["fallback_uniform"] == 1
    assert main(["run", str(cfg), "--out", str(runs / "naive"), "--inline", "--set", "method=naive"]) == 0
    assert json.loads((runs / "naive" / "results.json").read_text())["estimation"] is None

    md = write_report(runs)["md"].read_text()
    assert "NO ESTIMATE in 1/1 seeds (every G <= 0)" in _md_row(md, "gblend:offline")
    with open(runs / "report.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "gblend:offline")
    assert (row["rounds"], row["fallback_rounds"], row["no_estimate_seeds"]) == ("1", "1", "0")
    assert main(["report", str(runs), "--without-fallback"]) == 0
    md = (runs / "report.md").read_text()
    assert "| gblend:offline |" not in md and "Left out: 1 G-Blend run(s) without an estimate" in md
    assert "| naive |" in md


def test_balancing_rows_show_their_methods_quantities_and_a_plot_of_them(tiny_dataset, tmp_path):
    from gblend_ray.core.spec import RunSpec
    from gblend_ray.training.runner import run_inline

    for method in ("ogm_ge", "mmpareto"):
        for seed in (0, 1):
            spec = RunSpec(method=method, seed=seed)
            spec.data.path = str(tiny_dataset)
            spec.model.hidden_dim, spec.model.feature_dim, spec.model.fusion_hidden_dim = 16, 8, 16
            spec.train.epochs, spec.train.batch_size = 2, 32
            run_inline(spec, tmp_path / "runs" / f"{method}-{seed}")
    out = write_report(tmp_path / "runs")
    md = out["md"].read_text()
    ogm_line = next(line for line in md.splitlines() if line.startswith("| ogm_ge |"))
    assert " ± " in ogm_line and "k [video,audio]=[" in ogm_line and "slowed [video,audio]=[" in ogm_line
    pareto_line = next(line for line in md.splitlines() if line.startswith("| mmpareto |"))
    assert "cos [video,audio]=[" in pareto_line and "2/0" in pareto_line
    assert any(p.name.startswith("quantities_ogm_ge") for p in out["plots"])
    with out["csv"].open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert rows["mmpareto"]["quantities"].startswith("cos [video,audio]=[")
    assert rows["ogm_ge"]["top1_std"] != ""

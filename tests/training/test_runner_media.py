"""Whole runs on real mp4 files (H.264 + AAC written by PyAV, decoded by the media
pipeline): RGB + audio with torchvision backbones, RGB + flow + audio after
``gblend extract-flow``, and a multi-label task."""

import csv
import json

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.data.media.testmedia import write_test_media

pytestmark = pytest.mark.slow

CLIPS = {"frames": 4, "stride": 2, "resize": 40, "size": 32, "n_mels": 16, "mel_frames": 24,
         "eval_clips": 2, "num_workers": 0}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    manifest = write_test_media(root, classes=3, per_class=6, seconds=1.5, fps=12, size=48)
    bad = root / "videos" / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with manifest.open("a", newline="") as f:
        csv.writer(f).writerow(["videos/broken.mp4", "class1"])
    return manifest


def _config(tmp_path, manifest, **sections):
    cfg = {
        "data": {"path": str(manifest), "heldout_fraction": 0.2, "test_fraction": 0.25, "val_fraction": 0.0,
                 "media": {**CLIPS, "on_bad_sample": "skip"}},
        "model": {"encoders": {"video": "r3d_18", "audio": "resnet18"}, "fusion_hidden_dim": 32},
        "optim": {"lr": 0.01},
        "train": {"epochs": 2, "batch_size": 6, "eval_batch_size": 16},
        "blend": {"warmup_epochs": 1, "super_epoch": 1},
        "tracking": {"backend": "none"},
        "method": "gblend:online",
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(tmp_path, cfg):
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--inline"]) == 0
    return json.loads((out / "results.json").read_text()), json.loads((out / "trajectory.json").read_text())


def test_rgb_and_audio_run_with_torchvision_backbones(media, tmp_path):
    results, trajectory = _run(tmp_path, _config(tmp_path, media))
    assert [r["epoch"] for r in trajectory] == [0, 1]
    for record in trajectory:
        assert set(record["weights"]) == {"video", "audio", "fused"}
        assert sum(record["weights"].values()) == pytest.approx(1.0)
    test = results["test"]
    assert {"top1", "top5", "video_top1", "video_top5", "loss"} <= set(test)
    assert 0 <= test["video_top1"] <= test["video_top5"] == 1.0  # 3 classes: top-5 holds every class
    sizes = results["splits"]
    assert sizes["train"] + sizes["heldout"] + sizes["val"] + sizes["test"] == 18  # all but the broken file
    (skipped, why), = results["skipped"].items()
    assert skipped.endswith("videos/broken.mp4") and why


def test_a_bad_file_stops_the_run_with_its_name(media, tmp_path, capsys):
    cfg = _config(tmp_path, media, data={"path": str(media), "media": {**CLIPS, "on_bad_sample": "error"}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--inline"]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "on_bad_sample: skip" in err and "Traceback" not in err


def test_rgb_flow_and_audio_give_four_heads(media, tmp_path):
    flow_dir = tmp_path / "flow"
    assert main(["extract-flow", str(media.parent / "manifest.csv"), str(flow_dir), "--resize", "40",
                 "--on-bad-sample", "skip"]) == 0
    cfg = _config(tmp_path, media,
                  data={"path": str(media), "modalities": ["video", "flow", "audio"],
                        "media": {**CLIPS, "on_bad_sample": "skip", "flow_dir": str(flow_dir)}},
                  model={"encoders": {"video": "r3d_18", "flow": "r3d_18", "audio": "resnet18"}},
                  train={"epochs": 1, "batch_size": 6, "eval_batch_size": 16})
    results, trajectory = _run(tmp_path, cfg)
    assert len(trajectory) == 1 and set(trajectory[0]["weights"]) == {"video", "flow", "audio", "fused"}
    assert set(results["heads"]) == {"video", "flow", "audio", "fused"}


def test_multilabel_run_reports_map_and_mauc(tmp_path):
    manifest = write_test_media(tmp_path / "ml", classes=3, per_class=6, seconds=1.5, fps=12, size=48,
                                multilabel=True)
    cfg = _config(tmp_path, manifest, data={"path": str(manifest), "media": {**CLIPS, "on_bad_sample": "error"}},
                  model={"encoder": "mlp", "encoders": {}, "hidden_dim": 32, "feature_dim": 16})
    results, trajectory = _run(tmp_path, cfg)
    assert {"mAP", "mAUC", "loss"} == set(results["test"])
    assert 0 < results["test"]["mAP"] <= 1 and 0 <= results["test"]["mAUC"] <= 1
    assert results["per_class"] is None and len(trajectory) == 2


@pytest.mark.parametrize("method", ["ogm_ge", "ogm", "pmr", "agm", "mmpareto"])
def test_each_balancing_method_trains_on_mp4_files_with_conv_encoders(tmp_path, method):
    """In process, through ``gblend run --inline``: OGM modulates the video and audio
    ResNets' kernels; PMR's prototypes, AGM's masked passes and MMPareto's two backward
    passes run on decoded clips."""
    manifest = write_test_media(tmp_path / "media", classes=3, per_class=5, seconds=1.5, fps=12, size=48)
    cfg = _config(tmp_path, manifest, method=method, train={"epochs": 1},
                  data={"media": {**CLIPS, "on_bad_sample": "error"}})
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--inline"]) == 0
    results = json.loads((out / "results.json").read_text())
    (record,) = results["history"]
    quantity = {"ogm_ge": "k", "ogm": "k", "pmr": "rho", "agm": "kappa", "mmpareto": "cos"}[method]
    assert {f"{method}/{quantity}/video", f"{method}/{quantity}/audio"} <= set(record)
    assert {"video_top1", "video_top5"} <= set(results["test"])

"""The balancing methods on Ray Train with 2 DDP workers, through ``gblend run``: every
rank applies the same coefficients, so the ranks' parameters are identical at the end
(a digest of every parameter, gathered from each rank into ``results.json``).

Each method runs once on arrays of three modalities (OGM's, OGM-GE's and PMR's
mean-of-the-others ratios, AGM's 2^3 − 1 masked passes, MMPareto per encoder). On mp4
files run the two methods whose update reads more than the batch's gradients: PMR
(prototypes from a pass over T) and OGM-GE (noise from a generator on every rank). A Ray
Train run of two workers costs some 20 s on 2 cores, so every method on mp4 files is left
to the in-process tests (``tests/training/test_runner_media.py``)."""

import json

import pytest
import yaml

from gblend_ray.cli import main
from gblend_ray.data.media.testmedia import write_test_media

METHODS = ["ogm_ge", "ogm", "pmr", "agm", "mmpareto"]
QUANTITY = {"ogm_ge": "ogm_ge/k", "ogm": "ogm/k", "pmr": "pmr/rho", "agm": "agm/kappa", "mmpareto": "mmpareto/cos"}


def _run(tmp_path, cfg: dict) -> dict:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def _check(results: dict, method: str, modalities: list[str]) -> None:
    digests = results["rank_parameters"]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    for record in results["history"]:
        assert {f"{QUANTITY[method]}/{m}" for m in modalities} <= set(record)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return write_test_media(tmp_path_factory.mktemp("media"), classes=3, per_class=5, seconds=1.5, fps=12, size=48)


@pytest.mark.parametrize("method", ["pmr", "ogm_ge"])
def test_two_ddp_workers_end_with_identical_parameters_on_mp4_media(ray_cluster, media, tmp_path, method):
    clips = {"frames": 2, "stride": 2, "resize": 20, "size": 16, "n_mels": 8, "mel_frames": 12, "eval_clips": 2,
             "num_workers": 0}
    results = _run(tmp_path, {
        "data": {"path": str(media), "heldout_fraction": 0.2, "test_fraction": 0.25, "val_fraction": 0.0,
                 "media": clips},
        "model": {"hidden_dim": 16, "feature_dim": 8, "fusion_hidden_dim": 16}, "method": method,
        "train": {"epochs": 1, "batch_size": 4, "threads": 1},
        "trainer": {"num_workers": 2}, "tracking": {"backend": "none"},
    })
    _check(results, method, ["video", "audio"])
    assert {"video_top1", "video_top5"} <= set(results["test"])


@pytest.fixture(scope="module")
def three_modalities(tmp_path_factory):
    import numpy as np

    from gblend_ray.data.arrays import save_dataset

    rng = np.random.default_rng(1)
    n, c = 240, 4
    labels = np.arange(n) % c
    arrays = {m: rng.standard_normal((c, d))[labels] * s + rng.standard_normal((n, d))
              for m, d, s in (("video", 6, 2.0), ("flow", 8, 1.0), ("audio", 32, 0.3))}
    split = np.array(["train"] * 160 + ["val"] * 20 + ["test"] * 60)
    return save_dataset(tmp_path_factory.mktemp("three") / "ds", arrays, labels, [f"c{i}" for i in range(c)],
                        split=split)


@pytest.mark.parametrize("method", METHODS)
def test_two_ddp_workers_end_with_identical_parameters_on_three_modality_arrays(ray_cluster, three_modalities,
                                                                               tmp_path, method):
    results = _run(tmp_path, {
        "data": {"path": str(three_modalities)}, "method": method,
        "model": {"hidden_dim": 16, "feature_dim": 8, "fusion_hidden_dim": 16},
        "train": {"epochs": 2, "batch_size": 16, "threads": 1},
        "trainer": {"num_workers": 2}, "tracking": {"backend": "none"},
    })
    _check(results, method, ["video", "flow", "audio"])
    assert len(results["history"]) == 2
    assert results["history"][1]["loss/fused"] < results["history"][0]["loss/fused"]  # it trains

import logging

import pytest

from gblend_ray.core.blend import Measurement
from gblend_ray.core.rounds import applied_at, decide_round, warmup_weights
from gblend_ray.core.spec import BlendSpec

# video: G = 1.0 - 0.8 = 0.2; O_before = 1.0 - 0.9 = 0.1, O_after = 0.8 - 0.6 = 0.2, dO = 0.1
# audio: G = 0.1, dO = (0.9 - 0.2) - (1.0 - 0.9) = 0.6
# fused: val loss rose (over-confident): G = 1.0 - 1.2 = -0.2 -> weight 0, starved
STARVING = {
    "video": Measurement(0.9, 1.0, 0.6, 0.8),
    "audio": Measurement(0.9, 1.0, 0.2, 0.9),
    "fused": Measurement(0.9, 1.0, 0.1, 1.2),
}
# raw: video 0.2/0.01 = 20, audio 0.1/0.36 = 0.2777..., normalised over 20.2777...
W_VIDEO = 20 / (20 + 0.1 / 0.36)
W_AUDIO = (0.1 / 0.36) / (20 + 0.1 / 0.36)


def _decide(safeguard, **kw):
    return decide_round(STARVING, BlendSpec(safeguard=safeguard, eps=0.0, metric="loss", **kw), epoch=10,
                        probe_epochs=5, prediction_head="fused", probe_info={h: {"probe_seconds": i} for i, h in enumerate(STARVING, 1)})


def test_starved_prediction_head_is_detected_and_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="gblend_ray.rounds"):
        weights, record = _decide("head_train")
    assert weights == pytest.approx({"video": W_VIDEO, "audio": W_AUDIO, "fused": 0.0}, abs=1e-9)
    assert record["prediction_head_starved"] is True
    assert record["safeguard"] == "head_train"
    assert record["heads"]["fused"]["G"] == pytest.approx(-0.2)
    assert record["heads"]["audio"]["dO"] == pytest.approx(0.6)
    assert record["heads"]["video"]["ogr"] == pytest.approx(0.5)
    assert record["heads"]["fused"]["probe_seconds"] == 3
    assert record["epoch"] == 10 and record["probe_epochs"] == 5
    assert "prediction head 'fused'" in caplog.text


def test_floor_safeguard_raises_the_prediction_head():
    weights, record = _decide("floor", floor=0.25)
    assert weights["fused"] == pytest.approx(0.25, abs=1e-9)
    assert weights["video"] == pytest.approx(0.75 * W_VIDEO, abs=1e-9)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert record["heads"]["fused"]["estimated_weight"] == 0.0
    assert record["safeguard"] == "floor"


def test_no_safeguard_leaves_it_starved_but_says_so():
    weights, record = _decide("none")
    assert weights["fused"] == 0.0
    assert record["prediction_head_starved"] is True and record["safeguard"] is None


def test_healthy_round_applies_nothing():
    healthy = dict(STARVING, fused=Measurement(0.9, 1.0, 0.5, 0.7))
    _, record = decide_round(healthy, BlendSpec(metric="loss"), epoch=0, probe_epochs=5, prediction_head="fused")
    assert record["prediction_head_starved"] is False and record["safeguard"] is None
    assert record["fallback"] is None


def test_unknown_safeguard():
    with pytest.raises(ValueError, match="safeguard"):
        _decide("prayer")


def _record(epoch, weights, fallback=None, safeguard=None):
    return {"epoch": epoch, "weights": weights, "fallback": fallback, "safeguard": safeguard}


U = {"video": 1 / 3, "audio": 1 / 3, "fused": 1 / 3}
W = {"video": 0.6, "audio": 0.1, "fused": 0.3}


def test_a_run_whose_every_round_fell_back_has_no_estimate():
    # G <= 0 everywhere at the first round gives uniform weights; later rounds keep them
    from gblend_ray.core.rounds import estimation_summary

    e = estimation_summary([_record(0, U, "uniform"), _record(4, U, "previous"), _record(8, U, "previous")])
    assert e["status"] == "none" and e["estimated"] == 0
    assert (e["fallback_uniform"], e["fallback_previous"], e["safeguard_rewrote"]) == (1, 2, 0)
    assert e["label"] == "no estimate: every G <= 0 in 3 of 3 rounds; trained with uniform weights (= aux)"
    one = estimation_summary([_record(0, U, "uniform")])  # offline G-Blend: one round
    assert one["label"] == "no estimate: every G <= 0 in its round; trained with uniform weights (= aux)"


def test_fallbacks_and_safeguard_rewrites_are_counted():
    from gblend_ray.core.rounds import estimation_summary

    e = estimation_summary([_record(0, W, safeguard="floor"), _record(4, W, "previous", "floor"), _record(8, W)])
    assert e["status"] == "partial" and e["estimated"] == 2 and e["safeguard_rewrote"] == 2
    assert e["label"] == "1 of 3 rounds fell back (every G <= 0: weights kept); safeguard floor rewrote 2 of 3 rounds"
    clean = estimation_summary([_record(0, W), _record(4, W)])
    assert clean["status"] == "estimated" and clean["label"] is None
    assert estimation_summary([]) is None  # a method without rounds


def test_weights_before_an_overlapped_runs_first_estimate_are_uniform_with_the_floor():
    heads = ["video", "audio", "fused"]
    assert warmup_weights(BlendSpec(), heads, "fused") == pytest.approx(dict.fromkeys(heads, 1 / 3))
    # four heads: uniform gives the fused head 0.25, below the floor of 0.3; the rest keep equal shares
    four = warmup_weights(BlendSpec(safeguard="floor"), ["video", "flow", "audio", "fused"], "fused")
    assert four == pytest.approx({"video": 0.7 / 3, "flow": 0.7 / 3, "audio": 0.7 / 3, "fused": 0.3})
    assert warmup_weights(BlendSpec(safeguard="head_train"), ["video", "flow", "audio", "fused"], "fused") == \
        pytest.approx(dict.fromkeys(["video", "flow", "audio", "fused"], 0.25))


def test_applied_names_the_epoch_and_step():
    assert applied_at(4, 0) == {"epoch": 4, "step": 0}

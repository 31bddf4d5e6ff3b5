import logging

import pytest

from gblend_ray.core.blend import Measurement
from gblend_ray.core.rounds import decide_round
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
    return decide_round(STARVING, BlendSpec(safeguard=safeguard, eps=0.0, **kw), epoch=10,
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
    _, record = decide_round(healthy, BlendSpec(), epoch=0, probe_epochs=5, prediction_head="fused")
    assert record["prediction_head_starved"] is False and record["safeguard"] is None
    assert record["fallback"] is None


def test_unknown_safeguard():
    with pytest.raises(ValueError, match="safeguard"):
        _decide("prayer")
